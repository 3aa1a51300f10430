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

func TestCompareJudgesChanges(t *testing.T) {
	nodes := []string{"a", "b"}
	base := perfruntest.Run(perfruntest.Options{Nodes: nodes, Added: 300 * time.Microsecond, Seed: 1})
	same := perfruntest.Run(perfruntest.Options{Nodes: nodes, Added: 300 * time.Microsecond, Seed: 2})
	worse := perfruntest.Run(perfruntest.Options{Nodes: []string{"a", "c"}, Added: 600 * time.Microsecond, Seed: 3})

	verdict := func(c perfrun.Comparison, metric string) perfrun.Change {
		for _, ch := range c.Changes {
			if ch.Metric == metric {
				return ch
			}
		}
		t.Fatalf("no %s in %+v", metric, c)
		return perfrun.Change{}
	}
	_, total := perfrun.Compare(base, same)
	for _, m := range []string{"added_p50", "residency_p50"} {
		if c := verdict(total, m); c.Verdict != perfrun.NotSignificant {
			t.Errorf("same distribution, %s: %+v", m, c)
		}
	}
	nodesCmp, total := perfrun.Compare(base, worse)
	for _, m := range []string{"added_p50", "latency_p50", "residency_p50"} {
		c := verdict(total, m)
		if c.Verdict != perfrun.Significant || c.Delta < float64(250*time.Microsecond) {
			t.Errorf("300µs more, %s: %+v", m, c)
		}
	}
	if c := verdict(total, "cpu_per_1k_rps"); c.Verdict != perfrun.NoInterval {
		t.Errorf("cpu: %+v", c)
	}
	if len(nodesCmp) != 3 || nodesCmp[0].Missing != "" || nodesCmp[1].Missing != "not in run B" || nodesCmp[2].Missing != "not in run A" {
		t.Errorf("nodes: %+v", nodesCmp)
	}
}

func TestSummarizeFallsBackToQueueing(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"a"}, Added: 100 * time.Microsecond, Seed: 4})
	for _, al := range r.GetNodes()[0].GetResult().GetPods()[0].GetAdded() {
		if al.GetMethod() == perfrun.MethodResidency {
			al.Method = perfrun.MethodQueueing
		}
	}
	_, total := perfrun.Summarize(r)
	if v, ok := total.ResidencyAt(0.5); !ok || total.EBPFMethod != perfrun.MethodQueueing || v < 100*time.Microsecond {
		t.Fatalf("queueing: method %q, p50 %v (%v)", total.EBPFMethod, v, ok)
	}
}

// benchRun is a 30 s run at 500 req/s over two nodes: 7,500 values per path per pod.
func benchRun(seed uint64, added time.Duration) *perfrun.Run {
	return perfruntest.Run(perfruntest.Options{Nodes: []string{"a", "b"}, Added: added, Requests: 7500, Seed: seed})
}

func BenchmarkSummarize(b *testing.B) {
	r := benchRun(1, 300*time.Microsecond)
	for b.Loop() {
		perfrun.Summarize(r)
	}
}
