package portforward

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	streamhttp "k8s.io/streaming/pkg/httpstream"
)

// RemoteError is what the kubelet (or container runtime) reported on the forward's error
// stream, for example that nothing accepts connections on the port inside the pod.
type RemoteError struct {
	Namespace string
	Pod       string
	Port      int
	Message   string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("port-forward to pod %s/%s port %d: %s", e.Namespace, e.Pod, e.Port, e.Message)
}

// errorStreamGrace is how long a Read that hit the end of the data stream waits for the
// error stream to finish. The kubelet writes and closes the error stream before it closes
// the data stream, so the message is normally already buffered; the wait only covers our
// own goroutine not having drained it yet.
const errorStreamGrace = 2 * time.Second

// closeWait bounds how long Close waits for the stream readers to notice the teardown.
const closeWait = 5 * time.Second

const readChunk = 32 << 10

// Conn is a net.Conn over one port-forward stream pair.
//
// SPDY streams have no deadlines, so reads go through a pump goroutine and Read waits on
// it with a timer; a Read deadline therefore leaves the connection usable, as net.Conn
// requires. A Write cannot be abandoned halfway through a SPDY frame, so a write deadline
// that expires during a blocked Write closes the connection.
type Conn struct {
	sc        streamhttp.Connection
	data      streamhttp.Stream
	errStream streamhttp.Stream
	addr      podAddr

	chunks   chan []byte   // pump → Read; closed after pumpErr is set
	pumpErr  error         // why the data stream ended
	pumpDone chan struct{} // closed when the pump goroutine returns
	errDone  chan struct{} // closed when the error-stream goroutine returns

	readMu  sync.Mutex // one Read at a time, guards pending
	pending []byte
	writeMu sync.Mutex

	readDeadline  *deadline
	writeDeadline *deadline

	endOnce sync.Once
	ended   chan struct{} // closed by end
	endErr  error         // set before ended closes
}

func startConn(sc streamhttp.Connection, errStream, data streamhttp.Stream, addr podAddr) *Conn {
	c := &Conn{
		sc:            sc,
		data:          data,
		errStream:     errStream,
		addr:          addr,
		chunks:        make(chan []byte),
		pumpDone:      make(chan struct{}),
		errDone:       make(chan struct{}),
		readDeadline:  newDeadline(),
		writeDeadline: newDeadline(),
		ended:         make(chan struct{}),
	}
	go c.watchErrors()
	go c.pump()
	return c
}

// watchErrors reads the error stream to its end. A message there means the forward failed
// on the pod's side; nothing more will come over the data stream, so the connection ends
// with that message as the error every pending and later Read and Write return.
func (c *Conn) watchErrors() {
	defer close(c.errDone)
	// A read error without a message is the connection going away, which the data
	// stream reports on its own.
	msg, _ := io.ReadAll(c.errStream)
	if len(msg) > 0 {
		c.end(&RemoteError{Namespace: c.addr.namespace, Pod: c.addr.pod, Port: c.addr.port, Message: string(msg)})
	}
}

func (c *Conn) pump() {
	defer close(c.pumpDone)
	defer close(c.chunks)
	for {
		buf := make([]byte, readChunk)
		n, err := c.data.Read(buf)
		if n > 0 {
			select {
			case c.chunks <- buf[:n]:
			case <-c.ended:
				c.pumpErr = c.endErr
				return
			}
		}
		if err != nil {
			c.pumpErr = c.dataStreamEnd(err)
			return
		}
	}
}

// dataStreamEnd decides what Read reports once the data stream is over: the error-stream
// message if the kubelet sent one, io.EOF for an orderly close by the server in the pod,
// or the local reason if we tore the connection down.
func (c *Conn) dataStreamEnd(err error) error {
	select {
	case <-c.errDone:
	case <-c.ended:
	case <-time.After(errorStreamGrace):
	}
	select {
	case <-c.ended:
		return c.endErr
	default:
	}
	if errors.Is(err, io.EOF) {
		return io.EOF
	}
	return fmt.Errorf("port-forward to pod %s: %w", c.addr.podName(), err)
}

// end tears the connection down once, recording why; Read and Write return cause after.
func (c *Conn) end(cause error) {
	c.endOnce.Do(func() {
		c.endErr = cause
		close(c.ended)
		// Closing the data stream first tells the kubelet we are done writing, so the
		// server in the pod sees an orderly end; closing the connection then resets every
		// stream it knows, which unblocks the pump and the error-stream reader.
		_ = c.data.Close()
		_ = c.sc.Close()
	})
}

// Read implements net.Conn.
func (c *Conn) Read(p []byte) (int, error) {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if len(p) == 0 {
		return 0, nil
	}
	select {
	case <-c.ended:
		return 0, c.endErr
	default:
	}
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	select {
	case b, ok := <-c.chunks:
		if !ok {
			return 0, c.pumpErr
		}
		n := copy(p, b)
		c.pending = b[n:]
		return n, nil
	case <-c.readDeadline.expired():
		return 0, os.ErrDeadlineExceeded
	case <-c.ended:
		return 0, c.endErr
	}
}

// Write implements net.Conn.
func (c *Conn) Write(p []byte) (int, error) {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	select {
	case <-c.ended:
		return 0, c.endErr
	default:
	}
	expired, set := c.writeDeadline.state()
	if set {
		select {
		case <-expired:
			return 0, os.ErrDeadlineExceeded
		default:
		}
		// Only a Write under a deadline pays for a watcher; gRPC sets none in steady state.
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case <-expired:
				c.end(fmt.Errorf("port-forward to pod %s: write timed out, connection closed: %w", c.addr.podName(), os.ErrDeadlineExceeded))
			case <-stop:
			}
		}()
	}
	n, err := c.data.Write(p)
	if err != nil {
		select {
		case <-c.ended:
			return n, c.endErr
		default:
		}
		return n, fmt.Errorf("port-forward to pod %s: %w", c.addr.podName(), err)
	}
	return n, nil
}

// Close implements net.Conn. It waits (briefly) for the stream readers to stop, so a
// closed Conn leaves no goroutine behind.
func (c *Conn) Close() error {
	c.end(net.ErrClosed)
	timer := time.NewTimer(closeWait)
	defer timer.Stop()
	for _, ch := range []chan struct{}{c.pumpDone, c.errDone} {
		select {
		case <-ch:
		case <-timer.C:
			return fmt.Errorf("port-forward to pod %s: streams did not stop within %v", c.addr.podName(), closeWait)
		}
	}
	return nil
}

// LocalAddr implements net.Conn; there is no meaningful local socket, so it names the pod.
func (c *Conn) LocalAddr() net.Addr { return c.addr }

// RemoteAddr implements net.Conn as namespace/pod:port.
func (c *Conn) RemoteAddr() net.Addr { return c.addr }

// SetDeadline implements net.Conn.
func (c *Conn) SetDeadline(t time.Time) error {
	c.readDeadline.set(t)
	c.writeDeadline.set(t)
	return nil
}

// SetReadDeadline implements net.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.readDeadline.set(t)
	return nil
}

// SetWriteDeadline implements net.Conn.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.writeDeadline.set(t)
	return nil
}

type podAddr struct {
	namespace string
	pod       string
	port      int
}

func (a podAddr) podName() string {
	if a.namespace == "" {
		return a.pod
	}
	return a.namespace + "/" + a.pod
}

func (a podAddr) Network() string { return "portforward" }
func (a podAddr) String() string  { return fmt.Sprintf("%s:%d", a.podName(), a.port) }

// deadline is a settable point in time exposed as a channel that closes when it passes.
// Blocked readers hold the current channel, so moving a deadline that has not passed yet
// keeps the channel and only replaces the timer; gen stops a superseded timer that is
// already firing from closing it.
type deadline struct {
	mu    sync.Mutex
	isSet bool
	gen   uint64
	timer *time.Timer
	ch    chan struct{}
}

func newDeadline() *deadline { return &deadline{ch: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.isSet = !t.IsZero()
	if isClosed(d.ch) {
		d.ch = make(chan struct{})
	}
	if !d.isSet {
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		close(d.ch)
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(wait, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.gen == gen && !isClosed(d.ch) {
			close(d.ch)
		}
	})
}

// expired returns a channel that closes when the deadline passes.
func (d *deadline) expired() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch
}

// state is expired plus whether a deadline is set at all.
func (d *deadline) state() (<-chan struct{}, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ch, d.isSet
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
