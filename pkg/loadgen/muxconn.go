package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen/echopb"
)

// h2Client sends HTTP/2 requests with prior knowledge over one connection it dialled
// itself, so Connections means TCP connections for HTTP/2 too and the Dial hook is used.
type h2Client struct {
	o   *Options
	t   *http2.Transport
	url *url.URL
	hdr http.Header
	buf []byte

	mu      sync.Mutex
	cc      *http2.ClientConn
	aborted bool
}

func newH2Client(o *Options) *h2Client {
	hdr := make(http.Header, len(o.Headers))
	host := o.Target
	for k, v := range o.Headers {
		if equalFold(k, "host") {
			host = v
			continue
		}
		hdr.Set(k, v)
	}
	return &h2Client{
		o: o,
		t: &http2.Transport{
			AllowHTTP:          true,
			DisableCompression: true,
		},
		url: &url.URL{Scheme: "http", Host: host, Path: o.Path},
		hdr: hdr,
		buf: make([]byte, 32<<10),
	}
}

func (h *h2Client) conn(ctx context.Context) (*http2.ClientConn, error) {
	if h.cc != nil && h.cc.CanTakeNewRequest() {
		return h.cc, nil
	}
	h.drop()
	dctx, cancel := context.WithTimeout(ctx, h.o.Timeout)
	c, err := h.o.Dial(dctx, "tcp", h.o.Target)
	cancel()
	if err != nil {
		return nil, kindErr(ErrConnect, err)
	}
	// The preface and SETTINGS exchange happen here; bound them like a request.
	_ = c.SetDeadline(time.Now().Add(h.o.Timeout))
	cc, err := h.t.NewClientConn(c)
	_ = c.SetDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, kindErr(ErrConnect, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.aborted {
		cc.Close()
		return nil, errAborted
	}
	h.cc = cc
	return cc, nil
}

func (h *h2Client) connect(ctx context.Context) error {
	_, err := h.conn(ctx)
	return err
}

func (h *h2Client) do(ctx context.Context) error {
	cc, err := h.conn(ctx)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, h.o.Timeout)
	defer cancel()
	req := (&http.Request{
		Method:     h.o.Method,
		URL:        h.url,
		Proto:      "HTTP/2.0",
		ProtoMajor: 2,
		Header:     h.hdr,
		Host:       h.url.Host,
	}).WithContext(rctx)
	if len(h.o.Body) > 0 {
		req.Body = io.NopCloser(bytes.NewReader(h.o.Body))
		req.ContentLength = int64(len(h.o.Body))
	}
	resp, err := cc.RoundTrip(req)
	if err != nil {
		if !cc.CanTakeNewRequest() {
			h.drop()
		}
		return kindErr(ErrIO, err)
	}
	_, err = io.CopyBuffer(io.Discard, struct{ io.Reader }{resp.Body}, h.buf)
	resp.Body.Close()
	if err != nil {
		return kindErr(ErrIO, err)
	}
	if resp.StatusCode >= 400 {
		return kindErr(ErrStatus, fmt.Errorf("HTTP %d", resp.StatusCode))
	}
	return nil
}

func (h *h2Client) drop() {
	h.mu.Lock()
	if h.cc != nil {
		h.cc.Close()
		h.cc = nil
	}
	h.mu.Unlock()
}

func (h *h2Client) abort() {
	h.mu.Lock()
	h.aborted = true
	if h.cc != nil {
		h.cc.Close()
	}
	h.mu.Unlock()
}

func (h *h2Client) close() { h.drop() }

// grpcClient calls one unary method over its own ClientConn.
type grpcClient struct {
	o      *Options
	conn   *grpc.ClientConn
	md     metadata.MD
	health healthpb.HealthClient
	echo   echopb.EchoClient
	hreq   *healthpb.HealthCheckRequest
	ereq   *echopb.EchoRequest
}

func newGRPCClient(o *Options) (*grpcClient, error) {
	dial := o.Dial
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		}),
	}
	for k, v := range o.Headers {
		if equalFold(k, "host") {
			opts = append(opts, grpc.WithAuthority(v))
		}
	}
	// passthrough: the target is an address for the Dial hook, not a name to resolve.
	conn, err := grpc.NewClient("passthrough:///"+o.Target, opts...)
	if err != nil {
		return nil, kindErr(ErrConnect, err)
	}
	md := metadata.MD{}
	for k, v := range o.Headers {
		if !equalFold(k, "host") {
			md.Append(k, v)
		}
	}
	return &grpcClient{
		o:      o,
		conn:   conn,
		md:     md,
		health: healthpb.NewHealthClient(conn),
		echo:   echopb.NewEchoClient(conn),
		hreq:   &healthpb.HealthCheckRequest{},
		ereq:   &echopb.EchoRequest{Payload: o.Body},
	}, nil
}

func (g *grpcClient) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, g.o.Timeout)
	defer cancel()
	g.conn.Connect()
	for {
		s := g.conn.GetState()
		switch s {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			return kindErr(ErrConnect, fmt.Errorf("gRPC connection to %s is %v", g.o.Target, s))
		}
		if !g.conn.WaitForStateChange(ctx, s) {
			return kindErr(ErrConnect, fmt.Errorf("gRPC connection to %s: %w", g.o.Target, ctx.Err()))
		}
	}
}

var errEchoMismatch = errors.New("echo payload differs from what was sent")

func (g *grpcClient) do(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, g.o.Timeout)
	defer cancel()
	if len(g.md) > 0 {
		ctx = metadata.NewOutgoingContext(ctx, g.md)
	}
	if g.o.Path == GRPCEchoMethod {
		resp, err := g.echo.Echo(ctx, g.ereq)
		if err != nil {
			return err
		}
		if !bytes.Equal(resp.GetPayload(), g.ereq.Payload) {
			return kindErr(ErrProtocol, errEchoMismatch)
		}
		return nil
	}
	resp, err := g.health.Check(ctx, g.hreq)
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return kindErr(ErrStatus, fmt.Errorf("health %v", resp.GetStatus()))
	}
	return nil
}

func (g *grpcClient) abort() { g.conn.Close() }
func (g *grpcClient) close() { g.conn.Close() }
