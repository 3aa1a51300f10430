// Package perfruntest builds realistic synthetic runs for tests of everything that renders a
// run: two meshed nodes, A/B and residency histograms drawn from latency-like distributions.
package perfruntest

import (
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// Options shape a synthetic run.
type Options struct {
	// Nodes lists the node names; one pod per node.
	Nodes []string
	// Added is the true latency the sidecars add (the through path's shift).
	Added time.Duration
	// Requests per path per pod.
	Requests int
	// FailNode names a node that returns no result, with an error.
	FailNode string
	Seed     uint64
	// Start is the run's start time; zero means a fixed instant.
	Start time.Time
}

// Run builds a run as the plugin would store it.
func Run(o Options) *perfrun.Run {
	if o.Requests == 0 {
		o.Requests = 2000
	}
	if o.Start.IsZero() {
		o.Start = time.Date(2026, 11, 21, 8, 0, 0, 0, time.UTC)
	}
	rng := rand.New(rand.NewPCG(o.Seed, 99))
	dur := 10 * time.Second
	r := &perfrun.Run{
		Format:    perfrun.Format,
		Id:        fmt.Sprintf("00000000-0000-4000-8000-%012d", o.Seed),
		StartTime: timestamppb.New(o.Start),
		EndTime:   timestamppb.New(o.Start.Add(dur)),
		Target:    &perfrun.Target{Kind: "deploy", Namespace: "demo", Name: "web", Selector: "app=web", Port: 8080},
		Load: &agentapi.LoadSpec{Protocol: agentapi.Protocol_PROTOCOL_HTTP1, Rate: 250, Connections: 4,
			Duration: durationpb.New(dur), Warmup: durationpb.New(time.Second), Method: "GET", Path: "/"},
		AskedRate:     500,
		Mesh:          &perfrun.Mesh{Name: "istio", Version: "1.24.0", Namespace: "istio-system"},
		Environment:   &perfrun.Environment{KubernetesVersion: "v1.36.3"},
		PluginVersion: "v0.1.0-test",
		Context:       "test",
	}
	for i, node := range o.Nodes {
		r.Environment.Nodes = append(r.Environment.Nodes, &perfrun.Node{Name: node, CpuCores: 2, MemoryBytes: 24 << 30,
			KernelVersion: "6.18.0", OsImage: "Debian GNU/Linux 13", Architecture: "amd64", ContainerRuntime: "containerd://2.1"})
		pod := &agentapi.PodRef{Namespace: "demo", Name: fmt.Sprintf("web-%d", i), Uid: fmt.Sprintf("uid-%d", i)}
		nr := &perfrun.NodeRun{Node: node, Pods: []*agentapi.PodRef{pod}}
		r.Nodes = append(r.Nodes, nr)
		if node == o.FailNode {
			nr.Error = "agent unreachable: port-forward: connection refused"
			continue
		}
		through, around, res := histogram.New(), histogram.New(), histogram.New()
		for range o.Requests {
			base := 150*time.Microsecond + time.Duration(rng.ExpFloat64()*float64(40*time.Microsecond))
			histogram.Record(around, base)
			histogram.Record(through, base+o.Added+time.Duration(rng.ExpFloat64()*float64(10*time.Microsecond)))
			histogram.Record(res, o.Added+time.Duration(rng.ExpFloat64()*float64(5*time.Microsecond)))
		}
		ab := &agentapi.AddedLatency{Method: perfrun.MethodAB, Tier: agentapi.EbpfTier_EBPF_TIER_NONE}
		rs := &agentapi.AddedLatency{Method: perfrun.MethodResidency, Tier: agentapi.EbpfTier_EBPF_TIER_TP_BTF, Histogram: histogram.ToProto(res)}
		for _, q := range perfrun.Quantiles {
			d := histogram.Quantile(through, q) - histogram.Quantile(around, q)
			ab.Deltas = append(ab.Deltas, &agentapi.Quantile{Quantile: q, Value: durationpb.New(d),
				CiLow: durationpb.New(d - 5*time.Microsecond), CiHigh: durationpb.New(d + 5*time.Microsecond)})
			rs.Deltas = append(rs.Deltas, &agentapi.Quantile{Quantile: q, Value: durationpb.New(histogram.Quantile(res, q))})
		}
		measured := dur - time.Second
		nr.Result = &agentapi.RunResult{
			RunId: r.Id, NodeName: node, StartTime: r.StartTime, EndTime: r.EndTime, Load: r.Load,
			AchievedRate: float64(2*o.Requests) / measured.Seconds(),
			Pods: []*agentapi.PodResult{{
				Pod: pod, ThroughSidecar: histogram.ToProto(through), AroundSidecar: histogram.ToProto(around),
				Added:       []*agentapi.AddedLatency{ab, rs},
				SidecarIdle: &agentapi.Usage{CpuMillicores: 2, MemoryWorkingSetBytes: 40 << 20},
				SidecarLoaded: &agentapi.Usage{CpuMillicores: 60 + 10*float64(i), MemoryWorkingSetBytes: 48 << 20,
					MemoryRssBytes: 50 << 20, MemoryPssBytes: 30 << 20},
				Requests: uint64(2 * o.Requests), Measured: durationpb.New(measured),
			}},
			Agent: &agentapi.Usage{CpuMillicores: 12, MemoryWorkingSetBytes: 50 << 20},
		}
	}
	return r
}
