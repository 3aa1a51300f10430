package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// rawHTTP serves GET requests (no body) with a fixed response, closing each connection
// silently after closeAfter responses (0: never) and answering nothing when hold is set.
// With refuseAfter > 0 it stops accepting, and the port refuses, after that many
// connections.
type rawHTTP struct {
	closeAfter  int
	hold        bool
	refuseAfter int
	response    string
}

func (s rawHTTP) serve(t *testing.T) string {
	t.Helper()
	done := make(chan struct{})
	var refuse func(int, net.Listener)
	if s.refuseAfter > 0 {
		refuse = func(accepted int, l net.Listener) {
			if accepted >= s.refuseAfter {
				l.Close()
			}
		}
	}
	addr := serveConns(t, refuse, func(c net.Conn) {
		br := bufio.NewReader(c)
		for n := 1; ; n++ {
			for { // up to the end of the request's headers
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if len(bytes.TrimSpace(line)) == 0 {
					break
				}
			}
			if s.hold {
				<-done
				return
			}
			if _, err := io.WriteString(c, s.response); err != nil {
				return
			}
			if s.closeAfter > 0 && n == s.closeAfter {
				return
			}
		}
	})
	// Registered after serveConns's, so it runs first: held handlers return before the
	// connections are waited for.
	t.Cleanup(func() { close(done) })
	return addr
}

const okResponse = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

// plainConn hides the socket of a net.Conn, as a dial hook returning a wrapper would.
type plainConn struct{ net.Conn }

// Closed-loop HTTP/1.1 runs on event loops where the connections are sockets and on a
// goroutine per connection otherwise; both must handle every way a server can end a request.
func TestClosedLoopHTTP1Paths(t *testing.T) {
	big := bytes.Repeat([]byte("b"), MaxBodyBytes)
	bigHandler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if n != int64(len(big)) {
			http.Error(w, "short body", http.StatusBadRequest)
			return
		}
		w.Write(big)
	})
	closer := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		w.Write([]byte("bye"))
	})
	type want struct {
		ok       bool // every request succeeded
		kind     ErrorKind
		moreDial bool // connections were opened again
	}
	cases := []struct {
		name    string
		addr    func(t *testing.T) string
		body    []byte
		timeout time.Duration
		want    want
	}{
		{"1 MiB each way", func(t *testing.T) string { return serveHTTP(t, bigHandler, false) }, big, 0, want{ok: true}},
		{"Connection: close", func(t *testing.T) string { return serveHTTP(t, closer, false) }, nil, 0, want{ok: true, moreDial: true}},
		{"silent close after 3", func(t *testing.T) string { return rawHTTP{closeAfter: 3, response: okResponse}.serve(t) }, nil, 0, want{ok: true, moreDial: true}},
		{"close-delimited body", func(t *testing.T) string {
			return rawHTTP{closeAfter: 1, response: "HTTP/1.1 200 OK\r\n\r\nuntil close"}.serve(t)
		}, nil, 0, want{ok: true, moreDial: true}},
		{"no answer", func(t *testing.T) string { return rawHTTP{hold: true}.serve(t) }, nil, 60 * time.Millisecond, want{kind: ErrTimeout, moreDial: true}},
		{"refused after the first", func(t *testing.T) string {
			return rawHTTP{closeAfter: 1, refuseAfter: 2, response: okResponse}.serve(t)
		}, nil, 0, want{kind: ErrConnect, moreDial: true}},
		{"bytes after the response", func(t *testing.T) string {
			return rawHTTP{response: okResponse + "extra"}.serve(t)
		}, nil, 0, want{kind: ErrProtocol, moreDial: true}},
	}
	defer func() { h1EventLoops = true }()
	for _, c := range cases {
		for _, path := range []string{"event loops", "goroutines", "wrapped conns"} {
			t.Run(c.name+" on "+path, func(t *testing.T) {
				h1EventLoops = path == "event loops"
				addr := c.addr(t)
				var dials atomic.Int64
				dial := func(ctx context.Context, network, a string) (net.Conn, error) {
					dials.Add(1)
					var d net.Dialer
					conn, err := d.DialContext(ctx, network, a)
					if err == nil && path == "wrapped conns" {
						conn = plainConn{conn}
					}
					return conn, err
				}
				conns := 2
				began := time.Now()
				res, err := Run(context.Background(), Options{
					Target: addr, Protocol: HTTP1, Connections: conns, Duration: 120 * time.Millisecond,
					Body: c.body, Timeout: c.timeout, Dial: dial,
				})
				took := time.Since(began)
				if err != nil {
					t.Fatal(err)
				}
				if took > 2*time.Second {
					t.Errorf("Run took %v for 120 ms", took)
				}
				if res.Requests == 0 {
					t.Fatalf("no requests: %v", res)
				}
				if c.want.ok && res.Errors != 0 {
					t.Errorf("%d requests, errors %v %v", res.Requests, res.ErrorsByKind, res.ErrorSamples)
				}
				if !c.want.ok && res.ErrorsByKind[c.want.kind] == 0 {
					t.Errorf("no %v error: %d requests, errors %v %v", c.want.kind, res.Requests, res.ErrorsByKind, res.ErrorSamples)
				}
				if ok := res.Requests - res.Errors; uint64(res.Service.TotalCount()) != ok {
					t.Errorf("service histogram holds %d values for %d successes", res.Service.TotalCount(), ok)
				}
				if c.want.moreDial && dials.Load() <= int64(conns) {
					t.Errorf("%d dials for %d connections: the server's closes went unnoticed", dials.Load(), conns)
				}
				if !c.want.moreDial && dials.Load() != int64(conns) {
					t.Errorf("%d dials for %d kept-alive connections", dials.Load(), conns)
				}
				if c.want.kind == ErrTimeout && !strings.Contains(res.ErrorSamples[ErrTimeout], "timeout") {
					t.Errorf("timeout sample %q", res.ErrorSamples[ErrTimeout])
				}
			})
		}
	}
}

// The event loops' counts must not depend on how connections are spread over them.
func TestEventLoopsMatchGoroutines(t *testing.T) {
	h := &okHandler{body: []byte("hello")}
	addr := serveHTTP(t, h, false)
	defer func() { h1EventLoops = true }()
	for _, loops := range []bool{true, false} {
		h1EventLoops = loops
		before := h.n.Load()
		res, err := Run(context.Background(), Options{Target: addr, Protocol: HTTP1, Connections: 5, Duration: 150 * time.Millisecond, Warmup: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		served := uint64(h.n.Load() - before)
		// The server saw the warm-up's requests too; the result must not claim more than it served.
		if res.Requests == 0 || res.Errors != 0 || res.Requests > served {
			t.Errorf("loops %v: %d requests (%d errors), server answered %d", loops, res.Requests, res.Errors, served)
		}
		if res.Latency.TotalCount() != res.Service.TotalCount() || uint64(res.Latency.TotalCount()) != res.Requests {
			t.Errorf("loops %v: latency %d service %d requests %d", loops, res.Latency.TotalCount(), res.Service.TotalCount(), res.Requests)
		}
	}
}
