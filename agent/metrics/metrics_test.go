package metrics

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
)

type fakeSends struct {
	n   ebpftier.SendCount
	err error
}

func (f *fakeSends) Read() (ebpftier.SendCount, error) { return f.n, f.err }

// samples flattens a gather into "name{k=v,...}" → value.
func samples(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := mf.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			default:
				out[key] = -1
			}
		}
	}
	return out
}

func TestRegistry(t *testing.T) {
	sends := &fakeSends{n: ebpftier.SendCount{Calls: 7, Bytes: 7000}}
	reg := NewRegistry(Info{Node: "node-a", Version: "v1", Kernel: "6.18", Tier: ebpftier.RawTP},
		[]ebpftier.Attempt{{Tier: ebpftier.TPBTF, Err: errors.New("EPERM")}, {Tier: ebpftier.RawTP}}, sends)
	got := samples(t, reg)
	for key, want := range map[string]float64{
		`mesh_agent_info{kernel=6.18,node=node-a,tier=raw_tp,version=v1}`: 1,
		`mesh_agent_ebpf_tier_available{tier=tp_btf}`:                     0,
		`mesh_agent_ebpf_tier_available{tier=raw_tp}`:                     1,
		`mesh_agent_ebpf_probe_send_calls_total{tier=raw_tp}`:             7,
		`mesh_agent_ebpf_probe_send_bytes_total{tier=raw_tp}`:             7000,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (present %v); want %v", key, v, ok, want)
		}
	}
	for _, name := range []string{"go_goroutines{}", "process_cpu_seconds_total{}"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing; have %v", name, slices.Sorted(maps.Keys(got)))
		}
	}

	sends.err = errors.New("map closed")
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "map closed") {
		t.Errorf("failing read: Gather error %v; want it reported", err)
	}
}

func TestRegistryWithoutEBPF(t *testing.T) {
	got := samples(t, NewRegistry(Info{Node: "n", Tier: ebpftier.None}, nil, nil))
	for key := range got {
		if strings.HasPrefix(key, "mesh_agent_ebpf_") {
			t.Errorf("no eBPF, yet %s", key)
		}
	}
	if got[`mesh_agent_info{kernel=,node=n,tier=none,version=}`] != 1 {
		t.Errorf("info gauge missing: %v", got)
	}
}

type fixedFigures Figures

func (f fixedFigures) Figures() Figures { return Figures(f) }

func TestSidecarSeries(t *testing.T) {
	reg := NewRegistry(Info{Node: "n"}, nil, nil)
	RegisterSidecars(reg, fixedFigures{
		DiscoveryReady: true,
		Sidecars: []SidecarFigures{
			{Namespace: "shop", Pod: "web", Container: "istio-proxy", Mesh: "istio", HasCPU: true, CPUMillicores: 12.5, HasMemory: true, WorkingSet: 4096},
			// First scrape of a new sidecar: memory only, no made-up zero CPU.
			{Namespace: "shop", Pod: "new", Container: "istio-proxy", Mesh: "istio", HasMemory: true, WorkingSet: 8192},
		},
		Meshes:      map[string]int{"istio": 3},
		HasAgentCPU: true, AgentCPUMillicores: 1.5, HasAgentRSS: true, AgentRSS: 1 << 20,
	})
	got := samples(t, reg)
	web := "{container=istio-proxy,mesh=istio,namespace=shop,pod=web}"
	for key, want := range map[string]float64{
		"mesh_agent_sidecar_cpu_millicores" + web:                                                              12.5,
		"mesh_agent_sidecar_memory_working_set_bytes" + web:                                                    4096,
		"mesh_agent_sidecar_memory_working_set_bytes{container=istio-proxy,mesh=istio,namespace=shop,pod=new}": 8192,
		"mesh_agent_sidecars{mesh=istio}":                                                                      3,
		"mesh_agent_pod_discovery_ready{}":                                                                     1,
		"mesh_agent_self_cpu_millicores{}":                                                                     1.5,
		"mesh_agent_self_memory_rss_bytes{}":                                                                   1 << 20,
	} {
		if v, ok := got[key]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", key, v, ok, want)
		}
	}
	if _, ok := got["mesh_agent_sidecar_cpu_millicores{container=istio-proxy,mesh=istio,namespace=shop,pod=new}"]; ok {
		t.Errorf("CPU series for a sidecar without a rate")
	}

	reg = NewRegistry(Info{Node: "n"}, nil, nil)
	RegisterSidecars(reg, fixedFigures{})
	got = samples(t, reg)
	if got["mesh_agent_pod_discovery_ready{}"] != 0 || len(got) == 0 {
		t.Errorf("not ready: %v", got)
	}
	for k := range got {
		if strings.HasPrefix(k, "mesh_agent_sidecar") || strings.HasPrefix(k, "mesh_agent_self_cpu") {
			t.Errorf("series %s without figures", k)
		}
	}
}
