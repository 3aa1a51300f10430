package bootstrap

import (
	"cmp"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"time"
)

// Bin is Count samples all equal to Value, as a histogram bucket holds them.
type Bin struct {
	Value int64
	Count int64
}

// maxBinnedTotal bounds the samples per side: the binomial draws work in float64, exact for
// integers below 2^53, and the sums must not overflow.
const maxBinnedTotal = 1 << 52

// BinnedDeltas is Deltas for data given as bins (a histogram's non-empty buckets): the same
// nearest-rank quantiles from all samples, and the same percentile bootstrap, resampling each
// path's n samples with replacement independently.
//
// A resample of n values drawn uniformly from the data is a multinomial draw of n over the
// bins with probabilities Count/n, and only the bins holding the wanted order statistics
// matter. The multinomial is drawn exactly, as a tree of binomial splits: the left half of a
// range of bins receives Binomial(m, its share of the range's count) of the range's m draws
// and the right half the rest, which is the exact conditional law. A split is only drawn
// where a wanted rank falls, so a resample costs O(len(qs)·log k) binomial draws for k bins,
// independent of n. No approximation is involved (unlike a Poisson bootstrap, the resample
// keeps exactly n values): the result has the same distribution as Deltas on the expanded
// values, up to float64 rounding of the split probabilities; only the random stream differs.
//
// Bins with Count ≤ 0 are ignored; bins need not be sorted. Either side being empty, or
// holding 2^52 samples or more, gives nil: there is no difference to estimate.
func BinnedDeltas(through, around []Bin, qs []float64, resamples int, confidence float64, rng *rand.Rand) []Delta {
	t, okT := newBinned(through)
	a, okA := newBinned(around)
	if !okT || !okA {
		return nil
	}
	if resamples < 1 {
		panic("bootstrap: resamples must be at least 1")
	}
	order := ascending(qs)
	rt, ra := t.ranks(qs, order), a.ranks(qs, order)

	deltas := make([][]int64, len(qs))
	for i := range deltas {
		deltas[i] = make([]int64, resamples)
	}
	qt := make([]int64, len(qs))
	qa := make([]int64, len(qs))
	for r := range resamples {
		t.resample(rng, rt, qt)
		a.resample(rng, ra, qa)
		for j, i := range order {
			deltas[i][r] = qt[j] - qa[j]
		}
	}

	out := make([]Delta, len(qs))
	for j, i := range order {
		lo, hi := percentileInterval(deltas[i], confidence)
		tv, av := t.at(rt[j]), a.at(ra[j])
		out[i] = Delta{
			Quantile: qs[i],
			Value:    time.Duration(tv - av),
			CILow:    time.Duration(lo),
			CIHigh:   time.Duration(hi),
			Through:  time.Duration(tv),
			Around:   time.Duration(av),
		}
	}
	return out
}

// binned is one side's data: distinct values ascending, and cum[i] samples below values[i]
// (cum[len(values)] = n).
type binned struct {
	values []int64
	cum    []int64
	n      int64
}

func newBinned(bins []Bin) (binned, bool) {
	byValue := func(x, y Bin) int { return cmp.Compare(x.Value, y.Value) }
	if !slices.IsSortedFunc(bins, byValue) {
		bins = slices.Clone(bins)
		slices.SortFunc(bins, byValue)
	}
	b := binned{values: make([]int64, 0, len(bins)), cum: make([]int64, 1, len(bins)+1)}
	for _, x := range bins {
		if x.Count <= 0 {
			continue
		}
		if x.Count >= maxBinnedTotal-b.n {
			return binned{}, false
		}
		b.n += x.Count
		if l := len(b.values); l > 0 && b.values[l-1] == x.Value {
			b.cum[l] = b.n
			continue
		}
		b.values = append(b.values, x.Value)
		b.cum = append(b.cum, b.n)
	}
	return b, b.n > 0
}

// ranks lists the nearest-rank positions (1-based) of qs taken in order.
func (b *binned) ranks(qs []float64, order []int) []int64 {
	r := make([]int64, len(order))
	for j, i := range order {
		r[j] = rank(qs[i], b.n)
	}
	return r
}

// at is the value of the sample at 1-based rank r.
func (b *binned) at(r int64) int64 {
	i := sort.Search(len(b.values), func(i int) bool { return b.cum[i+1] >= r })
	return b.values[i]
}

// resample writes into out the values at ascending ranks of one multinomial resample.
func (b *binned) resample(rng *rand.Rand, ranks, out []int64) {
	b.split(rng, 0, len(b.values), b.n, 0, ranks, out)
}

// split places ranks, all within (offset, offset+m], among bins [lo, hi), which received m
// of the resample's draws, the resample's earlier bins holding offset.
func (b *binned) split(rng *rand.Rand, lo, hi int, m, offset int64, ranks, out []int64) {
	for len(ranks) > 0 {
		if hi-lo == 1 {
			for i := range out {
				out[i] = b.values[lo]
			}
			return
		}
		mid := lo + (hi-lo)/2
		x := binomialShare(rng, m, b.cum[mid]-b.cum[lo], b.cum[hi]-b.cum[lo])
		j := 0
		for j < len(ranks) && ranks[j] <= offset+x {
			j++
		}
		b.split(rng, lo, mid, x, offset, ranks[:j], out[:j])
		lo, m, offset, ranks, out = mid, m-x, offset+x, ranks[j:], out[j:]
	}
}

// binomialShare draws Binomial(n, part/whole), 0 ≤ part ≤ whole, whole > 0. The smaller of
// the two shares is drawn so the samplers below only see p ≤ 1/2.
func binomialShare(rng *rand.Rand, n, part, whole int64) int64 {
	switch {
	case n == 0 || part == 0:
		return 0
	case part == whole:
		return n
	case part > whole-part:
		return n - binomial(rng, n, float64(whole-part)/float64(whole))
	}
	return binomial(rng, n, float64(part)/float64(whole))
}

// binomial draws Binomial(n, p) exactly for 0 < p ≤ 1/2: by inversion when the mean is
// small (few steps), else by Hörmann's transformed rejection (BTRS), whose cost does not
// grow with n.
func binomial(rng *rand.Rand, n int64, p float64) int64 {
	if float64(n)*p < 10 {
		return binomialInversion(rng, n, p)
	}
	return binomialBTRS(rng, n, p)
}

// binomialInversion counts the successes among n Bernoulli(p) trials by jumping from one
// success to the next: the gaps are Geometric(p), drawn by inversion as ⌈ln U / ln(1−p)⌉.
// Expected draws: np + 1.
func binomialInversion(rng *rand.Rand, n int64, p float64) int64 {
	lq := math.Log1p(-p)
	var trials float64
	var k int64
	for {
		u := rng.Float64()
		if u == 0 {
			continue // ln 0; U must lie in (0, 1)
		}
		trials += math.Ceil(math.Log(u) / lq)
		if trials > float64(n) {
			return k
		}
		k++
	}
}

// binomialBTRS is algorithm BTRS of W. Hörmann, "The generation of binomial random
// variates", J. Statist. Comput. Simul. 46 (1993): transformed rejection with a squeeze,
// valid for np ≥ 10 and p ≤ 1/2. It accepts about 80% of candidates, most of them by the
// squeeze without evaluating the density; the exact test compares with the binomial
// probability ratio f(k)/f(m) at the mode m, through log-factorials.
func binomialBTRS(rng *rand.Rand, n int64, p float64) int64 {
	nf := float64(n)
	spq := math.Sqrt(nf * p * (1 - p))
	b := 1.15 + 2.53*spq
	a := -0.0873 + 0.0248*b + 0.01*p
	c := nf*p + 0.5
	vr := 0.92 - 4.2/b
	var alpha, lpq, m, h float64
	ready := false
	for {
		u := rng.Float64() - 0.5
		v := rng.Float64()
		us := 0.5 - math.Abs(u)
		k := math.Floor((2*a/us+b)*u + c)
		if us >= 0.07 && v <= vr {
			return int64(k)
		}
		if k < 0 || k > nf {
			continue
		}
		if !ready {
			alpha = (2.83 + 5.1/b) * spq
			lpq = math.Log(p / (1 - p))
			m = math.Floor((nf + 1) * p)
			h = logFactorial(m) + logFactorial(nf-m)
			ready = true
		}
		v *= alpha / (a/(us*us) + b)
		if math.Log(v) <= h-logFactorial(k)-logFactorial(nf-k)+(k-m)*lpq {
			return int64(k)
		}
	}
}

func logFactorial(x float64) float64 {
	l, _ := math.Lgamma(x + 1)
	return l
}

// ascending lists qs's indices in ascending order of quantile.
func ascending(qs []float64) []int {
	order := make([]int, len(qs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return qs[order[i]] < qs[order[j]] })
	return order
}

// percentileInterval sorts d and returns its central confidence interval by percentiles.
func percentileInterval(d []int64, confidence float64) (lo, hi int64) {
	slices.Sort(d)
	n := len(d)
	alpha := 1 - confidence
	l := int(math.Floor(alpha / 2 * float64(n)))
	h := int(math.Ceil((1-alpha/2)*float64(n))) - 1
	l = min(max(l, 0), n-1)
	h = min(max(h, l), n-1)
	return d[l], d[h]
}
