package budget

import (
	"strings"
	"testing"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun/perfruntest"
)

func TestParseGood(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Budget
	}{
		{"added_p99>2ms", []Budget{{"added_p99", Greater, 2e6, "2ms"}}},
		{" added_p90 >= 1.5ms , cpu_per_1k_rps>250m ", []Budget{{"added_p90", GreaterEqual, 1.5e6, "1.5ms"}, {"cpu_per_1k_rps", Greater, 250, "250m"}}},
		{"cpu_per_1k_rps>0.25", []Budget{{"cpu_per_1k_rps", Greater, 250, "0.25"}}},
		{"sidecar_cpu>1", []Budget{{"sidecar_cpu", Greater, 1000, "1"}}},
		{"sidecar_memory<=64Mi", []Budget{{"sidecar_memory", LessEqual, 64 << 20, "64Mi"}}},
		{"sidecar_memory>500M", []Budget{{"sidecar_memory", Greater, 500e6, "500M"}}},
		{"error_rate>1%", []Budget{{"error_rate", Greater, 0.01, "1%"}}},
		{"error_rate>=0.005", []Budget{{"error_rate", GreaterEqual, 0.005, "0.005"}}},
		{"latency_p50<500us,latency_p99<500µs", []Budget{{"latency_p50", Less, 500e3, "500us"}, {"latency_p99", Less, 500e3, "500µs"}}},
		{"residency_p99>0s", []Budget{{"residency_p99", Greater, 0, "0s"}}},
		{"AGENT_CPU>100m", []Budget{{"agent_cpu", Greater, 100, "100m"}}},
		{"agent_memory>1Gi", []Budget{{"agent_memory", Greater, 1 << 30, "1Gi"}}},
	} {
		got, err := Parse(tc.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("Parse(%q) = %v, want %v", tc.in, got, tc.want)
			continue
		}
		for i := range got {
			g, w := got[i], tc.want[i]
			if g.Metric != w.Metric || g.Op != w.Op || g.LimitText != w.LimitText || abs(g.Limit-w.Limit) > 1e-9*max(1, w.Limit) {
				t.Errorf("Parse(%q)[%d] = %+v, want %+v", tc.in, i, g, w)
			}
		}
	}
}

func TestParseBad(t *testing.T) {
	all := strings.Join(Metrics(), ", ")
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", []string{"no budget given", all}},
		{"added_p99", []string{`budget "added_p99" has no comparison`, ">, >=, <, <="}},
		{"added_p99=2ms", []string{"no comparison", "= and != are not supported"}},
		{"added_p99=>2ms", []string{`budget "added_p99=>2ms": bad comparison`}},
		{"added_p99>>2ms", []string{"bad comparison"}},
		{"added_p999>2ms", []string{`unknown metric "added_p999" (did you mean added_p99?)`, all}},
		{"throughput>1", []string{`unknown metric "throughput"; metrics: ` + all}},
		{"added_p99>2", []string{`limit "2": no unit`, "a duration with a unit"}},
		{"added_p99>fast", []string{"not a duration"}},
		{"added_p99>-1ms", []string{"negative"}},
		{"added_p99>", []string{"has no limit", "added_p99 takes a duration"}},
		{">2ms", []string{"names no metric", all}},
		{"added_p99>2ms,,cpu_per_1k_rps>1", []string{"budget 2 of 3: empty budget"}},
		{"added_p99>2ms,", []string{"budget 2 of 2: empty budget"}},
		{"added_p99>2ms,cpu_per_1k_rps>250ms", []string{`budget 2 of 2: budget "cpu_per_1k_rps>250ms": limit "250ms": not a CPU quantity`, "250m"}},
		{"cpu_per_1k_rps>1Ki", []string{"binary suffixes"}},
		{"sidecar_memory>128m", []string{"did you mean M or Mi?"}},
		{"sidecar_memory>lots", []string{"not a memory quantity", "64Mi"}},
		{"error_rate>150%", []string{"more than 100%"}},
		{"error_rate>abc", []string{"not a number", "1%"}},
		{"error_rate>NaN", []string{"not a finite number"}},
	} {
		_, err := Parse(tc.in)
		if err == nil {
			t.Errorf("Parse(%q) succeeded", tc.in)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%q) = %q\n  want it to contain %q", tc.in, err, w)
			}
		}
	}
}

func TestListFlag(t *testing.T) {
	var l List
	if err := l.Set("added_p99>2ms"); err != nil {
		t.Fatal(err)
	}
	if err := l.Set("cpu_per_1k_rps>250m, error_rate>1%"); err != nil {
		t.Fatal(err)
	}
	if err := l.Set("nope>1"); err == nil {
		t.Error("Set of a bad budget succeeded")
	}
	if got, want := l.String(), "added_p99>2ms,cpu_per_1k_rps>250m,error_rate>1%"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if l.Type() == "" || !strings.Contains(Help(), "cpu_per_1k_rps") {
		t.Error("flag type or help missing")
	}
}

func abs(f float64) float64 { return max(f, -f) }

func mustParse(t *testing.T, s string) []Budget {
	t.Helper()
	bs, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

// find returns the result for budget b (as written) on node ("" = whole run).
func find(t *testing.T, rs []Result, b, node string) Result {
	t.Helper()
	for _, r := range rs {
		if r.Budget.String() == b && r.Node == node {
			return r
		}
	}
	t.Fatalf("no result for %s on %q in %v", b, node, rs)
	return Result{}
}

var nodes = []string{"kind-worker", "kind-worker2"}

func TestEvaluateKnownAddedLatency(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: nodes, Added: 2500 * time.Microsecond, Seed: 1})
	rs := Evaluate(r, mustParse(t, "added_p99>2ms,added_p50>3ms,cpu_per_1k_rps>300m,sidecar_memory>=48Mi,sidecar_memory>48Mi,"+
		"error_rate>0,agent_cpu>10m,latency_p50<1ms,residency_p50>=2.5ms,sidecar_cpu>65m"))
	for _, tc := range []struct {
		budget, node string
		breached     bool
		// lo and hi bound the measured value.
		lo, hi float64
		method string
	}{
		{"added_p99>2ms", "", true, 2.4e6, 2.7e6, "A/B, 95% CI"},
		{"added_p99>2ms", "kind-worker", true, 2.4e6, 2.7e6, "A/B, 95% CI"},
		{"added_p99>2ms", "kind-worker2", true, 2.4e6, 2.7e6, "A/B, 95% CI"},
		{"added_p50>3ms", "", false, 2.45e6, 2.6e6, "A/B"},
		{"added_p50>3ms", "kind-worker2", false, 2.45e6, 2.6e6, "A/B"},
		// Sidecar CPU 60m and 70m for 9 s, 2000 requests through each sidecar.
		{"cpu_per_1k_rps>300m", "", false, 292.5, 292.5, ""},
		{"cpu_per_1k_rps>300m", "kind-worker", false, 270, 270, ""},
		{"cpu_per_1k_rps>300m", "kind-worker2", true, 315, 315, ""},
		{"sidecar_memory>=48Mi", "kind-worker", true, 48 << 20, 48 << 20, ""},
		{"sidecar_memory>48Mi", "", false, 48 << 20, 48 << 20, ""},
		{"error_rate>0", "", false, 0, 0, ""},
		{"agent_cpu>10m", "kind-worker", true, 12, 12, ""},
		{"agent_cpu>10m", "kind-worker2", true, 12, 12, ""},
		{"latency_p50<1ms", "kind-worker", false, 2.6e6, 2.8e6, ""},
		{"residency_p50>=2.5ms", "kind-worker", true, 2.5e6, 2.51e6, "eBPF residency, tier tp_btf"},
		{"sidecar_cpu>65m", "", false, 65, 65, ""},
		{"sidecar_cpu>65m", "kind-worker2", true, 70, 70, ""},
	} {
		res := find(t, rs, tc.budget, tc.node)
		if !res.Measured || res.Breached != tc.breached || res.Value < tc.lo-1e-9 || res.Value > tc.hi+1e-9 || !strings.HasPrefix(res.Method, tc.method) {
			t.Errorf("%s on %q: %+v\n  %s\n  want breached %v, value in [%g, %g], method %q", tc.budget, tc.node, res, res, tc.breached, tc.lo, tc.hi, tc.method)
		}
	}
	// The agents' budget is per agent: not checked on the summed whole run.
	for _, res := range rs {
		if res.Budget.Metric == "agent_cpu" && res.Node == "" {
			t.Errorf("agent_cpu checked on the whole run: %s", res)
		}
	}
	if got := len(rs); got != 9*3+2 {
		t.Errorf("%d results, want 29 (9 budgets on the run and 2 nodes, agent_cpu on 2 nodes)", got)
	}
	b := find(t, rs, "added_p99>2ms", "kind-worker")
	if s := b.String(); !strings.HasPrefix(s, "budget breached: added_p99 = 2.") || !strings.Contains(s, "ms > 2ms on node kind-worker (A/B, 95% CI ") {
		t.Errorf("message = %q", s)
	}
	met := find(t, rs, "cpu_per_1k_rps>300m", "kind-worker")
	if s, want := met.String(), "budget met: cpu_per_1k_rps = 270m, not > 300m, on node kind-worker"; s != want {
		t.Errorf("message = %q, want %q", s, want)
	}
	if n := len(Breaches(rs)); n != 3+1+3+2+3+1 {
		t.Errorf("%d breaches, want 13: %v", n, Breaches(rs))
	}
}

func TestEvaluateFallsBackToResidency(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: nodes, Added: 2500 * time.Microsecond, Seed: 2})
	for _, n := range r.GetNodes() {
		for _, p := range n.GetResult().GetPods() {
			p.AroundSidecar = nil
		}
	}
	rs := Evaluate(r, mustParse(t, "added_p99>2ms"))
	for _, node := range append([]string{""}, nodes...) {
		res := find(t, rs, "added_p99>2ms", node)
		if !res.Measured || !res.Breached || res.Value < 2.5e6 || res.Value > 2.6e6 || res.Method != "eBPF residency, tier tp_btf; A/B did not run" {
			t.Errorf("on %q: %s", node, res)
		}
	}

	// With neither method, the budget cannot be checked and fails the gate.
	for _, n := range r.GetNodes() {
		for _, p := range n.GetResult().GetPods() {
			p.Added = nil
		}
	}
	rs = Evaluate(r, mustParse(t, "added_p99>2ms,residency_p90<1s,latency_p99>1s"))
	for _, node := range append([]string{""}, nodes...) {
		res := find(t, rs, "added_p99>2ms", node)
		if res.Measured || !res.Breached || res.Why != "neither A/B nor eBPF residency ran" {
			t.Errorf("on %q: %+v", node, res)
		}
		if res := find(t, rs, "residency_p90<1s", node); res.Measured || !res.Breached {
			t.Errorf("residency without eBPF on %q: %+v", node, res)
		}
		if res := find(t, rs, "latency_p99>1s", node); !res.Measured || res.Breached {
			t.Errorf("latency on %q: %+v", node, res)
		}
	}
	want := "budget breached: added_p99>2ms could not be checked on node kind-worker: neither A/B nor eBPF residency ran (a budget that cannot be checked fails the gate)"
	if s := find(t, rs, "added_p99>2ms", "kind-worker").String(); s != want {
		t.Errorf("message = %q\nwant      %q", s, want)
	}
}

func TestEvaluateFailedNode(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: nodes, Added: time.Millisecond, FailNode: "kind-worker2", Seed: 3})
	rs := Evaluate(r, mustParse(t, "added_p99>2ms,agent_cpu>1"))
	if res := find(t, rs, "added_p99>2ms", ""); !res.Measured || res.Breached {
		t.Errorf("whole run: %s", res)
	}
	if res := find(t, rs, "added_p99>2ms", "kind-worker"); !res.Measured || res.Breached {
		t.Errorf("healthy node: %s", res)
	}
	for _, b := range []string{"added_p99>2ms", "agent_cpu>1"} {
		res := find(t, rs, b, "kind-worker2")
		if res.Measured || !res.Breached || !strings.Contains(res.String(), "could not be checked on node kind-worker2: the node returned no result: agent unreachable") {
			t.Errorf("failed node: %s", res)
		}
	}
	if n := len(Breaches(rs)); n != 2 {
		t.Errorf("%d breaches, want 2 (both budgets on the failed node): %v", n, Breaches(rs))
	}

	empty := perfruntest.Run(perfruntest.Options{})
	rs = Evaluate(empty, mustParse(t, "error_rate>1%,agent_memory>1Gi"))
	if len(rs) != 2 || !rs[0].Breached || !rs[1].Breached || !strings.Contains(rs[1].String(), "no node took part") {
		t.Errorf("run without nodes: %v", rs)
	}
}

func TestEvaluateErrorRateAndOperators(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: nodes[:1], Added: time.Millisecond, Seed: 4})
	p := r.GetNodes()[0].GetResult().GetPods()[0]
	p.Errors = p.Requests / 50 // 2%
	rs := Evaluate(r, mustParse(t, "error_rate>1%,error_rate>=0.02,error_rate<0.02,error_rate<=2%,error_rate>2%"))
	for b, want := range map[string]bool{"error_rate>1%": true, "error_rate>=0.02": true, "error_rate<0.02": false, "error_rate<=2%": true, "error_rate>2%": false} {
		if res := find(t, rs, b, "kind-worker"); res.Breached != want || res.Value != 0.02 {
			t.Errorf("%s: %s, want breached %v", b, res, want)
		}
	}
	if s := find(t, rs, "error_rate>1%", "").String(); s != "budget breached: error_rate = 2% > 1% on the whole run" {
		t.Errorf("message = %q", s)
	}
}

func TestMessages(t *testing.T) {
	b := Budget{Metric: "added_p99", Op: Greater, Limit: 2e6, LimitText: "2ms"}
	for _, tc := range []struct {
		r    Result
		want string
	}{
		{Result{Budget: b, Node: "kind-worker", Measured: true, Value: 2.41e6, Method: "A/B", Breached: true},
			"budget breached: added_p99 = 2.41ms > 2ms on node kind-worker (A/B)"},
		// Three digits would print the limit itself.
		{Result{Budget: b, Measured: true, Value: 2.0004e6, Breached: true},
			"budget breached: added_p99 = 2.0004ms > 2ms on the whole run"},
		{Result{Budget: b, Measured: true, Value: 850e3},
			"budget met: added_p99 = 850µs, not > 2ms, on the whole run"},
		{Result{Budget: Budget{Metric: "sidecar_memory", Op: GreaterEqual, Limit: 64 << 20, LimitText: "64Mi"}, Node: "n", Measured: true, Value: 70 << 20, Breached: true},
			"budget breached: sidecar_memory = 70Mi >= 64Mi on node n"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("String() = %q\nwant       %q", got, tc.want)
		}
	}
}
