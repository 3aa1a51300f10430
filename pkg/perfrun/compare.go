package perfrun

import (
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/bootstrap"
)

// Verdicts on a change between two runs.
const (
	Significant    = "significant"
	NotSignificant = "not significant"
	// NoInterval marks figures measured once per pod (CPU, memory): shown, not judged.
	NoInterval = "no interval"
	// NotMeasured marks a figure one of the runs lacks.
	NotMeasured = "not measured"
)

// Change is one figure in run A and run B. Durations are in nanoseconds, CPU in millicores,
// memory in bytes; Unit says which.
type Change struct {
	Metric  string  `json:"metric"`
	Unit    string  `json:"unit"`
	A       float64 `json:"a"`
	B       float64 `json:"b"`
	Delta   float64 `json:"delta"`
	Verdict string  `json:"verdict"`
}

// Comparison is one node's changes, or the whole run's when Node is empty. Missing says
// why a node cannot be compared (it is absent from, or failed in, one run).
type Comparison struct {
	Node    string   `json:"node"`
	Changes []Change `json:"changes,omitempty"`
	Missing string   `json:"missing,omitempty"`
}

// Compare sets run B against run A: per node present in both, and for the whole runs.
//
// Latency and residency quantiles are judged by a bootstrap interval on B − A from the two
// histograms (significant when it excludes zero). Added latency is a difference of two
// A/B differences: judged significant when the change exceeds the two runs' 95% intervals
// combined (√(hA² + hB²) for half-widths hA, hB). CPU and memory are measured once per pod
// and carry no interval.
func Compare(a, b *Run) (nodes []Comparison, total Comparison) {
	na, ta := Summarize(a)
	nb, tb := Summarize(b)
	names := map[string]bool{}
	for _, s := range na {
		names[s.Node] = true
	}
	for _, s := range nb {
		names[s.Node] = true
	}
	for _, n := range slices.Sorted(maps.Keys(names)) {
		sa, oka := find(na, n)
		sb, okb := find(nb, n)
		c := Comparison{Node: n}
		switch {
		case !oka:
			c.Missing = "not in run A"
		case !okb:
			c.Missing = "not in run B"
		case sa.Failed:
			c.Missing = "failed in run A"
		case sb.Failed:
			c.Missing = "failed in run B"
		default:
			c.Changes = changes(sa, sb)
		}
		nodes = append(nodes, c)
	}
	return nodes, Comparison{Changes: changes(ta, tb)}
}

func find(ss []Summary, node string) (Summary, bool) {
	i := slices.IndexFunc(ss, func(s Summary) bool { return s.Node == node })
	if i < 0 {
		return Summary{}, false
	}
	return ss[i], true
}

func changes(a, b Summary) []Change {
	out := histogramChanges("latency", a.Through, b.Through)
	for _, q := range Quantiles {
		c := Change{Metric: fmt.Sprintf("added_p%g", q*100), Unit: "ns", Verdict: NotMeasured}
		da, oka := a.ABDelta(q)
		db, okb := b.ABDelta(q)
		if oka && okb {
			c.A, c.B, c.Delta = float64(da.Value), float64(db.Value), float64(db.Value-da.Value)
			ha, hb := float64(da.CIHigh-da.CILow)/2, float64(db.CIHigh-db.CILow)/2
			c.Verdict = NotSignificant
			if math.Abs(c.Delta) > math.Hypot(ha, hb) {
				c.Verdict = Significant
			}
		}
		out = append(out, c)
	}
	out = append(out, histogramChanges("residency", a.Residency, b.Residency)...)
	plain := func(metric, unit string, va, vb float64, measured bool) Change {
		c := Change{Metric: metric, Unit: unit, Verdict: NotMeasured}
		if measured {
			c.A, c.B, c.Delta, c.Verdict = va, vb, vb-va, NoInterval
		}
		return c
	}
	out = append(out,
		plain("cpu_per_1k_rps", "millicores", a.CPUPer1kRPS, b.CPUPer1kRPS, a.CPUPer1kRPS > 0 && b.CPUPer1kRPS > 0),
		plain("sidecar_cpu", "millicores", a.SidecarCPU, b.SidecarCPU, a.Pods > 0 && b.Pods > 0),
		plain("sidecar_memory", "bytes", float64(a.SidecarMemory), float64(b.SidecarMemory), a.Pods > 0 && b.Pods > 0),
	)
	return out
}

// histogramChanges judges B − A at each quantile by bootstrap intervals over both
// histograms, all quantiles from one set of resamples.
func histogramChanges(metric string, a, b *hdrhistogram.Histogram) []Change {
	out := make([]Change, len(Quantiles))
	for i, q := range Quantiles {
		out[i] = Change{Metric: fmt.Sprintf("%s_p%g", metric, q*100), Unit: "ns", Verdict: NotMeasured}
	}
	if a == nil || b == nil || a.TotalCount() == 0 || b.TotalCount() == 0 {
		return out
	}
	for i, d := range bootstrap.BinnedDeltas(bins(b), bins(a), Quantiles, Resamples, Confidence, rand.New(rand.NewPCG(3, 4))) {
		c := &out[i]
		c.A, c.B, c.Delta = float64(d.Around), float64(d.Through), float64(d.Value)
		c.Verdict = NotSignificant
		if d.CILow > 0 || d.CIHigh < 0 {
			c.Verdict = Significant
		}
	}
	return out
}
