package bootstrap

import (
	"math/rand/v2"
	"sort"
	"testing"
)

// latencySample draws n values from a right-skewed latency-like distribution (ns) plus shift.
func latencySample(rng *rand.Rand, n int, shift int64) []int64 {
	s := make([]int64, n)
	for i := range s {
		s[i] = 100_000 + int64(rng.ExpFloat64()*30_000) + shift
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

func TestBootstrapCoversTrueShift(t *testing.T) {
	const shift = 50_000
	qs := []float64{0.99, 0.5, 0.9} // deliberately unsorted
	// Over many independent experiments a 95% interval must contain the true shift about 95%
	// of the time; accept 85–100% over 60 experiments (binomial: P(<85%) ≈ 0.1%).
	covered := map[float64]int{}
	const experiments = 60
	rng := rand.New(rand.NewPCG(7, 8))
	for range experiments {
		through := latencySample(rng, 2000, shift)
		around := latencySample(rng, 2000, 0)
		ds := Deltas(through, around, qs, 500, 0.95, rng)
		for i, d := range ds {
			if d.Quantile != qs[i] {
				t.Fatalf("delta %d is for quantile %g, want %g", i, d.Quantile, qs[i])
			}
			if !(d.CILow <= d.Value && d.Value <= d.CIHigh) {
				t.Fatalf("q%g: value %v outside its interval [%v, %v]", d.Quantile, d.Value, d.CILow, d.CIHigh)
			}
			if d.CILow <= shift && shift <= d.CIHigh {
				covered[d.Quantile]++
			}
		}
	}
	for _, q := range qs {
		if frac := float64(covered[q]) / experiments; frac < 0.85 {
			t.Errorf("q%g: interval covered the true shift in %.0f%% of experiments", q, frac*100)
		}
	}
}

func TestBootstrapDeterministicAndNarrowing(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	through := latencySample(rng, 5000, 20_000)
	around := latencySample(rng, 5000, 0)
	a := Deltas(through, around, []float64{0.5, 0.9, 0.99}, 1000, 0.95, rand.New(rand.NewPCG(3, 4)))
	b := Deltas(through, around, []float64{0.5, 0.9, 0.99}, 1000, 0.95, rand.New(rand.NewPCG(3, 4)))
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different result: %+v vs %+v", a[i], b[i])
		}
	}
	small := Deltas(through[:0:0], around[:0:0], nil, 100, 0.95, rng) // no quantiles: no work
	if len(small) != 0 {
		t.Fatal("deltas without quantiles")
	}
	// A 25× smaller sample must give a clearly wider p50 interval.
	rs := rand.New(rand.NewPCG(5, 6))
	fewT, fewA := latencySample(rs, 200, 20_000), latencySample(rs, 200, 0)
	few := Deltas(fewT, fewA, []float64{0.5}, 1000, 0.95, rs)
	if wide, narrow := few[0].CIHigh-few[0].CILow, a[0].CIHigh-a[0].CILow; wide < 2*narrow {
		t.Errorf("p50 interval width %v with 200 samples, %v with 5000", wide, narrow)
	}
}
