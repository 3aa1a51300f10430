// Package bootstrap puts confidence intervals on the difference of two latency distributions'
// quantiles by resampling, so that "the sidecar adds X" always comes with how sure we are.
package bootstrap

import (
	"math"
	"math/rand/v2"
	"time"
)

// Deltas computes, for each quantile, through − around from all samples, and a
// percentile confidence interval from resampling each path's samples with replacement,
// independently (the paths' requests are different requests, not pairs).
//
// Both inputs are sorted. Resampling n values from a sorted slice is the same as drawing how
// often each index is picked; the resample's order statistics then come from one cumulative
// pass over those counts, which costs O(n) per resample instead of a sort.
func Deltas(through, around []int64, qs []float64, resamples int, confidence float64, rng *rand.Rand) []Delta {
	order := ascending(qs)

	deltas := make([][]int64, len(qs))
	for i := range deltas {
		deltas[i] = make([]int64, resamples)
	}
	countsT := make([]int32, len(through))
	countsA := make([]int32, len(around))
	qt := make([]int64, len(qs))
	qa := make([]int64, len(qs))
	for r := range resamples {
		resampleQuantiles(through, qs, order, rng, countsT, qt)
		resampleQuantiles(around, qs, order, rng, countsA, qa)
		for i := range qs {
			deltas[i][r] = qt[i] - qa[i]
		}
	}

	out := make([]Delta, len(qs))
	for i, q := range qs {
		lo, hi := percentileInterval(deltas[i], confidence)
		t, a := QuantileOfSorted(through, q), QuantileOfSorted(around, q)
		out[i] = Delta{
			Quantile: q,
			Value:    time.Duration(t - a),
			CILow:    time.Duration(lo),
			CIHigh:   time.Duration(hi),
			Through:  time.Duration(t),
			Around:   time.Duration(a),
		}
	}
	return out
}

// Delta is one quantile's difference with its bootstrap confidence interval.
type Delta struct {
	Quantile float64
	// Value is through − around at this quantile, from all samples.
	Value, CILow, CIHigh time.Duration
	// The two distributions' own quantiles.
	Through, Around time.Duration
}

// QuantileOfSorted is the nearest-rank quantile: the smallest sample with at least q of the
// samples at or below it.
func QuantileOfSorted(s []int64, q float64) int64 {
	return s[rank(q, int64(len(s)))-1]
}

// rank is the 1-based position of the nearest-rank q quantile among n samples.
func rank(q float64, n int64) int64 {
	return min(max(int64(math.Ceil(q*float64(n))), 1), n)
}

// resampleQuantiles draws len(s) indices with replacement and writes the nearest-rank
// quantiles of that resample into out (indexed like qs; order lists qs ascending).
func resampleQuantiles(s []int64, qs []float64, order []int, rng *rand.Rand, counts []int32, out []int64) {
	n := len(s)
	clear(counts)
	for range n {
		counts[rng.IntN(n)]++
	}
	cum := 0
	j := 0
	for i, c := range counts {
		cum += int(c)
		for j < len(order) {
			if int64(cum) < rank(qs[order[j]], int64(n)) {
				break
			}
			out[order[j]] = s[i]
			j++
		}
		if j == len(order) {
			return
		}
	}
}
