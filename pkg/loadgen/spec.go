package loadgen

import (
	"maps"
	"slices"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

// FromSpec builds the options for one target from the API's LoadSpec; an unspecified
// protocol means HTTP/1.1. The result still goes through Validate in Run.
func FromSpec(spec *agentapi.LoadSpec, target string) (Options, error) {
	o := Options{
		Target:      target,
		Rate:        spec.GetRate(),
		Connections: int(min(spec.GetConnections(), MaxConnections+1)),
		Duration:    spec.GetDuration().AsDuration(),
		Warmup:      spec.GetWarmup().AsDuration(),
		Method:      spec.GetMethod(),
		Path:        spec.GetPath(),
		Headers:     maps.Clone(spec.GetHeaders()),
		Body:        slices.Clone(spec.GetBody()),
	}
	switch spec.GetProtocol() {
	case agentapi.Protocol_PROTOCOL_UNSPECIFIED, agentapi.Protocol_PROTOCOL_HTTP1:
		o.Protocol = HTTP1
	case agentapi.Protocol_PROTOCOL_HTTP2:
		o.Protocol = HTTP2
	case agentapi.Protocol_PROTOCOL_GRPC:
		o.Protocol = GRPC
	case agentapi.Protocol_PROTOCOL_TCP:
		o.Protocol = TCP
	default:
		return o, invalid("protocol %v is not supported", spec.GetProtocol())
	}
	return o, o.Validate()
}

// ProgressProto converts a progress report for the Run stream.
func ProgressProto(p Progress) *agentapi.Progress {
	return &agentapi.Progress{
		Elapsed:      durationpb.New(p.Elapsed),
		Requests:     p.Requests,
		Errors:       p.Errors,
		AchievedRate: p.AchievedRate,
	}
}
