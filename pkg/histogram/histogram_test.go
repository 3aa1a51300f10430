package histogram

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

// Two nodes' histograms merged through the wire format must answer exactly like one
// histogram of all the values, tail and maximum included.
func TestMergeKeepsTail(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	a, b, all := New(), New(), New()
	var values []int64
	for i := 0; i < 200000; i++ {
		// Log-normal around 300 µs, plus a rare multi-second tail on node b only.
		d := time.Duration(300e3 * mathExp(rng.NormFloat64()*0.6))
		h := a
		if i%2 == 1 {
			h = b
			if i%20011 == 1 {
				d = time.Duration(1+rng.IntN(5)) * time.Second
			}
		}
		Record(h, d)
		Record(all, d)
		values = append(values, (int64(d)+500)/1000)
	}
	merged, err := MergeProto(ToProto(a), ToProto(b))
	if err != nil {
		t.Fatal(err)
	}
	m, err := FromProto(merged)
	if err != nil {
		t.Fatal(err)
	}
	if m.TotalCount() != all.TotalCount() {
		t.Fatalf("merged %d values, want %d", m.TotalCount(), all.TotalCount())
	}
	slices.Sort(values)
	for _, q := range []float64{0.5, 0.99, 0.999, 1} {
		got, want := Quantile(m, q), Quantile(all, q)
		if got != want {
			t.Errorf("q%v: merged %v, pooled %v", q, got, want)
		}
		// And both agree with the exact value within the layout's 0.1% resolution.
		rank := max(0, int(q*float64(len(values))+0.5)-1) // the rank HdrHistogram reports
		exact := time.Duration(values[rank]) * time.Microsecond
		if diff := float64(got-exact) / float64(exact); diff > 0.002 || diff < -0.002 {
			t.Errorf("q%v: %v vs exact %v", q, got, exact)
		}
	}
	if m.Max() != all.Max() || m.Max() < 1e6 {
		t.Errorf("max %d, pooled %d: the tail was lost", m.Max(), all.Max())
	}
}

func TestProtoRoundTripAndBadInput(t *testing.T) {
	h := New()
	for _, v := range []int64{0, 1, 7, 2047, 2048, 123456, Highest} {
		h.RecordValue(v)
	}
	p := ToProto(h)
	if len(p.Counts) > 20 {
		t.Errorf("sparse histogram encoded in %d counts; run-length encoding missing", len(p.Counts))
	}
	back, err := FromProto(p)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equals(h) {
		t.Errorf("round trip changed the histogram")
	}
	bad := []*agentapi.Histogram{
		nil,
		{LowestTrackable: 1, HighestTrackable: 1000, SignificantFigures: 9},
		{LowestTrackable: 0, HighestTrackable: 1000, SignificantFigures: 3},
		{LowestTrackable: 1, HighestTrackable: 1 << 62, SignificantFigures: 5},
		{LowestTrackable: 1, HighestTrackable: 1000, SignificantFigures: 3, Counts: []int64{-1 << 40}},
		{LowestTrackable: 1, HighestTrackable: 1000, SignificantFigures: 3, Counts: make([]int64, 1<<16)},
	}
	for i, p := range bad {
		if _, err := FromProto(p); err == nil {
			t.Errorf("bad histogram %d accepted", i)
		}
	}
}

func mathExp(x float64) float64 { return math.Exp(x) }
