package loadgen

import (
	"context"
	"errors"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The closed-loop HTTP/1.1 path runs like wrk: event loops, each owning a share of the
// connections as raw non-blocking sockets in its own epoll set. A goroutine per connection
// on Go's netpoller costs, per request, a read that finds nothing yet (EAGAIN), a park, a
// netpoll and often a futex wake-up of another thread, CPU taken from the target on a
// small node. Here a request is one write, and its response a share of one epoll_wait and
// one read; the parser and the histograms are a few percent of the loop's time, the rest
// is the kernel's.

// loopConn states.
const (
	lcIdle    = iota // no request: the run is over
	lcDialing        // waiting for a dial, with a request to send on it
	lcWriting        // the request did not fit the socket buffer; waiting for EPOLLOUT
	lcReading
)

type loopConn struct {
	fd      int // -1 while there is no connection
	slot    int // index in the loop's conns, the epoll events' tag
	w       *worker
	p       respParser
	state   int
	off     int   // bytes of the request written
	sent    int64 // when the request was started (before any dial it needed)
	armed   int64 // when the request went on the wire: the timeout runs from here
	served  int   // responses completed on this connection
	retried bool  // the request was already resent once
}

type dialResult struct {
	slot int
	fd   int
	err  error
}

type h1Loop struct {
	ctx      context.Context
	o        *Options
	req      []byte
	head     bool
	now      func() int64
	warmup   int64
	end      int64
	stopped  *atomic.Bool
	epfd     int
	wakefd   int
	conns    []*loopConn
	active   int // conns not idle
	events   []unix.EpollEvent
	buf      []byte
	cutAfter int64 // a request on the wire longer than this has timed out

	mu     sync.Mutex
	closed bool
	dialed []dialResult
}

// wakeSlot marks the eventfd's events; connection slots are indexes into conns.
const wakeSlot = -1

// h1Loops are the event loops of one closed-loop HTTP/1.1 run.
type h1Loops struct {
	loops []*h1Loop
}

// detachable says whether every connection can be taken off Go's netpoller.
func detachable(workers []*worker) bool {
	for _, w := range workers {
		h, ok := w.cl.(*h1Client)
		if !ok || h.conn == nil {
			return false
		}
		if _, ok := h.conn.(syscall.Conn); !ok {
			return false
		}
	}
	return true
}

// detach takes the socket of c off Go's netpoller: it keeps a duplicate of the descriptor
// and closes c, which deregisters the original from the runtime's epoll set.
func detach(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		c.Close()
		return -1, errors.New("the dialled connection has no file descriptor")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		c.Close()
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		derr = err
	}
	c.Close()
	if derr != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, os.NewSyscallError("dup", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("fcntl", err)
	}
	return fd, nil
}

// newH1Loops moves the run's connections into GOMAXPROCS event loops (at most one per
// connection); worker i goes to loop i mod n and records into that loop's shard. It returns
// nil, with the connections untouched, when they cannot be detached (a dial hook returning
// something other than a socket), and the run then uses a goroutine per connection.
//
// One loop per P, like wrk's thread per core. A loop blocks in epoll_wait as a system call
// holding its P; with every P held so, sysmon takes one back each 20 µs tick and the loop
// must win a P again on each return, so on 2 cores two loops spend about 16 µs of CPU per
// request where one spends 12.5 (wrk: 13.5). But one loop serialises the generator's side
// of every connection, and on a quiet machine it reached a lower rate than two (under load
// from elsewhere the two were within noise). Parking the loops in Go's netpoller instead
// (the epoll fd wrapped in an os.File) holds no P but cost as much CPU for no better rate.
func newH1Loops(ctx context.Context, o *Options, workers []*worker, shards []*shard, now func() int64, warmup, end int64, stopped *atomic.Bool) (*h1Loops, error) {
	if !detachable(workers) {
		return nil, nil
	}
	n := min(len(workers), runtime.GOMAXPROCS(0))
	ls := &h1Loops{}
	fail := func(err error) (*h1Loops, error) {
		ls.close()
		return nil, err
	}
	for i := 0; i < n; i++ {
		l := &h1Loop{
			ctx: ctx, o: o, now: now, warmup: warmup, end: end, stopped: stopped,
			epfd: -1, wakefd: -1,
			buf:      make([]byte, 64<<10),
			cutAfter: int64(o.Timeout - o.Timeout/10),
		}
		ls.loops = append(ls.loops, l)
		var err error
		if l.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
			return fail(os.NewSyscallError("epoll_create1", err))
		}
		if l.wakefd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
			return fail(os.NewSyscallError("eventfd", err))
		}
		if err := l.ctl(unix.EPOLL_CTL_ADD, l.wakefd, unix.EPOLLIN, wakeSlot); err != nil {
			return fail(err)
		}
	}
	for i, w := range workers {
		l := ls.loops[i%n]
		h := w.cl.(*h1Client)
		l.req, l.head = h.req, h.head // every worker's request is the same
		w.sh = shards[i%n]
		fd, err := detach(h.conn)
		h.conn = nil
		if err != nil {
			return fail(err)
		}
		c := &loopConn{fd: fd, slot: len(l.conns), w: w, state: lcIdle}
		c.p.line = make([]byte, 0, 256)
		l.conns = append(l.conns, c)
		if err := l.ctl(unix.EPOLL_CTL_ADD, fd, unix.EPOLLIN, c.slot); err != nil {
			return fail(err)
		}
	}
	for _, l := range ls.loops {
		l.events = make([]unix.EpollEvent, min(len(l.conns)+1, 256))
	}
	return ls, nil
}

// run runs every loop to the end of the load or the stop.
func (ls *h1Loops) run() {
	var wg sync.WaitGroup
	for _, l := range ls.loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.run()
		}()
	}
	wg.Wait()
}

// wake makes every loop look at the stop flag now.
func (ls *h1Loops) wake() {
	for _, l := range ls.loops {
		l.wake()
	}
}

func (ls *h1Loops) close() {
	for _, l := range ls.loops {
		l.shutdown()
	}
}

func (l *h1Loop) ctl(op, fd int, events uint32, slot int) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(slot)}
	if err := unix.EpollCtl(l.epfd, op, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	return nil
}

// wake interrupts the loop's epoll_wait; it is a no-op once the loop has shut down, when
// the eventfd's number may already belong to another file.
func (l *h1Loop) wake() {
	l.mu.Lock()
	l.wakeLocked()
	l.mu.Unlock()
}

func (l *h1Loop) wakeLocked() {
	if !l.closed && l.wakefd >= 0 {
		one := [8]byte{1}
		_, _ = unix.Write(l.wakefd, one[:])
	}
}

func (l *h1Loop) setState(c *loopConn, s int) {
	if (c.state == lcIdle) != (s == lcIdle) {
		if s == lcIdle {
			l.active--
		} else {
			l.active++
		}
	}
	c.state = s
}

func (l *h1Loop) run() {
	defer l.shutdown()
	t := l.now()
	for _, c := range l.conns {
		l.start(c, t)
	}
	// Timeouts are checked every tenth of the timeout, so a request is cut between 0.9
	// and 1 × the timeout after it went on the wire, as with a deadline on a net.Conn.
	every := int64(l.o.Timeout / 10)
	nextCheck := t + every
	for l.active > 0 && !l.stopped.Load() {
		n, err := l.spinPoll()
		if n == 0 && err == nil {
			waitMs := int((nextCheck-l.now())/1e6) + 1
			n, err = unix.EpollWait(l.epfd, l.events, max(waitMs, 0))
		}
		if err != nil && err != unix.EINTR {
			l.failAll(os.NewSyscallError("epoll_wait", err))
			return
		}
		if l.stopped.Load() {
			return
		}
		if err != nil {
			n = 0
		}
		for _, ev := range l.events[:n] {
			if ev.Fd == wakeSlot {
				var b [8]byte
				_, _ = unix.Read(l.wakefd, b[:])
				continue
			}
			c := l.conns[ev.Fd]
			if c.fd < 0 {
				continue // closed earlier in this batch
			}
			switch c.state {
			case lcReading:
				l.read(c)
			case lcWriting:
				l.write(c)
			default:
				// An idle connection the server closed or wrote to: it is not needed.
				l.closeFD(c)
			}
		}
		l.takeDials()
		if now := l.now(); now >= nextCheck {
			l.expire(now)
			nextCheck = now + every
		}
	}
}

// start begins a request on c at t, or leaves c idle once the load is over.
func (l *h1Loop) start(c *loopConn, t int64) {
	if t >= l.end {
		l.setState(c, lcIdle)
		return
	}
	c.sent, c.retried = t, false
	l.send(c, t)
}

// send puts the current request on c's connection at t, dialling one first if there is none.
func (l *h1Loop) send(c *loopConn, t int64) {
	if c.fd < 0 {
		l.dial(c)
		return
	}
	c.off = 0
	c.armed = t
	c.p.reset(l.head)
	l.setState(c, lcReading)
	l.write(c)
}

func (l *h1Loop) write(c *loopConn) {
	for c.off < len(l.req) {
		n, err := unix.Write(c.fd, l.req[c.off:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if c.state != lcWriting {
				if err := l.ctl(unix.EPOLL_CTL_MOD, c.fd, unix.EPOLLOUT, c.slot); err != nil {
					l.fail(c, kindErr(ErrIO, err))
					return
				}
				l.setState(c, lcWriting)
			}
			return
		case err != nil:
			err = os.NewSyscallError("write", err)
			l.fail(c, &reqError{kind: ErrIO, err: err, retry: c.served > 0 && staleConn(err)})
			return
		}
		c.off += n
	}
	if c.state == lcWriting {
		if err := l.ctl(unix.EPOLL_CTL_MOD, c.fd, unix.EPOLLIN, c.slot); err != nil {
			l.fail(c, kindErr(ErrIO, err))
			return
		}
		l.setState(c, lcReading)
	}
	// The response cannot be there yet: wait for epoll rather than try a read.
}

func (l *h1Loop) read(c *loopConn) {
	for {
		n, err := unix.Read(c.fd, l.buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			err = os.NewSyscallError("read", err)
			l.fail(c, &reqError{kind: ErrIO, err: err, first: !c.p.got, retry: !c.p.got && c.served > 0 && staleConn(err)})
			return
		case n == 0:
			if err := c.p.eof(); err != nil {
				var re *reqError
				if errors.As(err, &re) {
					re.retry = re.first && c.served > 0
				}
				l.fail(c, err)
				return
			}
			l.complete(c)
			return
		}
		if _, err := c.p.feed(l.buf[:n]); err != nil {
			l.fail(c, err)
			return
		}
		if c.p.done() {
			l.complete(c)
			return
		}
		if n < len(l.buf) {
			return // the rest, if any, comes with the next EPOLLIN
		}
	}
}

func (l *h1Loop) complete(c *loopConn) {
	done := l.now()
	c.served++
	if !c.p.keep {
		l.closeFD(c)
	}
	c.w.finish(statusErr(c.p.code), c.sent, c.sent, done, l.warmup)
	l.start(c, done)
}

// fail ends the request on c with err, or resends it once on a new connection when the
// server had closed a kept-alive one before the request reached it (an idle timeout).
func (l *h1Loop) fail(c *loopConn, err error) {
	l.closeFD(c)
	var re *reqError
	if errors.As(err, &re) && re.retry && !c.retried {
		c.retried = true
		l.dial(c)
		return
	}
	done := l.now()
	c.w.finish(err, c.sent, c.sent, done, l.warmup)
	l.start(c, done)
}

func (l *h1Loop) failAll(err error) {
	for _, c := range l.conns {
		if c.state != lcIdle {
			c.w.finish(kindErr(ErrIO, err), c.sent, c.sent, l.now(), l.warmup)
			l.closeFD(c)
			l.setState(c, lcIdle)
		}
	}
}

func (l *h1Loop) closeFD(c *loopConn) {
	if c.fd >= 0 {
		unix.Close(c.fd) // also leaves the epoll set: this is the only descriptor of it
		c.fd = -1
	}
}

// dial opens a new connection for c off the loop, so a slow dial holds up no other
// connection; the result comes back through takeDials.
func (l *h1Loop) dial(c *loopConn) {
	l.setState(c, lcDialing)
	slot := c.slot
	go func() {
		dctx, cancel := context.WithTimeout(l.ctx, l.o.Timeout)
		conn, err := l.o.Dial(dctx, "tcp", l.o.Target)
		cancel()
		fd := -1
		if err == nil {
			fd, err = detach(conn)
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.closed {
			if fd >= 0 {
				unix.Close(fd)
			}
			return
		}
		l.dialed = append(l.dialed, dialResult{slot: slot, fd: fd, err: err})
		l.wakeLocked()
	}()
}

func (l *h1Loop) takeDials() {
	l.mu.Lock()
	ds := l.dialed
	l.dialed = nil
	l.mu.Unlock()
	if len(ds) == 0 {
		return
	}
	now := l.now()
	for _, d := range ds {
		c := l.conns[d.slot]
		err := d.err
		if err == nil {
			if err = l.ctl(unix.EPOLL_CTL_ADD, d.fd, unix.EPOLLIN, d.slot); err != nil {
				unix.Close(d.fd)
			}
		}
		if err != nil {
			c.w.finish(kindErr(ErrConnect, err), c.sent, c.sent, now, l.warmup)
			l.start(c, now)
			continue
		}
		c.fd, c.served = d.fd, 0
		l.send(c, now)
	}
}

// expire fails the requests that have been on the wire too long.
func (l *h1Loop) expire(now int64) {
	for _, c := range l.conns {
		if (c.state == lcReading || c.state == lcWriting) && now-c.armed >= l.cutAfter {
			l.fail(c, kindErr(ErrIO, os.ErrDeadlineExceeded))
		}
	}
}

// shutdown closes every descriptor; a dial still under way closes its own when it ends.
func (l *h1Loop) shutdown() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	for _, d := range l.dialed {
		if d.fd >= 0 {
			unix.Close(d.fd)
		}
	}
	l.dialed = nil
	for _, c := range l.conns {
		l.closeFD(c)
	}
	if l.epfd >= 0 {
		unix.Close(l.epfd)
		l.epfd = -1
	}
	if l.wakefd >= 0 {
		unix.Close(l.wakefd)
		l.wakefd = -1
	}
}

// spinWait is how long a loop polls without blocking before it sleeps in epoll_wait. A
// response that finds the loop asleep must wake it, and on loopback the server pays for
// that wake-up in its write. Blocking at once cost nginx about 3 µs more CPU per request on
// these connections than on fortio's (Go's scheduler spins before it sleeps) and kept the
// generator below fortio's rate; polling for 5 µs first took it from 0.87–0.93× fortio's
// rate to 1.3× (go run ./test/loadbench, medians of interleaved rounds). At a low rate the
// cost is at most 5 µs of CPU per wait.
const spinWait = 5_000 // ns

// spinPoll polls the loop's epoll set without blocking until it has events or spinWait has
// passed, letting the loop's other goroutines run in between.
func (l *h1Loop) spinPoll() (int, error) {
	until := l.now() + spinWait
	for {
		n, err := unix.EpollWait(l.epfd, l.events, 0)
		if n != 0 || err != nil || l.now() >= until {
			return n, err
		}
		runtime.Gosched()
	}
}
