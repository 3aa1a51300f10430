// Package loadgen generates HTTP/1.1, HTTP/2 (h2c), gRPC and TCP echo load, open loop at a
// fixed rate or closed loop at the maximum rate, and records latency in HDR histograms.
//
// Open-loop latency runs from each request's intended send time, so a stalled server shows
// in the tail instead of silently slowing the generator down (coordinated omission); the
// service time, from the actual send, is kept beside it.
//
// Closed-loop HTTP/1.1, the maximum-rate path, runs on epoll event loops over raw sockets,
// as wrk does; every other mode runs a goroutine per connection.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
)

// Protocol is the wire protocol of a load.
type Protocol int

const (
	ProtocolUnspecified Protocol = iota
	// HTTP1 is HTTP/1.1 over keep-alive connections, one per connection worker.
	HTTP1
	// HTTP2 is HTTP/2 over cleartext with prior knowledge (h2c), one connection per worker.
	HTTP2
	// GRPC calls a unary method: the standard health Check unless Path names the echo method.
	GRPC
	// TCP writes the body and reads the same number of bytes back.
	TCP
)

func (p Protocol) String() string {
	switch p {
	case HTTP1:
		return "http1"
	case HTTP2:
		return "http2"
	case GRPC:
		return "grpc"
	case TCP:
		return "tcp"
	}
	return fmt.Sprintf("protocol(%d)", int(p))
}

// ParseProtocol accepts the names String returns.
func ParseProtocol(s string) (Protocol, error) {
	for _, p := range []Protocol{HTTP1, HTTP2, GRPC, TCP} {
		if strings.EqualFold(s, p.String()) {
			return p, nil
		}
	}
	return ProtocolUnspecified, fmt.Errorf("unknown protocol %q (want http1, http2, grpc or tcp)", s)
}

// gRPC methods the generator can call; Options.Path picks one.
const (
	GRPCHealthMethod = "/grpc.health.v1.Health/Check"
	GRPCEchoMethod   = "/meshloadgen.echo.v1.Echo/Echo"
)

// Limits that keep a single agent from being turned into a flood source or from exhausting
// its own node. The agent's API is reachable by anyone allowed to port-forward to it.
const (
	MaxRate        = 100000 // requests per second
	MaxConnections = 1024
	MaxDuration    = time.Hour
	MaxTimeout     = histogram.MaxValue // a slower answer would not fit the histograms
	MaxBodyBytes   = 1 << 20
	MaxHeaders     = 64
	MaxHeaderBytes = 64 << 10 // names plus values
	MaxPathBytes   = 8 << 10
)

// Defaults applied by Run to zero fields.
const (
	DefaultConnections = 8
	DefaultTimeout     = 10 * time.Second
	DefaultTCPBytes    = 64 // TCP echo payload when Body is empty
	// ProgressInterval is how often Options.Progress is called.
	ProgressInterval = time.Second
	// RateTolerance is how far below the asked rate a run may fall before Result.Saturated.
	RateTolerance = 0.01
)

// DialFunc opens a connection; Options.Dial lets the caller open them from another network
// namespace (around a sidecar) while every protocol still uses its own framing on top.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Options describe one load.
type Options struct {
	// Target is host:port.
	Target   string
	Protocol Protocol
	// Rate is requests per second across all connections; 0 runs closed loop at the maximum rate.
	Rate float64
	// Connections is the number of connection workers (each owns one connection).
	Connections int
	// Duration includes Warmup.
	Duration time.Duration
	// Warmup is excluded from histograms and counts.
	Warmup time.Duration
	// Method defaults to GET (POST when Body is set) for HTTP.
	Method string
	// Path defaults to "/" for HTTP; for gRPC it is GRPCHealthMethod (default) or GRPCEchoMethod.
	Path string
	// Headers are HTTP headers, or gRPC metadata. A "Host" header overrides the HTTP authority.
	Headers map[string]string
	Body    []byte
	// Timeout bounds each request (HTTP/1.1 and TCP: to between 0.9 and 1 × Timeout);
	// defaults to DefaultTimeout.
	Timeout time.Duration
	// Dial opens every connection of every protocol; nil dials with net.Dialer.
	Dial DialFunc
	// Progress, when set, is called about every ProgressInterval from one goroutine; it must
	// return quickly, as Run waits for it before returning.
	Progress func(Progress)
}

// ErrInvalidOptions wraps every rejection by Validate.
var ErrInvalidOptions = errors.New("invalid load options")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidOptions, fmt.Sprintf(format, args...))
}

// withDefaults returns o with zero fields filled in.
func (o Options) withDefaults() Options {
	if o.Connections == 0 {
		o.Connections = DefaultConnections
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	switch o.Protocol {
	case HTTP1, HTTP2:
		if o.Method == "" {
			o.Method = "GET"
			if len(o.Body) > 0 {
				o.Method = "POST"
			}
		}
		if o.Path == "" {
			o.Path = "/"
		}
	case GRPC:
		if o.Path == "" {
			o.Path = GRPCHealthMethod
		}
	case TCP:
		if len(o.Body) == 0 {
			o.Body = make([]byte, DefaultTCPBytes)
			for i := range o.Body {
				o.Body[i] = byte('a' + i%26)
			}
		}
	}
	if o.Dial == nil {
		d := &net.Dialer{Timeout: o.Timeout}
		o.Dial = d.DialContext
	}
	return o
}

// Validate reports the first reason the options would be refused; Run calls it after
// applying defaults.
func (o Options) Validate() error {
	return o.withDefaults().validate()
}

func (o Options) validate() error {
	if _, _, err := net.SplitHostPort(o.Target); err != nil || o.Target == "" {
		return invalid("target %q is not host:port", o.Target)
	}
	switch o.Protocol {
	case HTTP1, HTTP2, GRPC, TCP:
	default:
		return invalid("protocol %v is not supported", o.Protocol)
	}
	if math.IsNaN(o.Rate) || math.IsInf(o.Rate, 0) || o.Rate < 0 {
		return invalid("rate %v must be a finite number ≥ 0", o.Rate)
	}
	if o.Rate > MaxRate {
		return invalid("rate %v/s exceeds the limit of %d/s", o.Rate, MaxRate)
	}
	if o.Connections < 1 || o.Connections > MaxConnections {
		return invalid("connections %d must be between 1 and %d", o.Connections, MaxConnections)
	}
	if o.Duration <= 0 || o.Duration > MaxDuration {
		return invalid("duration %v must be > 0 and ≤ %v", o.Duration, MaxDuration)
	}
	if o.Warmup < 0 || o.Warmup >= o.Duration {
		return invalid("warm-up %v must be ≥ 0 and shorter than the duration %v", o.Warmup, o.Duration)
	}
	if o.Rate > 0 && o.Rate*(o.Duration-o.Warmup).Seconds() < 1 {
		return invalid("rate %v/s over the measured %v sends no request", o.Rate, o.Duration-o.Warmup)
	}
	if o.Timeout < 0 || o.Timeout > MaxTimeout {
		return invalid("timeout %v must be > 0 and ≤ %v", o.Timeout, MaxTimeout)
	}
	if len(o.Body) > MaxBodyBytes {
		return invalid("body of %d bytes exceeds the limit of %d", len(o.Body), MaxBodyBytes)
	}
	if len(o.Headers) > MaxHeaders {
		return invalid("%d headers exceed the limit of %d", len(o.Headers), MaxHeaders)
	}
	size := 0
	for k, v := range o.Headers {
		size += len(k) + len(v)
		if !isToken(k) {
			return invalid("header name %q is not an HTTP token", k)
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			return invalid("header %q has a line break or NUL in its value", k)
		}
	}
	if size > MaxHeaderBytes {
		return invalid("headers of %d bytes exceed the limit of %d", size, MaxHeaderBytes)
	}
	if len(o.Path) > MaxPathBytes {
		return invalid("path of %d bytes exceeds the limit of %d", len(o.Path), MaxPathBytes)
	}
	switch o.Protocol {
	case HTTP1, HTTP2:
		if !isToken(o.Method) {
			return invalid("method %q is not an HTTP token", o.Method)
		}
		if !strings.HasPrefix(o.Path, "/") || strings.ContainsAny(o.Path, " \t\r\n\x00") {
			return invalid("path %q must start with / and hold no spaces or line breaks", o.Path)
		}
	case GRPC:
		if o.Path != GRPCHealthMethod && o.Path != GRPCEchoMethod {
			return invalid("gRPC method %q is not one of %s, %s", o.Path, GRPCHealthMethod, GRPCEchoMethod)
		}
	}
	return nil
}

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}
