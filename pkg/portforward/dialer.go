// Package portforward turns the API server's pods/portforward subresource into net.Conn
// values, so a gRPC client can reach a server that listens only on 127.0.0.1 inside a pod.
//
// Each DialPod opens its own upgraded connection carrying exactly one error/data stream
// pair. That keeps one gRPC connection equal to one port-forward connection: closing the
// gRPC connection tears down the port-forward, and a broken port-forward fails only the
// gRPC connection that used it.
package portforward

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	pfconstants "k8s.io/apimachinery/pkg/util/portforward"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	clientportforward "k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/transport/websocket"
	streamhttp "k8s.io/streaming/pkg/httpstream"
	streamspdy "k8s.io/streaming/pkg/httpstream/spdy"
)

// DefaultHandshakeTimeout bounds connecting to the API server and upgrading the request
// when the caller's context carries no deadline of its own.
const DefaultHandshakeTimeout = 30 * time.Second

// websocketsEnv is kubectl's own switch (KUBECTL_PORT_FORWARD_WEBSOCKETS=false) for
// clusters or proxies that mishandle the WebSocket upgrade; honouring it means a user who
// already works around such a cluster for kubectl needs nothing new for kubectl-mesh.
const websocketsEnv = "KUBECTL_PORT_FORWARD_WEBSOCKETS"

// Dialer opens port-forward connections to pods. It is safe for concurrent use.
type Dialer struct {
	cfg  *rest.Config
	core rest.Interface

	// HandshakeTimeout bounds the upgrade when the context passed to DialPod has no
	// deadline. Zero means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// DisableWebsockets skips the WebSocket attempt and speaks SPDY directly, like
	// kubectl with KUBECTL_PORT_FORWARD_WEBSOCKETS=false (which also sets it).
	DisableWebsockets bool
}

// NewDialer prepares a Dialer for the cluster cfg points at. It checks the TLS and
// credential settings once, so a broken kubeconfig fails here rather than per pod.
func NewDialer(cfg *rest.Config) (*Dialer, error) {
	if cfg == nil {
		return nil, errors.New("portforward: nil rest config")
	}
	cfg = rest.CopyConfig(cfg)
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("portforward: building core/v1 client: %w", err)
	}
	if _, _, err := spdy.RoundTripperFor(cfg); err != nil {
		return nil, fmt.Errorf("portforward: building SPDY transport: %w", err)
	}
	if _, _, err := websocket.RoundTripperFor(cfg); err != nil {
		return nil, fmt.Errorf("portforward: building WebSocket transport: %w", err)
	}
	return &Dialer{
		cfg:               cfg,
		core:              core.RESTClient(),
		DisableWebsockets: strings.EqualFold(os.Getenv(websocketsEnv), "false"),
	}, nil
}

// DialPod opens one port-forward connection to port inside namespace/pod.
//
// ctx bounds only the dial: once DialPod returns, cancelling ctx does not affect the
// connection (gRPC cancels its dial context as soon as the connection is up). Failures
// name the pod. An error the kubelet reports for this forward — typically "connection
// refused" because nothing listens on the port — is a *RemoteError, returned by Read and
// Write on the connection, or by DialPod itself when the kubelet failed the forward
// before the data stream was acknowledged.
func (d *Dialer) DialPod(ctx context.Context, namespace, pod string, port int) (net.Conn, error) {
	if pod == "" || namespace == "" {
		return nil, fmt.Errorf("portforward: pod %q in namespace %q: both names are required", pod, namespace)
	}
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("portforward: port %d out of range", port)
	}
	target := podAddr{namespace: namespace, pod: pod, port: port}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("port-forward to pod %s: %w", target.podName(), err)
	}
	u := d.core.Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("portforward").URL()

	hctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		timeout := d.HandshakeTimeout
		if timeout <= 0 {
			timeout = DefaultHandshakeTimeout
		}
		var cancel context.CancelFunc
		hctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}

	// The upgrade runs in its own goroutine because client-go's SPDY path reads the
	// upgrade response without looking at the context; DialPod must still return the
	// moment ctx ends. The attempt closes whatever it built once it learns nobody waits.
	// (The WebSocket path honours the deadline throughout. On the SPDY path, an API
	// server that accepts the request and never answers keeps the attempt's goroutine
	// until it answers or the TCP connection dies; nothing else is held.)
	a := &attempt{done: make(chan struct{})}
	go a.run(d.streamDialer(hctx, u), target)
	select {
	case <-a.done:
		if a.err == nil {
			return a.conn, nil
		}
		if dl, ok := hctx.Deadline(); hctx.Err() != nil || (ok && !time.Now().Before(dl)) {
			// The transport hit the deadline (as an i/o timeout) before the context's own
			// timer fired; report the deadline, which is what callers test for.
			return nil, fmt.Errorf("port-forward to pod %s: %w (%v)", target.podName(), contextReason(ctx, dl), a.err)
		}
		var remote *RemoteError
		if errors.As(a.err, &remote) {
			return nil, a.err // already names the pod and port
		}
		return nil, fmt.Errorf("port-forward to pod %s: %w", target.podName(), a.err)
	case <-hctx.Done():
		a.abandon()
		dl, _ := hctx.Deadline()
		return nil, fmt.Errorf("port-forward to pod %s: %w", target.podName(), contextReason(ctx, dl))
	}
}

// contextReason tells the caller's own cancellation or deadline apart from the handshake
// timeout DialPod added.
func contextReason(ctx context.Context, deadline time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if ctxDeadline, ok := ctx.Deadline(); ok && ctxDeadline.Equal(deadline) {
		return context.DeadlineExceeded
	}
	return fmt.Errorf("handshake timed out: %w", context.DeadlineExceeded)
}

// streamDialer composes the two transports exactly as kubectl port-forward does: SPDY
// tunnelled over WebSocket first, plain SPDY when the WebSocket upgrade is refused (API
// servers before 1.30, or a proxy that cannot do it). kubectl's dialers build their
// requests without a context, so ours are the same client-go pieces with ctx attached.
func (d *Dialer) streamDialer(ctx context.Context, u *url.URL) streamhttp.Dialer {
	direct := &spdyDialer{ctx: ctx, cfg: d.cfg, url: u}
	if d.DisableWebsockets {
		return direct
	}
	tunnel := &websocketDialer{ctx: ctx, cfg: d.cfg, url: u}
	return clientportforward.NewFallbackDialerForStreaming(tunnel, direct, func(err error) bool {
		return streamhttp.IsUpgradeFailure(err) || streamhttp.IsHTTPSProxyError(err)
	})
}

// attempt is one upgrade plus stream creation, run off the caller's goroutine.
type attempt struct {
	done chan struct{}
	conn *Conn
	err  error

	mu        sync.Mutex
	abandoned bool
	sc        streamhttp.Connection // set once upgraded, so abandon can tear it down
}

func (a *attempt) run(dialer streamhttp.Dialer, target podAddr) {
	defer close(a.done)
	sc, _, err := dialer.Dial(clientportforward.PortForwardProtocolV1Name)
	if err != nil {
		a.err = err
		return
	}
	a.mu.Lock()
	if a.abandoned {
		a.mu.Unlock()
		_ = sc.Close()
		a.err = context.Canceled
		return
	}
	a.sc = sc
	a.mu.Unlock()

	c, err := newConn(sc, target)
	if err != nil {
		_ = sc.Close()
		a.err = err
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.abandoned {
		_ = c.Close()
		a.err = context.Canceled
		return
	}
	a.conn = c
}

// abandon makes a still-running attempt close what it built. Closing an upgraded
// connection also unblocks stream creation, which otherwise waits up to 30s.
func (a *attempt) abandon() {
	a.mu.Lock()
	a.abandoned = true
	sc := a.sc
	a.mu.Unlock()
	if sc != nil {
		_ = sc.Close()
	}
}

// newConn opens the stream pair of one forward on sc. The kubelet pairs the streams by
// request ID; the ID only has to be unique within sc, and sc carries a single pair.
func newConn(sc streamhttp.Connection, target podAddr) (*Conn, error) {
	headers := http.Header{}
	headers.Set(corev1.StreamType, corev1.StreamTypeError)
	headers.Set(corev1.PortHeader, strconv.Itoa(target.port))
	headers.Set(corev1.PortForwardRequestIDHeader, "0")
	errStream, err := sc.CreateStream(headers)
	if err != nil {
		return nil, fmt.Errorf("creating error stream: %w", err)
	}
	// Half-close our side: we never write to the error stream, the kubelet only writes.
	_ = errStream.Close()

	headers.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := sc.CreateStream(headers)
	if err != nil {
		// The kubelet starts forwarding as soon as both streams exist; if the port
		// refuses at once it may reset the data stream before we saw it accepted. The
		// reason is then on the error stream, so prefer it over "stream reset". The
		// caller closes sc on error, which ends the reader if nothing comes.
		msg := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(errStream)
			msg <- b
		}()
		select {
		case b := <-msg:
			if len(b) > 0 {
				return nil, &RemoteError{Namespace: target.namespace, Pod: target.pod, Port: target.port, Message: string(b)}
			}
		case <-time.After(errorStreamGrace):
		}
		return nil, fmt.Errorf("creating data stream: %w", err)
	}
	return startConn(sc, errStream, data, target), nil
}

type websocketDialer struct {
	ctx context.Context
	cfg *rest.Config
	url *url.URL
}

func (w *websocketDialer) Dial(protocols ...string) (streamhttp.Connection, string, error) {
	rt, holder, err := websocket.RoundTripperFor(w.cfg)
	if err != nil {
		return nil, "", err
	}
	// WebSocket upgrades must be GET (RFC 6455 section 4.1).
	req, err := http.NewRequestWithContext(w.ctx, http.MethodGet, w.url.String(), nil)
	if err != nil {
		return nil, "", err
	}
	tunnelled := make([]string, len(protocols))
	for i, p := range protocols {
		tunnelled[i] = pfconstants.WebsocketsSPDYTunnelingPrefix + p
	}
	ws, err := websocket.Negotiate(rt, holder, req, tunnelled...)
	if err != nil {
		return nil, "", err
	}
	if ws == nil {
		return nil, "", errors.New("websocket negotiation returned no connection")
	}
	protocol := strings.TrimPrefix(ws.Subprotocol(), pfconstants.WebsocketsSPDYTunnelingPrefix)
	sc, err := streamspdy.NewClientConnectionWithPings(clientportforward.NewTunnelingConnection("client", ws), clientportforward.PingPeriod)
	if err != nil {
		return nil, "", err
	}
	return sc, protocol, nil
}

type spdyDialer struct {
	ctx context.Context
	cfg *rest.Config
	url *url.URL
}

func (s *spdyDialer) Dial(protocols ...string) (streamhttp.Connection, string, error) {
	rt, upgrader, err := spdy.RoundTripperFor(s.cfg)
	if err != nil {
		return nil, "", err
	}
	req, err := http.NewRequestWithContext(s.ctx, http.MethodPost, s.url.String(), nil)
	if err != nil {
		return nil, "", err
	}
	return spdy.NegotiateStreaming(upgrader, &http.Client{Transport: rt}, req, protocols...)
}
