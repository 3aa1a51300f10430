package perfrun_test

import (
	"testing"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun/perfruntest"
)

func TestSummarizeRecoversTheAddedLatency(t *testing.T) {
	const added = 300 * time.Microsecond
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"a", "b", "c"}, Added: added, FailNode: "c", Seed: 1})
	nodes, total := perfrun.Summarize(r)
	if len(nodes) != 3 || !nodes[2].Failed || nodes[0].Failed || total.Failed {
		t.Fatalf("failed flags: %v %v %v total %v", nodes[0].Failed, nodes[1].Failed, nodes[2].Failed, total.Failed)
	}
	if total.Pods != 2 || total.FailedPods != 1 || len(total.Problems) != 1 {
		t.Fatalf("total pods %d failed %d problems %q", total.Pods, total.FailedPods, total.Problems)
	}
	for _, s := range []perfrun.Summary{nodes[0], nodes[1], total} {
		d, ok := s.ABDelta(0.5)
		if !ok {
			t.Fatalf("%q: no A/B p50", s.Node)
		}
		// The synthetic through path adds the shift plus an exponential of mean 10 µs.
		if d.Value < added || d.Value > added+20*time.Microsecond || d.CILow > d.Value || d.CIHigh < d.Value {
			t.Errorf("%q: A/B p50 %v [%v, %v], want about %v", s.Node, d.Value, d.CILow, d.CIHigh, added)
		}
		if v, ok := s.ResidencyAt(0.5); !ok || v < added || v > added+10*time.Microsecond {
			t.Errorf("%q: residency p50 %v", s.Node, v)
		}
		if s.CPUPer1kRPS <= 0 {
			t.Errorf("%q: CPU per 1k req/s %v", s.Node, s.CPUPer1kRPS)
		}
	}
	// Node a's sidecar used 60m while 2000 requests went through it in 9 s (222/s).
	if got, want := nodes[0].CPUPer1kRPS, 60*9.0/2000*1000; got < want*0.999 || got > want*1.001 {
		t.Errorf("CPU per 1k req/s %v, want %v", got, want)
	}
	// Merged over nodes the interval narrows: twice the samples.
	dn, _ := nodes[0].ABDelta(0.5)
	dt, _ := total.ABDelta(0.5)
	if dt.CIHigh-dt.CILow >= dn.CIHigh-dn.CILow {
		t.Errorf("merged interval %v not narrower than one node's %v", dt.CIHigh-dt.CILow, dn.CIHigh-dn.CILow)
	}
}

func TestUnmarshalRejectsForeignAndDamagedFiles(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"a"}, Seed: 2})
	b, err := perfrun.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	back, err := perfrun.Unmarshal(b)
	if err != nil || back.GetId() != r.GetId() {
		t.Fatalf("round trip: %v", err)
	}
	for name, in := range map[string]string{
		"empty":         `{}`,
		"foreign":       `{"apiVersion": "v1", "kind": "ConfigMap"}`,
		"other format":  `{"format": "something/v9", "id": "00000000-0000-4000-8000-000000000001"}`,
		"no id":         `{"format": "` + perfrun.Format + `"}`,
		"bad id":        `{"format": "` + perfrun.Format + `", "id": "x"}`,
		"not json":      "\x89PNG\r\n",
		"unknown field": `{"format": "` + perfrun.Format + `", "id": "00000000-0000-4000-8000-000000000001", "extra": 1}`,
	} {
		if _, err := perfrun.Unmarshal([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
