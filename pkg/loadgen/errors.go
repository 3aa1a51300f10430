package loadgen

import (
	"context"
	"errors"
	"net"
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorKind groups failed requests in Result.ErrorsByKind.
type ErrorKind string

const (
	// ErrConnect: the connection could not be opened (refused, unreachable, dial timeout).
	ErrConnect ErrorKind = "connect"
	// ErrTimeout: the request took longer than Options.Timeout.
	ErrTimeout ErrorKind = "timeout"
	// ErrIO: the connection broke mid-request (reset, closed by the server).
	ErrIO ErrorKind = "io"
	// ErrStatus: the server answered with an error (HTTP ≥ 400, gRPC non-OK, NOT_SERVING).
	ErrStatus ErrorKind = "status"
	// ErrProtocol: the answer was malformed (bad HTTP framing, echo mismatch).
	ErrProtocol ErrorKind = "protocol"
)

var errorKinds = []ErrorKind{ErrConnect, ErrTimeout, ErrIO, ErrStatus, ErrProtocol}

func kindIndex(k ErrorKind) int {
	for i, e := range errorKinds {
		if e == k {
			return i
		}
	}
	return int(len(errorKinds) - 1)
}

// reqError carries the kind a client already knows.
type reqError struct {
	kind ErrorKind
	err  error
	// first: the connection failed before any byte of the response; retry: the request is
	// safe to send again on a new connection.
	first, retry bool
}

func (e *reqError) Error() string { return string(e.kind) + ": " + e.err.Error() }
func (e *reqError) Unwrap() error { return e.err }

func kindErr(kind ErrorKind, err error) error { return &reqError{kind: kind, err: err} }

// classify names the kind of a request failure that the client did not label itself.
func classify(err error) ErrorKind {
	var re *reqError
	if errors.As(err, &re) {
		if re.kind == ErrIO && isTimeout(re.err) {
			return ErrTimeout
		}
		return re.kind
	}
	if isTimeout(err) {
		return ErrTimeout
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.OK {
		switch s.Code() {
		case codes.DeadlineExceeded:
			return ErrTimeout
		case codes.Unavailable:
			return ErrIO
		}
		return ErrStatus
	}
	return ErrIO
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
