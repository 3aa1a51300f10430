package metrics

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
)

type fixedRun struct{ r *agentapi.RunResult }

func (f fixedRun) LastRun() *agentapi.RunResult { return f.r }

func TestRunSeries(t *testing.T) {
	reg := NewRegistry(Info{Node: "n"}, nil, nil)
	RegisterRuns(reg, fixedRun{})
	for k := range samples(t, reg) {
		if strings.HasPrefix(k, "mesh_agent_last_run") {
			t.Errorf("series %s before any run", k)
		}
	}

	through := histogram.New()
	for range 100 {
		histogram.Record(through, 500*time.Microsecond)
	}
	run := &agentapi.RunResult{
		RunId: "r1", EndTime: timestamppb.New(time.Unix(1700000000, 0)), AchievedRate: 250,
		Pods: []*agentapi.PodResult{{
			Pod:            &agentapi.PodRef{Namespace: "shop", Name: "web"},
			ThroughSidecar: histogram.ToProto(through),
			Added: []*agentapi.AddedLatency{{Method: "ab", Tier: agentapi.EbpfTier_EBPF_TIER_NONE,
				Deltas: []*agentapi.Quantile{{Quantile: 0.5, Value: durationpb.New(200 * time.Microsecond)}}}},
			SidecarIdle:   &agentapi.Usage{CpuMillicores: 2},
			SidecarLoaded: &agentapi.Usage{CpuMillicores: 30, MemoryWorkingSetBytes: 4 << 20},
			Requests:      200, Errors: 1,
		}},
	}
	reg = NewRegistry(Info{Node: "n"}, nil, nil)
	RegisterRuns(reg, fixedRun{run})
	got := samples(t, reg)
	for key, want := range map[string]float64{
		"mesh_agent_last_run_end_timestamp_seconds{run_id=r1,stopped=false}":                                 1700000000,
		"mesh_agent_last_run_achieved_rate{}":                                                                250,
		"mesh_agent_last_run_requests{namespace=shop,pod=web}":                                               200,
		"mesh_agent_last_run_errors{namespace=shop,pod=web}":                                                 1,
		"mesh_agent_last_run_latency_seconds{namespace=shop,path=through,pod=web,quantile=0.5}":              0.0005,
		"mesh_agent_last_run_added_latency_seconds{method=ab,namespace=shop,pod=web,quantile=0.5,tier=none}": 0.0002,
		"mesh_agent_last_run_sidecar_cpu_millicores{namespace=shop,pod=web,state=idle}":                      2,
		"mesh_agent_last_run_sidecar_cpu_millicores{namespace=shop,pod=web,state=loaded}":                    30,
		"mesh_agent_last_run_sidecar_memory_working_set_bytes{namespace=shop,pod=web}":                       4 << 20,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", key, v, ok, want)
		}
	}
	if _, ok := got["mesh_agent_last_run_latency_seconds{namespace=shop,path=around,pod=web,quantile=0.5}"]; ok {
		t.Error("an around series without an around histogram")
	}
}
