package bootstrap

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// binnedSample draws n latency-like values (ns) plus shift and bins them on a grid of step
// ns (the agents' histograms use 1 µs), each bin's value its top; also returns the values
// expanded, ascending.
func binnedSample(rng *rand.Rand, n int, shift, step int64) ([]Bin, []int64) {
	counts := map[int64]int64{}
	lo, hi := int64(math.MaxInt64), int64(0)
	for range n {
		v := (100_000 + int64(rng.ExpFloat64()*30_000) + shift + step - 1) / step * step
		counts[v]++
		lo, hi = min(lo, v), max(hi, v)
	}
	var bins []Bin
	var values []int64
	for v := lo; v <= hi; v += step {
		if c := counts[v]; c > 0 {
			bins = append(bins, Bin{Value: v, Count: c})
			for range c {
				values = append(values, v)
			}
		}
	}
	return bins, values
}

func TestBinnedCoversTrueShift(t *testing.T) {
	const shift = 50_000 // a whole number of bins, so the binned distributions differ by it exactly
	qs := []float64{0.99, 0.5, 0.9}
	// As TestBootstrapCoversTrueShift: a 95% interval must cover the true shift about 95% of
	// the time. 200 experiments: below 85% is over 6 standard deviations from 95%.
	const experiments = 200
	covered := map[float64]int{}
	rng := rand.New(rand.NewPCG(7, 8))
	for range experiments {
		through, _ := binnedSample(rng, 2000, shift, 1000)
		around, _ := binnedSample(rng, 2000, 0, 1000)
		for i, d := range BinnedDeltas(through, around, qs, 500, 0.95, rng) {
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

func TestBinnedAgreesWithPerValue(t *testing.T) {
	qs := []float64{0.5, 0.9, 0.99}
	rng := rand.New(rand.NewPCG(11, 12))
	for trial := range 3 {
		// A fine grid, so that interval widths span many bins and are not rounded to a few.
		bt, vt := binnedSample(rng, 5000, 20_000, 50)
		ba, va := binnedSample(rng, 5000, 0, 50)
		per := Deltas(vt, va, qs, 2000, 0.95, rand.New(rand.NewPCG(1, uint64(trial))))
		bin := BinnedDeltas(bt, ba, qs, 2000, 0.95, rand.New(rand.NewPCG(2, uint64(trial))))
		for i := range qs {
			p, b := per[i], bin[i]
			if p.Value != b.Value || p.Through != b.Through || p.Around != b.Around {
				t.Errorf("trial %d q%g: binned %+v, per value %+v", trial, qs[i], b, p)
			}
			// Both are Monte Carlo estimates of the same interval: widths agree to within
			// the resampling noise of 2000 resamples.
			wp, wb := float64(p.CIHigh-p.CILow), float64(b.CIHigh-b.CILow)
			t.Logf("trial %d q%g: width %v binned, %v per value", trial, qs[i], time.Duration(wb), time.Duration(wp))
			if math.Abs(wb-wp) > 0.15*wp {
				t.Errorf("trial %d q%g: interval width %v binned, %v per value", trial, qs[i], time.Duration(wb), time.Duration(wp))
			}
		}
	}
}

func TestBinnedDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	through, _ := binnedSample(rng, 5000, 20_000, 1000)
	around, _ := binnedSample(rng, 5000, 0, 1000)
	qs := []float64{0.5, 0.9, 0.99}
	a := BinnedDeltas(through, around, qs, 1000, 0.95, rand.New(rand.NewPCG(3, 4)))
	b := BinnedDeltas(through, around, qs, 1000, 0.95, rand.New(rand.NewPCG(3, 4)))
	c := BinnedDeltas(through, around, qs, 1000, 0.95, rand.New(rand.NewPCG(5, 6)))
	same := true
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different result: %+v vs %+v", a[i], b[i])
		}
		same = same && a[i] == c[i]
	}
	if same {
		t.Error("another seed gave the very same intervals: the resampling ignores its generator")
	}
}

func TestBinnedEdgeCases(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	qs := []float64{0.5, 0.99}
	one := []Bin{{Value: 300, Count: 7}}
	if ds := BinnedDeltas(nil, one, qs, 100, 0.95, rng); ds != nil {
		t.Errorf("empty through: %+v", ds)
	}
	if ds := BinnedDeltas(one, []Bin{{Value: 5, Count: 0}, {Value: 6, Count: -3}}, qs, 100, 0.95, rng); ds != nil {
		t.Errorf("around with no samples: %+v", ds)
	}
	if ds := BinnedDeltas(one, one, nil, 100, 0.95, rng); len(ds) != 0 {
		t.Errorf("no quantiles: %+v", ds)
	}
	// One bin each: every resample is the data itself.
	ds := BinnedDeltas(one, []Bin{{Value: 100, Count: 3}}, qs, 100, 0.95, rng)
	if len(ds) != len(qs) {
		t.Fatalf("one bin: %d deltas for %d quantiles", len(ds), len(qs))
	}
	for _, d := range ds {
		if d.Value != 200 || d.CILow != 200 || d.CIHigh != 200 || d.Through != 300 || d.Around != 100 {
			t.Errorf("one bin: %+v", d)
		}
	}

	// Unsorted bins, duplicates and empty bins mean the same data as their sorted sum.
	messy := []Bin{{Value: 30, Count: 1}, {Value: 10, Count: 2}, {Value: 20, Count: 0}, {Value: 10, Count: 2}, {Value: 40, Count: 5}}
	clean := []Bin{{Value: 10, Count: 4}, {Value: 30, Count: 1}, {Value: 40, Count: 5}}
	x := BinnedDeltas(messy, clean, qs, 200, 0.95, rand.New(rand.NewPCG(9, 9)))
	y := BinnedDeltas(clean, clean, qs, 200, 0.95, rand.New(rand.NewPCG(9, 9)))
	if len(x) != len(qs) || len(y) != len(qs) {
		t.Fatalf("messy bins: %d and %d deltas for %d quantiles", len(x), len(y), len(qs))
	}
	for i := range x {
		if x[i] != y[i] {
			t.Errorf("messy bins: %+v, clean %+v", x[i], y[i])
		}
	}

	// Millions and billions of samples: no overflow, and the interval shrinks to the
	// rounding of values into bins.
	big := []Bin{{Value: 1000, Count: 3_000_000}, {Value: 2000, Count: 4_000_000_000}, {Value: 3000, Count: 3_000_000}}
	for i, d := range BinnedDeltas(big, []Bin{{Value: 500, Count: 9_000_000}}, []float64{0.0001, 0.5, 0.9999}, 200, 0.95, rng) {
		if want := time.Duration(500 + 1000*i); d.Value != want || d.CILow != want || d.CIHigh != want {
			t.Errorf("q%g with billions of samples: %+v", d.Quantile, d)
		}
	}
	// Quantiles on a bin boundary must move between the two bins across resamples.
	half := []Bin{{Value: 1, Count: 1_000_000}, {Value: 2, Count: 1_000_000}}
	d := BinnedDeltas(half, []Bin{{Value: 0, Count: 1}}, []float64{0.5}, 400, 0.95, rng)[0]
	if d.Value != 1 || d.CILow != 1 || d.CIHigh != 2 {
		t.Errorf("median on a boundary: %+v", d)
	}
	if ds := BinnedDeltas([]Bin{{Value: 1, Count: math.MaxInt64}, {Value: 2, Count: math.MaxInt64}}, one, qs, 10, 0.95, rng); ds != nil {
		t.Errorf("more samples than an int64 holds: %+v", ds)
	}
}

// TestBinomialMatchesItsDistribution checks both samplers against the exact binomial
// probabilities by a chi-square test over cells of at least 500 expected draws.
func TestBinomialMatchesItsDistribution(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	const draws = 200_000
	for _, c := range []struct {
		n    int64
		part int64
		of   int64
	}{
		{n: 30, part: 1, of: 5},                 // np = 6: inversion
		{n: 50, part: 1, of: 5},                 // np = 10: BTRS at its lower limit
		{n: 1000, part: 13, of: 1000},           // np = 13
		{n: 40, part: 9, of: 10},                // p > 1/2, drawn through its complement (np = 4)
		{n: 2_000_000, part: 1, of: 2},          // large n, p = 1/2
		{n: 5_000_000, part: 7, of: 1_000_000},  // large n, small p (np = 35)
		{n: 3_000_000_000, part: 2, of: 3},      // beyond 32 bits
		{n: 1_000_000, part: 3, of: 10_000_000}, // np = 0.3
	} {
		p := float64(c.part) / float64(c.of)
		obs := map[int64]int{}
		var sum, sumSq float64
		for range draws {
			k := binomialShare(rng, c.n, c.part, c.of)
			if k < 0 || k > c.n {
				t.Fatalf("Binomial(%d, %g) drew %d", c.n, p, k)
			}
			obs[k]++
			sum += float64(k)
			sumSq += float64(k) * float64(k)
		}
		nf := float64(c.n)
		mean, sd := nf*p, math.Sqrt(nf*p*(1-p))
		pmf := func(k int64) float64 {
			kf := float64(k)
			return math.Exp(logFactorial(nf) - logFactorial(kf) - logFactorial(nf-kf) + kf*math.Log(p) + (nf-kf)*math.Log1p(-p))
		}
		// Cells: consecutive k from well below to well above the mean, merged until each
		// expects at least 500 draws; the tails go into the first and last cells.
		from := max(int64(0), int64(mean-8*sd)-1)
		to := min(c.n, int64(mean+8*sd)+1)
		var chi2 float64
		var cells int
		var expCell, prob float64
		var obsCell int
		below := 0
		for k, o := range obs {
			if k < from {
				below += o
			}
		}
		obsCell = below
		for k := from; k <= to; k++ {
			prob += pmf(k)
			expCell += pmf(k) * draws
			obsCell += obs[k]
			if expCell >= 500 || k == to {
				if k == to {
					for kk, o := range obs {
						if kk > to {
							obsCell += o
						}
					}
					expCell += (1 - prob) * draws
				}
				chi2 += (float64(obsCell) - expCell) * (float64(obsCell) - expCell) / expCell
				cells++
				expCell, obsCell = 0, 0
			}
		}
		df := float64(cells - 1)
		t.Logf("Binomial(%d, %g): chi-square %.1f over %d cells", c.n, p, chi2, cells)
		// Wilson–Hilferty: the chi-square quantile at z = 4 (p ≈ 3e-5).
		limit := df * math.Pow(1-2/(9*df)+4*math.Sqrt(2/(9*df)), 3)
		if chi2 > limit {
			t.Errorf("Binomial(%d, %g): chi-square %.1f over %d cells, limit %.1f", c.n, p, chi2, cells, limit)
		}
		m := sum / draws
		v := sumSq/draws - m*m
		if math.Abs(m-mean) > 5*sd/math.Sqrt(draws) || math.Abs(v/(sd*sd)-1) > 0.05 {
			t.Errorf("Binomial(%d, %g): mean %.3f variance %.3f, want %.3f and %.3f", c.n, p, m, v, mean, sd*sd)
		}
	}
}

// BenchmarkBinnedDeltas is one A/B estimate over 15,000 requests per path on a 1 µs grid:
// a node's share of a 30 s run at 500 req/s.
func BenchmarkBinnedDeltas(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	through, _ := binnedSample(rng, 15_000, 300_000, 1000)
	around, _ := binnedSample(rng, 15_000, 0, 1000)
	qs := []float64{0.5, 0.9, 0.99}
	for b.Loop() {
		BinnedDeltas(through, around, qs, 1000, 0.95, rng)
	}
}
