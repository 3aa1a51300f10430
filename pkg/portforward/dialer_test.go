package portforward

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/rest"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// klog starts its flush daemon on first use and never stops it.
		goleak.IgnoreAnyFunction("k8s.io/klog/v2.(*flushDaemon).run.func1"),
		// The fake kubelet's own handler (k8s.io/cri-streaming, server side): when the
		// forward fails at once it resets the streams, and its deferred Close of a stream
		// whose SYN_REPLY was never sent waits forever in spdystream. That goroutine is
		// the server's; the client side never closes an unacknowledged stream.
		goleak.IgnoreAnyFunction("k8s.io/cri-streaming/pkg/streaming/portforward.(*httpStreamHandler).portForward"),
	)
}

type infoServer struct {
	agentapi.UnimplementedAgentServer
	node string
}

func (s *infoServer) Info(context.Context, *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	return &agentapi.InfoResponse{NodeName: s.node, AgentVersion: "test"}, nil
}

// startAgent serves the agent API on 127.0.0.1 and returns its port.
func startAgent(t *testing.T, node string) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	agentapi.RegisterAgentServer(s, &infoServer{node: node})
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return l.Addr().(*net.TCPAddr).Port
}

// startEcho serves a TCP echo on 127.0.0.1 and returns its port.
func startEcho(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
	})
	return l.Addr().(*net.TCPAddr).Port
}

func newTestDialer(t *testing.T, cfg *rest.Config, websockets bool) *Dialer {
	t.Helper()
	d, err := NewDialer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.DisableWebsockets = !websockets
	return d
}

func callInfo(ctx context.Context, t *testing.T, d *Dialer, pod string) (*agentapi.InfoResponse, error) {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+pod,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			return d.DialPod(ctx, "mesh-system", pod, 9460)
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	return agentapi.NewAgentClient(cc).Info(ctx, &agentapi.InfoRequest{})
}

func TestGRPCOverPortForward(t *testing.T) {
	for _, tc := range []struct {
		name             string
		serverWebsockets bool
		clientWebsockets bool
		want             []string
	}{
		{"websocket tunnel", true, true, []string{"websocket"}},
		{"fallback to spdy on an old api server", false, true, []string{"spdy"}},
		{"spdy only", true, false, []string{"spdy"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fc := newFakeCluster(t, tc.serverWebsockets)
			fc.addPod("mesh-agent-a", map[int32]int{9460: startAgent(t, "node-a")})
			d := newTestDialer(t, fc.config(), tc.clientWebsockets)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := callInfo(ctx, t, d, "mesh-agent-a")
			if err != nil {
				t.Fatalf("Info: %v", err)
			}
			if resp.GetNodeName() != "node-a" {
				t.Fatalf("node name %q, want node-a", resp.GetNodeName())
			}
			if got := fc.seen(); strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("upgrades %v, want %v", got, tc.want)
			}
		})
	}
}

// The kubelet reports a refused connection inside the pod on the error stream; the
// caller must see that message, not a bare EOF.
func TestConnectionRefusedInPodIsReadError(t *testing.T) {
	for _, websockets := range []bool{true, false} {
		t.Run(map[bool]string{true: "websocket", false: "spdy"}[websockets], func(t *testing.T) {
			fc := newFakeCluster(t, true)
			fc.addPod("mesh-agent-a", nil)
			d := newTestDialer(t, fc.config(), websockets)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			// The kubelet may reset the data stream before its creation is acknowledged,
			// so the reason arrives either from DialPod or from the first Read.
			c, err := d.DialPod(ctx, "mesh-system", "mesh-agent-a", 9460)
			if err == nil {
				defer c.Close()
				_, _ = c.Write([]byte("PRI * HTTP/2.0\r\n"))
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err = io.ReadAll(c)
			}
			var re *RemoteError
			if !errors.As(err, &re) {
				t.Fatalf("read error %v (%T), want *RemoteError", err, err)
			}
			if !strings.Contains(re.Message, "connection refused") || re.Pod != "mesh-agent-a" || re.Port != 9460 {
				t.Fatalf("remote error %+v", re)
			}
			if !strings.Contains(err.Error(), "mesh-system/mesh-agent-a") {
				t.Fatalf("error %q does not name the pod", err)
			}
			if c != nil {
				if _, err := c.Write([]byte("x")); !errors.As(err, &re) {
					t.Fatalf("write after remote error: %v", err)
				}
			}
		})
	}

	// Through gRPC the same failure is an Unavailable RPC carrying the reason.
	fc := newFakeCluster(t, true)
	fc.addPod("mesh-agent-a", nil)
	d := newTestDialer(t, fc.config(), true)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := callInfo(ctx, t, d, "mesh-agent-a"); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Info error %v, want connection refused", err)
	}
}

func TestUpgradeRefusedNamesPod(t *testing.T) {
	fc := newFakeCluster(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	d := newTestDialer(t, fc.config(), true)
	_, err := d.DialPod(ctx, "mesh-system", "mesh-agent-gone", 9460)
	if err == nil || !strings.Contains(err.Error(), "mesh-system/mesh-agent-gone") || !strings.Contains(err.Error(), `pods "mesh-agent-gone" not found`) {
		t.Fatalf("missing pod: %v", err)
	}

	cfg := fc.config()
	cfg.BearerToken = "wrong"
	d = newTestDialer(t, cfg, true)
	fc.addPod("mesh-agent-a", nil)
	_, err = d.DialPod(ctx, "mesh-system", "mesh-agent-a", 9460)
	if err == nil || !strings.Contains(err.Error(), "mesh-system/mesh-agent-a") || !strings.Contains(err.Error(), "Unauthorized") {
		t.Fatalf("bad credentials: %v", err)
	}
}

// A server that answers every request with 403, like an API server denying
// pods/portforward through RBAC: both transports are tried and the reason surfaces.
func TestForbidden(t *testing.T) {
	var methods []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		methods = append(methods, r.Method)
		writeStatus(w, http.StatusForbidden, "Forbidden", `pods "p" is forbidden: User "u" cannot create resource "pods/portforward"`)
	}))
	defer srv.Close()
	d := newTestDialer(t, &rest.Config{Host: srv.URL}, true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := d.DialPod(ctx, "ns", "p", 9460)
	if err == nil || !strings.Contains(err.Error(), "port-forward to pod ns/p") || !strings.Contains(err.Error(), "cannot create resource") {
		t.Fatalf("err %v", err)
	}
	if strings.Join(methods, ",") != "GET,POST" {
		t.Fatalf("requests %v, want the WebSocket GET then the SPDY POST", methods)
	}
}

// An API server that accepts the connection and never answers must not hold DialPod
// past its context, whichever transport is stuck.
func TestHandshakeHangHonoursContext(t *testing.T) {
	for _, websockets := range []bool{true, false} {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var conns []net.Conn
		accepted := make(chan struct{})
		go func() {
			defer close(accepted)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				conns = append(conns, c)
			}
		}()
		d := newTestDialer(t, &rest.Config{Host: "http://" + l.Addr().String()}, websockets)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		start := time.Now()
		_, err = d.DialPod(ctx, "ns", "p", 9460)
		cancel()
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("DialPod took %v", el)
		}
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "ns/p") {
			t.Fatalf("err %v", err)
		}
		_ = l.Close()
		<-accepted
		// The hung server goes away; the abandoned attempt must then finish (goleak checks).
		for _, c := range conns {
			_ = c.Close()
		}
	}
}

func TestDialPodNoDeadlineUsesHandshakeTimeout(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	d := newTestDialer(t, &rest.Config{Host: "http://" + l.Addr().String()}, true)
	d.HandshakeTimeout = 200 * time.Millisecond
	_, err = d.DialPod(context.Background(), "ns", "p", 9460)
	if err == nil || !strings.Contains(err.Error(), "handshake timed out") {
		t.Fatalf("err %v", err)
	}
}

func TestDialPodCancelled(t *testing.T) {
	d := newTestDialer(t, &rest.Config{Host: "http://127.0.0.1:1"}, true)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.DialPod(ctx, "ns", "p", 9460); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
	if _, err := d.DialPod(context.Background(), "ns", "p", 0); err == nil {
		t.Fatal("port 0 accepted")
	}
	if _, err := d.DialPod(context.Background(), "ns", "", 1); err == nil {
		t.Fatal("empty pod accepted")
	}
	if _, err := d.DialPod(context.Background(), "", "p", 1); err == nil {
		t.Fatal("empty namespace accepted")
	}
}

// Users who switched kubectl to SPDY for a cluster that breaks WebSocket upgrades get
// the same from us without a new knob.
func TestKubectlWebsocketSwitch(t *testing.T) {
	t.Setenv("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")
	d, err := NewDialer(&rest.Config{Host: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if !d.DisableWebsockets {
		t.Fatal("KUBECTL_PORT_FORWARD_WEBSOCKETS=false ignored")
	}
	t.Setenv("KUBECTL_PORT_FORWARD_WEBSOCKETS", "true")
	if d, _ := NewDialer(&rest.Config{Host: "http://127.0.0.1:1"}); d.DisableWebsockets {
		t.Fatal("websockets disabled by default")
	}
	if _, err := NewDialer(nil); err == nil {
		t.Fatal("nil config accepted")
	}
	if _, err := NewDialer(&rest.Config{Host: "https://127.0.0.1:1", TLSClientConfig: rest.TLSClientConfig{CAFile: "/nonexistent/ca.crt"}}); err == nil {
		t.Fatal("unreadable CA file accepted")
	}
}

func TestConnDeadlinesAndClose(t *testing.T) {
	fc := newFakeCluster(t, true)
	fc.addPod("echo", map[int32]int{7: startEcho(t)})
	d := newTestDialer(t, fc.config(), true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialPod(ctx, "default", "echo", 7)
	if err != nil {
		t.Fatal(err)
	}
	cancel() // the dial context must not govern the established connection
	if c.RemoteAddr().String() != "default/echo:7" || c.RemoteAddr().Network() != "portforward" {
		t.Fatalf("remote addr %v", c.RemoteAddr())
	}

	// A read deadline interrupts a blocked Read and leaves the connection usable.
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read err %v", err)
	}
	if el := time.Since(start); el < 80*time.Millisecond || el > 2*time.Second {
		t.Fatalf("deadline after %v", el)
	}
	_ = c.SetReadDeadline(time.Time{})
	msg := bytes.Repeat([]byte("mesh"), 50000) // several read chunks
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo after deadline: %v", err)
	}

	// Extending a deadline reaches a Read that is already blocked.
	_ = c.SetReadDeadline(time.Now().Add(time.Hour))
	readErr := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		readErr <- err
	}()
	time.Sleep(50 * time.Millisecond)
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	select {
	case err := <-readErr:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read err %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("shortened deadline did not interrupt the blocked Read")
	}

	// A past write deadline fails the Write at once.
	_ = c.SetWriteDeadline(time.Now().Add(-time.Second))
	if _, err := c.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write err %v", err)
	}
	_ = c.SetWriteDeadline(time.Time{})

	// Close unblocks a pending Read and is idempotent.
	_ = c.SetReadDeadline(time.Time{})
	go func() {
		_, err := c.Read(make([]byte, 1))
		readErr <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	select {
	case err := <-readErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

// An orderly close by the server in the pod reads as io.EOF, not as an error.
func TestServerCloseIsEOF(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			_, _ = c.Write([]byte("bye"))
			_ = c.Close()
		}
	}()
	fc := newFakeCluster(t, true)
	fc.addPod("p", map[int32]int{80: l.Addr().(*net.TCPAddr).Port})
	d := newTestDialer(t, fc.config(), true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := d.DialPod(ctx, "default", "p", 80)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "bye" {
		t.Fatalf("read %q, %v", b, err)
	}
}
