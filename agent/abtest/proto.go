package abtest

import (
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
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
	return histogram.ToProto(r.Through.Histogram(r.Config.Basis)), histogram.ToProto(r.Around.Histogram(r.Config.Basis))
}
