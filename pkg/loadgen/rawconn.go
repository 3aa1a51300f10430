package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"syscall"
	"time"
)

var errAborted = errors.New("load stopped")

// rawConn is the connection a worker owns for the protocols framed by hand (HTTP/1.1, TCP).
// Only the worker dials and drops; abort may come from another goroutine.
type rawConn struct {
	dial    DialFunc
	target  string
	timeout time.Duration

	mu      sync.Mutex
	conn    net.Conn
	aborted bool

	armedOn    net.Conn // the connection whose deadline is armedUntil
	armedUntil time.Time
}

// get returns the open connection, dialling if there is none.
func (r *rawConn) get(ctx context.Context) (net.Conn, bool, error) {
	if r.conn != nil {
		return r.conn, false, nil
	}
	dctx, cancel := context.WithTimeout(ctx, r.timeout)
	c, err := r.dial(dctx, "tcp", r.target)
	cancel()
	if err != nil {
		return nil, false, kindErr(ErrConnect, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.aborted {
		c.Close()
		return nil, false, errAborted
	}
	r.conn = c
	return c, true, nil
}

func (r *rawConn) drop() {
	r.mu.Lock()
	if r.conn != nil {
		r.conn.Close()
		r.conn = nil
	}
	r.mu.Unlock()
}

// abort unblocks a request in flight by closing its connection under it.
func (r *rawConn) abort() {
	r.mu.Lock()
	r.aborted = true
	if r.conn != nil {
		r.conn.Close()
	}
	r.mu.Unlock()
}

func (r *rawConn) close() { r.drop() }

func (r *rawConn) connect(ctx context.Context) error {
	_, _, err := r.get(ctx)
	return err
}

// deadline bounds the whole exchange. Re-arming a deadline costs two runtime timer updates,
// a visible share of a loopback request, so it is only moved when less than 90% of the
// timeout remains: each request is bounded by between 0.9 and 1 × the timeout.
func (r *rawConn) deadline(c net.Conn) {
	if r.timeout <= 0 {
		return
	}
	now := time.Now()
	if c != r.armedOn || r.armedUntil.Sub(now) < r.timeout-r.timeout/10 {
		r.armedUntil = now.Add(r.timeout)
		r.armedOn = c
		_ = c.SetDeadline(r.armedUntil)
	}
}

// tcpClient writes the payload and reads as many bytes back.
type tcpClient struct {
	rawConn
	payload []byte
	buf     []byte
}

func newTCPClient(o *Options) *tcpClient {
	return &tcpClient{
		rawConn: rawConn{dial: o.Dial, target: o.Target, timeout: o.Timeout},
		payload: o.Body,
		buf:     make([]byte, len(o.Body)),
	}
}

func (t *tcpClient) do(ctx context.Context) error {
	c, _, err := t.get(ctx)
	if err != nil {
		return err
	}
	t.deadline(c)
	if _, err := c.Write(t.payload); err != nil {
		t.drop()
		return kindErr(ErrIO, err)
	}
	if _, err := io.ReadFull(c, t.buf); err != nil {
		t.drop()
		return kindErr(ErrIO, err)
	}
	if !bytes.Equal(t.buf, t.payload) {
		t.drop()
		return kindErr(ErrProtocol, errors.New("echo differs from what was sent"))
	}
	return nil
}

// h1Client speaks HTTP/1.1 over a kept-alive connection with a request serialised once:
// net/http's client costs several allocations and a goroutine hop per request, which would
// make the generator, not the target, the bottleneck at high rates.
type h1Client struct {
	rawConn
	req  []byte
	head bool
	buf  []byte
	p    respParser
}

func newH1Client(o *Options) *h1Client {
	return &h1Client{
		rawConn: rawConn{dial: o.Dial, target: o.Target, timeout: o.Timeout},
		req:     serializeRequest(o),
		head:    o.Method == "HEAD",
		buf:     make([]byte, 16<<10),
	}
}

func serializeRequest(o *Options) []byte {
	var b bytes.Buffer
	host := o.Target
	names := make([]string, 0, len(o.Headers))
	for k, v := range o.Headers {
		if equalFold(k, "host") {
			host = v
			continue
		}
		names = append(names, k)
	}
	sort.Strings(names)
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", o.Method, o.Path, host)
	hasUA := false
	for _, k := range names {
		if equalFold(k, "user-agent") {
			hasUA = true
		}
		if equalFold(k, "content-length") || equalFold(k, "transfer-encoding") {
			continue // framing is ours to set
		}
		fmt.Fprintf(&b, "%s: %s\r\n", k, o.Headers[k])
	}
	if !hasUA {
		b.WriteString("User-Agent: kubectl-mesh-loadgen\r\n")
	}
	if len(o.Body) > 0 || o.Method == "POST" || o.Method == "PUT" || o.Method == "PATCH" {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(o.Body))
	}
	b.WriteString("\r\n")
	b.Write(o.Body)
	return b.Bytes()
}

func (h *h1Client) do(ctx context.Context) error {
	err := h.exchange(ctx)
	var re *reqError
	if errors.As(err, &re) && re.retry {
		// The server closed a kept-alive connection before this request reached it (an
		// idle timeout); like net/http, send it once more on a new connection.
		err = h.exchange(ctx)
	}
	return err
}

func (h *h1Client) exchange(ctx context.Context) error {
	c, fresh, err := h.get(ctx)
	if err != nil {
		return err
	}
	h.deadline(c)
	if _, err := c.Write(h.req); err != nil {
		h.drop()
		return &reqError{kind: ErrIO, err: err, retry: !fresh && staleConn(err)}
	}
	h.p.reset(h.head)
	for !h.p.done() {
		n, rerr := c.Read(h.buf)
		if n > 0 {
			if _, err := h.p.feed(h.buf[:n]); err != nil {
				h.drop()
				return err
			}
		}
		if rerr == io.EOF {
			rerr = h.p.eof()
		}
		if rerr != nil {
			h.drop()
			var re *reqError
			if !errors.As(rerr, &re) {
				re = &reqError{kind: ErrIO, err: rerr, first: !h.p.got}
			}
			re.retry = re.first && !fresh && staleConn(re.err)
			return re
		}
	}
	if !h.p.keep {
		h.drop()
	}
	return statusErr(h.p.code)
}

// staleConn says whether an error is what a peer's earlier close of an idle connection
// looks like.
func staleConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

func equalFoldBytes(a []byte, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if lower(a[i]) != b[i] {
			return false
		}
	}
	return true
}

func containsFold(v []byte, word string) bool {
	for i := 0; i+len(word) <= len(v); i++ {
		if equalFoldBytes(v[i:i+len(word)], word) {
			return true
		}
	}
	return false
}
