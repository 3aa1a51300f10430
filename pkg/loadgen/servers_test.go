package loadgen

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen/echopb"
)

// listen opens a free port on loopback, closed when the test ends.
func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// serveHTTP serves h over HTTP/1.1, and HTTP/2 with prior knowledge when h2 is set.
func serveHTTP(t *testing.T, h http.Handler, h2 bool) string {
	t.Helper()
	l := listen(t)
	if h2 {
		h = h2c.NewHandler(h, &http2.Server{})
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// serveGRPC serves the health service (SERVING) and the echo service.
func serveGRPC(t *testing.T, opts ...grpc.ServerOption) string {
	t.Helper()
	l := listen(t)
	s := grpc.NewServer(opts...)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	echopb.RegisterEchoServer(s, echopb.Server{})
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

// serveTCPEcho echoes every connection back to itself.
func serveTCPEcho(t *testing.T) string {
	t.Helper()
	return serveConns(t, nil, func(c net.Conn) { io.Copy(c, c) })
}

// serveConns accepts connections on a loopback listener and runs handle on each in a
// goroutine of its own, closing the connection after. onAccept, when set, is told of each
// connection as it is accepted, with the count so far, before handle starts. When the test
// ends the listener and every connection are closed, and the goroutines waited for.
func serveConns(t *testing.T, onAccept func(accepted int, l net.Listener), handle func(c net.Conn)) string {
	t.Helper()
	l := listen(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for accepted := 1; ; accepted++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			if onAccept != nil {
				onAccept(accepted, l)
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return l.Addr().String()
}

// countingDial dials normally and counts, proving a protocol used the hook.
type countingDial struct{ n atomic.Int64 }

func (c *countingDial) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c.n.Add(1)
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// okHandler answers a small body and counts requests.
type okHandler struct {
	n    atomic.Int64
	body []byte
}

func (h *okHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.n.Add(1)
	io.Copy(io.Discard, r.Body)
	w.Write(h.body)
}
