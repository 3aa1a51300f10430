// Package histogram holds the latency histogram every node records into and the plugin
// merges: HdrHistogram with one fixed microsecond layout, and its wire form in the agent API.
package histogram

import (
	"errors"
	"fmt"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

// Histogram layout shared by every node, so merged histograms keep every bucket exact.
// Values are microseconds, as agentapi.Histogram specifies: 1 µs steps up to 2 ms, then
// three significant figures up to MaxTimeout.
const (
	Lowest  = 1
	Highest = int64(MaxValue / time.Microsecond)
	SigFigs = 3
)

// MaxValue is the largest latency the layout holds: the longest request timeout a load may set.
const MaxValue = 60 * time.Second

// New returns an empty histogram with the shared layout.
func New() *hdrhistogram.Histogram {
	return hdrhistogram.New(Lowest, Highest, SigFigs)
}

// Record records d in microseconds, rounded to nearest, clamped into the range so
// an over-long request still counts in the tail instead of vanishing.
func Record(h *hdrhistogram.Histogram, d time.Duration) {
	us := (int64(d) + 500) / 1000
	if us < 0 {
		us = 0
	}
	if us > Highest {
		us = Highest
	}
	_ = h.RecordValue(us)
}

// Quantile returns the value at quantile q (0..1) of h as a duration.
func Quantile(h *hdrhistogram.Histogram, q float64) time.Duration {
	if h == nil || h.TotalCount() == 0 {
		return 0
	}
	return time.Duration(h.ValueAtQuantile(q*100)) * time.Microsecond
}

// Bounds on histograms accepted from the wire: enough for any layout a node would use,
// small enough that a hostile message cannot make us allocate gigabytes.
const (
	maxWireSigFigs = 5
	maxWireCounts  = 1 << 22
)

// ToProto snapshots h; runs of empty buckets are run-length encoded as negative counts (−n
// stands for n zero buckets), the convention of HdrHistogram's V2 encoding.
func ToProto(h *hdrhistogram.Histogram) *agentapi.Histogram {
	if h == nil {
		return nil
	}
	s := h.Export()
	counts := make([]int64, 0, 64)
	zeros := int64(0)
	for _, c := range s.Counts {
		if c == 0 {
			zeros++
			continue
		}
		if zeros > 0 {
			counts = append(counts, -zeros)
			zeros = 0
		}
		counts = append(counts, c)
	}
	if zeros > 0 {
		counts = append(counts, -zeros)
	}
	return &agentapi.Histogram{
		LowestTrackable:    s.LowestTrackableValue,
		HighestTrackable:   s.HighestTrackableValue,
		SignificantFigures: int32(s.SignificantFigures),
		Counts:             counts,
	}
}

// FromProto rebuilds a histogram from ToProto's message, refusing malformed input rather
// than panicking inside the HDR library.
func FromProto(p *agentapi.Histogram) (*hdrhistogram.Histogram, error) {
	if p == nil {
		return nil, errors.New("histogram: nil message")
	}
	lo, hi, sf := p.GetLowestTrackable(), p.GetHighestTrackable(), p.GetSignificantFigures()
	if sf < 1 || sf > maxWireSigFigs {
		return nil, fmt.Errorf("histogram: %d significant figures, want 1..%d", sf, maxWireSigFigs)
	}
	if lo < 1 || hi < 2*lo {
		return nil, fmt.Errorf("histogram: range %d..%d is invalid", lo, hi)
	}
	// The layout's bucket count is what Import indexes; compute it from an empty histogram.
	want := len(hdrhistogram.New(lo, hi, int(sf)).Export().Counts)
	if want > maxWireCounts {
		return nil, fmt.Errorf("histogram: layout %d..%d/%d needs %d buckets, over %d", lo, hi, sf, want, maxWireCounts)
	}
	counts := make([]int64, 0, want)
	for _, c := range p.GetCounts() {
		if c < 0 {
			if int64(len(counts))-c > int64(want) {
				return nil, fmt.Errorf("histogram: counts overflow the %d buckets of the layout", want)
			}
			counts = counts[:len(counts)-int(c)]
			continue
		}
		if len(counts) >= want {
			return nil, fmt.Errorf("histogram: counts overflow the %d buckets of the layout", want)
		}
		counts = append(counts, c)
	}
	// Trailing empty buckets may be left out.
	counts = counts[:want]
	return hdrhistogram.Import(&hdrhistogram.Snapshot{
		LowestTrackableValue:  lo,
		HighestTrackableValue: hi,
		SignificantFigures:    int64(sf),
		Counts:                counts,
	}), nil
}

// Merge adds every histogram into a new one with the shared layout. Bucket for bucket when
// the inputs share that layout, so quantiles, the tail and the maximum are those of the
// pooled values; it reports how many values fell outside the range (none with the layout).
func Merge(hs ...*hdrhistogram.Histogram) (*hdrhistogram.Histogram, int64) {
	out := New()
	var dropped int64
	for _, h := range hs {
		if h != nil {
			dropped += out.Merge(h)
		}
	}
	return out, dropped
}

// MergeProto merges histograms received from several nodes.
func MergeProto(ps ...*agentapi.Histogram) (*agentapi.Histogram, error) {
	hs := make([]*hdrhistogram.Histogram, 0, len(ps))
	for i, p := range ps {
		h, err := FromProto(p)
		if err != nil {
			return nil, fmt.Errorf("histogram %d: %w", i, err)
		}
		hs = append(hs, h)
	}
	m, dropped := Merge(hs...)
	if dropped > 0 {
		return nil, fmt.Errorf("histogram: %d values outside %d..%d µs", dropped, Lowest, Highest)
	}
	return ToProto(m), nil
}
