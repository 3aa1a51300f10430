package server

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
	"github.com/kubectl-mesh/kubectl-mesh/agent/hostinfo"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

func dial(t *testing.T, a *Agent) agentapi.AgentClient {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	agentapi.RegisterAgentServer(s, a)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return agentapi.NewAgentClient(conn)
}

func TestInfo(t *testing.T) {
	start := time.Date(2026, 11, 21, 5, 0, 0, 0, time.UTC)
	c := dial(t, New(Facts{
		NodeName:  "node-a",
		Version:   "v1.2.3",
		GoVersion: "go1.26.8",
		StartTime: start,
		Host: hostinfo.Host{
			KernelRelease: "6.18.44",
			BTF:           true,
			Capabilities:  []string{"CAP_PERFMON", "CAP_BPF"},
			CgroupLayout:  hostinfo.CgroupHybrid,
			HostPID:       true,
		},
		Tier: ebpftier.RawTP,
		Attempts: []ebpftier.Attempt{
			{Tier: ebpftier.TPBTF, Err: errors.New("load program: operation not permitted")},
			{Tier: ebpftier.RawTP},
		},
	}, NoDiscovery(errors.New("no kubeconfig")), nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := c.Info(ctx, &agentapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if got.NodeName != "node-a" || got.AgentVersion != "v1.2.3" || got.GoVersion != "go1.26.8" ||
		got.KernelRelease != "6.18.44" || !got.Btf || !got.HostPid ||
		got.CgroupLayout != agentapi.CgroupLayout_CGROUP_LAYOUT_HYBRID ||
		got.EbpfTier != agentapi.EbpfTier_EBPF_TIER_RAW_TP ||
		!got.StartTime.AsTime().Equal(start) ||
		!slices.Equal(got.Capabilities, []string{"CAP_PERFMON", "CAP_BPF"}) {
		t.Errorf("Info = %v", got)
	}
	if len(got.TierProbes) != 2 ||
		got.TierProbes[0].Tier != agentapi.EbpfTier_EBPF_TIER_TP_BTF || got.TierProbes[0].Ok ||
		got.TierProbes[0].Error != "load program: operation not permitted" ||
		got.TierProbes[1].Tier != agentapi.EbpfTier_EBPF_TIER_RAW_TP || !got.TierProbes[1].Ok || got.TierProbes[1].Error != "" {
		t.Errorf("tier probes = %v", got.TierProbes)
	}
}

func TestEnumMappingsCoverEveryValue(t *testing.T) {
	seen := map[agentapi.EbpfTier]bool{}
	for _, tier := range append([]ebpftier.Tier{ebpftier.None}, ebpftier.Order...) {
		w := Tier(tier)
		if w == agentapi.EbpfTier_EBPF_TIER_UNSPECIFIED || seen[w] {
			t.Errorf("tier %s maps to %v", tier, w)
		}
		seen[w] = true
	}
	if len(seen) != len(agentapi.EbpfTier_name)-1 {
		t.Errorf("mapped %d tiers; the API has %d besides unspecified", len(seen), len(agentapi.EbpfTier_name)-1)
	}
	for l, want := range map[hostinfo.CgroupLayout]agentapi.CgroupLayout{
		hostinfo.CgroupUnknown: agentapi.CgroupLayout_CGROUP_LAYOUT_UNSPECIFIED,
		hostinfo.CgroupV1:      agentapi.CgroupLayout_CGROUP_LAYOUT_V1,
		hostinfo.CgroupV2:      agentapi.CgroupLayout_CGROUP_LAYOUT_V2,
		hostinfo.CgroupHybrid:  agentapi.CgroupLayout_CGROUP_LAYOUT_HYBRID,
	} {
		if got := CgroupLayout(l); got != want {
			t.Errorf("layout %v maps to %v; want %v", l, got, want)
		}
	}
}
