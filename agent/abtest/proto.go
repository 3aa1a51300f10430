package abtest

import (
	"fmt"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

// Method is the AddedLatency.method of A/B results.
const Method = "ab"

// AddedLatency converts the deltas for the agent API. A/B uses no eBPF, so its tier is NONE
// whatever the node allows.
func (r *Result) AddedLatency() *agentapi.AddedLatency {
	out := &agentapi.AddedLatency{Method: Method, Tier: agentapi.EbpfTier_EBPF_TIER_NONE}
	for _, d := range r.Deltas {
		out.Deltas = append(out.Deltas, &agentapi.Quantile{
			Quantile: d.Quantile,
			Value:    durationpb.New(d.Value),
			CiLow:    durationpb.New(d.CILow),
			CiHigh:   durationpb.New(d.CIHigh),
		})
	}
	return out
}

// Histograms returns the through and around histograms on the run's basis, for
// PodResult.through_sidecar and around_sidecar.
func (r *Result) Histograms() (through, around *agentapi.Histogram) {
	return HistogramProto(r.Through.Histogram(r.Config.Basis)), HistogramProto(r.Around.Histogram(r.Config.Basis))
}

// HistogramProto snapshots h (microsecond values). Trailing empty buckets are left out;
// HistogramFromProto restores them.
func HistogramProto(h *hdrhistogram.Histogram) *agentapi.Histogram {
	s := h.Export()
	counts := s.Counts
	n := len(counts)
	for n > 0 && counts[n-1] == 0 {
		n--
	}
	return &agentapi.Histogram{
		LowestTrackable:    s.LowestTrackableValue,
		HighestTrackable:   s.HighestTrackableValue,
		SignificantFigures: int32(s.SignificantFigures),
		Counts:             append([]int64(nil), counts[:n]...),
	}
}

// HistogramFromProto rebuilds a histogram from HistogramProto's snapshot.
func HistogramFromProto(p *agentapi.Histogram) (*hdrhistogram.Histogram, error) {
	if p.GetLowestTrackable() < 1 || p.GetHighestTrackable() < 2*p.GetLowestTrackable() ||
		p.GetSignificantFigures() < 1 || p.GetSignificantFigures() > 5 {
		return nil, fmt.Errorf("abtest: invalid histogram bounds %d..%d at %d figures",
			p.GetLowestTrackable(), p.GetHighestTrackable(), p.GetSignificantFigures())
	}
	full := len(hdrhistogram.New(p.LowestTrackable, p.HighestTrackable, int(p.SignificantFigures)).Export().Counts)
	if len(p.Counts) > full {
		return nil, fmt.Errorf("abtest: histogram has %d buckets, its bounds allow %d", len(p.Counts), full)
	}
	counts := make([]int64, full)
	for i, c := range p.Counts {
		if c < 0 {
			return nil, fmt.Errorf("abtest: negative count in bucket %d", i)
		}
		counts[i] = c
	}
	return hdrhistogram.Import(&hdrhistogram.Snapshot{
		LowestTrackableValue:  p.LowestTrackable,
		HighestTrackableValue: p.HighestTrackable,
		SignificantFigures:    int64(p.SignificantFigures),
		Counts:                counts,
	}), nil
}
