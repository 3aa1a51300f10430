package loadgen

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

func TestFromSpec(t *testing.T) {
	spec := &agentapi.LoadSpec{
		Protocol: agentapi.Protocol_PROTOCOL_GRPC, Rate: 100, Connections: 4,
		Duration: durationpb.New(2 * time.Second), Warmup: durationpb.New(time.Second),
		Path: GRPCEchoMethod, Headers: map[string]string{"a": "b"}, Body: []byte("x"),
	}
	o, err := FromSpec(spec, "127.0.0.1:9")
	if err != nil {
		t.Fatal(err)
	}
	if o.Protocol != GRPC || o.Rate != 100 || o.Connections != 4 || o.Duration != 2*time.Second || o.Warmup != time.Second || o.Path != GRPCEchoMethod || o.Headers["a"] != "b" {
		t.Errorf("options %+v", o)
	}
	spec.Connections = 1 << 31
	if _, err := FromSpec(spec, "127.0.0.1:9"); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("2^31 connections: %v", err)
	}
	spec.Connections, spec.Protocol = 1, 42
	if _, err := FromSpec(spec, "127.0.0.1:9"); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("unknown protocol: %v", err)
	}
}
