//go:build linux && (386 || amd64 || arm64)

package ebpftier

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
)

// sendHook is what each tier's probe program attaches to.
var sendHook = map[Tier]struct{ program, target string }{
	TPBTF:  {sockprobeProgTpBtfSockSendLength, "sock_send_length"},
	RawTP:  {sockprobeProgRawTpSockSendLength, "sock_send_length"},
	FEntry: {sockprobeProgFentryTcpSendmsg, "tcp_sendmsg"},
	KProbe: {sockprobeProgKprobeTcpSendmsg, "tcp_sendmsg"},
}

var memlockOnce = sync.OnceValue(rlimit.RemoveMemlock)

// SendCounter is one tier's probe program, attached, counting TCP sends on the node.
type SendCounter struct {
	tier Tier
	// mu keeps Read (a metrics scrape) from racing Close (shutdown).
	mu     sync.Mutex
	prog   *ebpf.Program
	counts *ebpf.Map
	link   link.Link
}

// AttachSendCounter loads the probe program written for tier, and only that one (a
// collection holding a program the kernel refuses would fail as a whole), and attaches it.
func AttachSendCounter(tier Tier) (*SendCounter, error) {
	hook, ok := sendHook[tier]
	if !ok {
		return nil, fmt.Errorf("no probe program for tier %s", tier)
	}
	// Only kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; elsewhere this is a
	// no-op. Its failure is not the tier's verdict: without CAP_BPF its own probe map fails
	// too, and the load below then reports the real reason.
	memlockErr := memlockOnce()
	spec, err := loadSockprobe()
	if err != nil {
		return nil, err
	}
	for name := range spec.Programs {
		if name != hook.program {
			delete(spec.Programs, name)
		}
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		if memlockErr != nil {
			return nil, fmt.Errorf("load %s: %w (memlock rlimit not raised: %v)", hook.program, err, memlockErr)
		}
		return nil, fmt.Errorf("load %s: %w", hook.program, withoutMemlockHint(err))
	}
	c := &SendCounter{
		tier:   tier,
		prog:   coll.DetachProgram(hook.program),
		counts: coll.DetachMap(sockprobeMapSendCounts),
	}
	coll.Close()

	c.link, err = Attach(tier, c.prog, hook.target)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("attach %s to %s: %w", hook.program, hook.target, err)
	}
	return c, nil
}

// memlockHint is what cilium/ebpf appends to every EPERM from a program load. Once
// memlockOnce has succeeded, memlock is not the cause (on kernels that refuse fentry by
// policy the hint sends operators the wrong way), so the reported reason leaves it out.
const memlockHint = " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)"

type trimmedError struct {
	msg string
	err error
}

func (e *trimmedError) Error() string { return e.msg }
func (e *trimmedError) Unwrap() error { return e.err }

func withoutMemlockHint(err error) error {
	if msg := err.Error(); strings.Contains(msg, memlockHint) {
		return &trimmedError{msg: strings.Replace(msg, memlockHint, "", 1), err: err}
	}
	return err
}

// Tier is the tier this counter's program was written for.
func (c *SendCounter) Tier() Tier { return c.tier }

// SendCount is the total over all CPUs since the program was attached.
type SendCount struct {
	Calls uint64
	// Bytes is the bytes sent for tracepoint tiers and the bytes asked to send for
	// function-entry tiers, which run before the send.
	Bytes uint64
}

// Read sums the per-CPU counters.
func (c *SendCounter) Read() (SendCount, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.counts == nil {
		return SendCount{}, errors.New("send counter is closed")
	}
	var perCPU []sockprobeSendCount
	if err := c.counts.Lookup(uint32(0), &perCPU); err != nil {
		return SendCount{}, fmt.Errorf("read send counts: %w", err)
	}
	var total SendCount
	for _, v := range perCPU {
		total.Calls += v.Calls
		total.Bytes += v.Bytes
	}
	return total, nil
}

// Close detaches the program and frees it and its map. Safe to call more than once.
func (c *SendCounter) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	if c.link != nil {
		errs = append(errs, c.link.Close())
		c.link = nil
	}
	if c.prog != nil {
		errs = append(errs, c.prog.Close())
		c.prog = nil
	}
	if c.counts != nil {
		errs = append(errs, c.counts.Close())
		c.counts = nil
	}
	return errors.Join(errs...)
}
