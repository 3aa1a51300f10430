package echopb

import "context"

// Server answers Echo with the request's payload.
type Server struct {
	UnimplementedEchoServer
}

// Echo returns the payload unchanged; the response shares the request's bytes because
// nothing mutates them after the handler returns.
func (Server) Echo(_ context.Context, req *EchoRequest) (*EchoResponse, error) {
	return &EchoResponse{Payload: req.GetPayload()}, nil
}
