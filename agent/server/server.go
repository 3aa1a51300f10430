// Package server implements the agent's gRPC API (pkg/agentapi): Info over what the agent
// learned about its node at start-up, Snapshot over pod discovery and usage sampling, and
// Run, Stop and Result, which load the target pods and measure the latency and cost their
// sidecars add.
package server

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
	"github.com/kubectl-mesh/kubectl-mesh/agent/hostinfo"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

// Facts are what the agent knows about itself and its node; they do not change while it runs.
type Facts struct {
	NodeName  string
	Version   string
	GoVersion string
	StartTime time.Time
	Host      hostinfo.Host
	Tier      ebpftier.Tier
	Attempts  []ebpftier.Attempt
	// CgroupNamespace maps the cgroup paths procfs shows the agent to host paths; nil
	// when the agent shares the host's cgroup namespace.
	CgroupNamespace NamespaceRoots
}

// Agent serves the Agent service. RPCs added to the API later answer codes.Unimplemented
// through the embedded type, which the plugin reports as version skew. Its only mutable state is
// the run in progress and the kept results (locked); Info and Snapshot share nothing but
// the discoverer's (locked) pod cache.
type Agent struct {
	agentapi.UnimplementedAgentServer
	facts    Facts
	disc     *Discovery
	measurer Measurer
	runs     runStore
	// runPod measures one target of a Run; tests replace it to fake the load.
	runPod podRunner
}

// New returns the service for facts. disc may be NoDiscovery(reason) and m nil: Info
// still answers and Snapshot says precisely what is missing.
func New(facts Facts, disc *Discovery, m Measurer) *Agent {
	a := &Agent{facts: facts, disc: disc, measurer: m}
	a.runPod = a.measurePod
	return a
}

// Info describes the agent and what its node lets it measure.
func (a *Agent) Info(context.Context, *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	f := a.facts
	resp := &agentapi.InfoResponse{
		NodeName:      f.NodeName,
		AgentVersion:  f.Version,
		KernelRelease: f.Host.KernelRelease,
		Btf:           f.Host.BTF,
		Capabilities:  append([]string(nil), f.Host.Capabilities...),
		CgroupLayout:  CgroupLayout(f.Host.CgroupLayout),
		EbpfTier:      Tier(f.Tier),
		StartTime:     timestamppb.New(f.StartTime),
		HostPid:       f.Host.HostPID,
		GoVersion:     f.GoVersion,
	}
	for _, at := range f.Attempts {
		p := &agentapi.TierProbe{Tier: Tier(at.Tier), Ok: at.OK()}
		if at.Err != nil {
			p.Error = at.Err.Error()
		}
		resp.TierProbes = append(resp.TierProbes, p)
	}
	return resp, nil
}

// Tier is the wire form of an eBPF tier.
func Tier(t ebpftier.Tier) agentapi.EbpfTier {
	switch t {
	case ebpftier.None:
		return agentapi.EbpfTier_EBPF_TIER_NONE
	case ebpftier.TPBTF:
		return agentapi.EbpfTier_EBPF_TIER_TP_BTF
	case ebpftier.RawTP:
		return agentapi.EbpfTier_EBPF_TIER_RAW_TP
	case ebpftier.FEntry:
		return agentapi.EbpfTier_EBPF_TIER_FENTRY
	case ebpftier.KProbe:
		return agentapi.EbpfTier_EBPF_TIER_KPROBE
	}
	return agentapi.EbpfTier_EBPF_TIER_UNSPECIFIED
}

// CgroupLayout is the wire form of a cgroup layout.
func CgroupLayout(l hostinfo.CgroupLayout) agentapi.CgroupLayout {
	switch l {
	case hostinfo.CgroupV1:
		return agentapi.CgroupLayout_CGROUP_LAYOUT_V1
	case hostinfo.CgroupV2:
		return agentapi.CgroupLayout_CGROUP_LAYOUT_V2
	case hostinfo.CgroupHybrid:
		return agentapi.CgroupLayout_CGROUP_LAYOUT_HYBRID
	}
	return agentapi.CgroupLayout_CGROUP_LAYOUT_UNSPECIFIED
}
