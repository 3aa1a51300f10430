//go:build linux && (386 || amd64 || arm64)

package residency

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
)

// hook is one program and the tracepoint it attaches to.
type hook struct {
	program, target string
	// queueing hooks run only for Options.Queueing.
	queueing bool
}

// hooks are the programs each tier runs. fentry and kprobe variants are not written: the
// tracepoints exist wherever those would be needed less, and those tiers report so.
var hooks = map[ebpftier.Tier][]hook{
	ebpftier.TPBTF: {
		{residencyProgTpBtfTcpRcvSpaceAdjust, "tcp_rcv_space_adjust", false},
		{residencyProgTpBtfSockSendLength, "sock_send_length", false},
		{residencyProgTpBtfInetSockSetState, "inet_sock_set_state", false},
		{residencyProgTpBtfSkDataReady, "sk_data_ready", true},
	},
	ebpftier.RawTP: {
		{residencyProgRawTpTcpRcvSpaceAdjust, "tcp_rcv_space_adjust", false},
		{residencyProgRawTpSockSendLength, "sock_send_length", false},
		{residencyProgRawTpInetSockSetState, "inet_sock_set_state", false},
		{residencyProgRawTpSkDataReady, "sk_data_ready", true},
	},
}

// ErrNotImplemented is returned for a tier that has no residency programs.
var ErrNotImplemented = errors.New("no residency programs for this tier")

var memlockOnce = sync.OnceValue(rlimit.RemoveMemlock)

// Options tune a Tracer; the zero value is the default.
type Options struct {
	// StaleAfter is the longest leg the programs pair; longer ones are counted as stale
	// (a response that never came, a connection left idle). Default 10 s.
	StaleAfter time.Duration
	// RunStats turns on the kernel's run-time accounting for Stats. It is node-wide: while
	// on, every BPF program on the node (a CNI's datapath too) pays two clock reads per run,
	// which on the 2-CPU VM this was measured on made an empty program's run cost 70–80 ns,
	// more than a rejected event of ours. So it is for diagnosis and benchmarks, and the
	// agent's measurements leave it off.
	RunStats bool
	// Queueing also measures connection-level queueing (ForwardRequest, ForwardResponse),
	// the method for loads whose requests cannot be paired with responses. It times arrivals
	// at sk_data_ready, a hook in the sender's softirq, and costs each of the proxy's writes
	// another socket lookup, so HTTP/1.1 measurements leave it off.
	Queueing bool
}

// ErrRunStatsOff is StatsErr when Options.RunStats was not asked for.
var ErrRunStatsOff = errors.New("run-time accounting not requested (Options.RunStats)")

// Tracer is the residency programs of one tier, loaded and attached, tracing a set of
// proxy processes.
type Tracer struct {
	tier ebpftier.Tier
	// mu keeps reads and tracked-set updates from racing Close.
	mu      sync.Mutex
	progs   map[string]*ebpf.Program
	links   []link.Link
	tracked *ebpf.Map
	// procs is tracked again, one slot per low bits of the tgid (bpf/residency.c).
	procs  *ebpf.Map
	ports  *ebpf.Map
	hist   *ebpf.Map
	counts *ebpf.Map
	// keys and socks are the socket table: which socket each slot holds, and its state.
	keys, socks *ebpf.Map
	others      []*ebpf.Map
	stats       io.Closer
	statErr     error
}

// Start loads and attaches the residency programs written for tier and traces the proxy
// processes pids (thread-group ids). Any failure means the tier is unavailable here.
func Start(tier ebpftier.Tier, pids []uint32) (*Tracer, error) {
	return StartWith(tier, pids, Options{})
}

// StartAuto tries tiers in turn (ebpftier.Order for the automatic choice) and keeps the
// first that loads and attaches; with none it returns a nil Tracer and every attempt.
func StartAuto(tiers []ebpftier.Tier, pids []uint32, opts Options) (*Tracer, []ebpftier.Attempt) {
	_, t, attempts := ebpftier.Select(tiers, func(tier ebpftier.Tier) (*Tracer, error) {
		return StartWith(tier, pids, opts)
	})
	return t, attempts
}

// StartWith is Start with options.
func StartWith(tier ebpftier.Tier, pids []uint32, opts Options) (*Tracer, error) {
	all, ok := hooks[tier]
	if !ok {
		return nil, fmt.Errorf("residency tier %s: %w", tier, ErrNotImplemented)
	}
	var hs []hook
	for _, h := range all {
		if !h.queueing || opts.Queueing {
			hs = append(hs, h)
		}
	}
	memlockErr := memlockOnce()
	spec, err := loadResidency()
	if err != nil {
		return nil, err
	}
	keep := map[string]bool{}
	for _, h := range hs {
		keep[h.program] = true
	}
	for name := range spec.Programs {
		if !keep[name] {
			delete(spec.Programs, name)
		}
	}
	if opts.StaleAfter > 0 {
		if err := spec.Variables[residencyVarStaleNs].Set(uint64(opts.StaleAfter)); err != nil {
			return nil, fmt.Errorf("set stale limit: %w", err)
		}
	}
	if opts.Queueing {
		if err := spec.Variables[residencyVarQueueing].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("turn on queueing: %w", err)
		}
	}
	t := &Tracer{tier: tier, progs: map[string]*ebpf.Program{}}
	t.statErr = ErrRunStatsOff
	if opts.RunStats {
		// On only while the returned handle is open (and no one else holds one); Close
		// releases it.
		t.stats, t.statErr = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	}

	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Close()
		if memlockErr != nil {
			return nil, fmt.Errorf("load residency programs for %s: %w (memlock rlimit not raised: %v)", tier, err, memlockErr)
		}
		return nil, fmt.Errorf("load residency programs for %s: %w", tier, err)
	}
	for _, h := range hs {
		t.progs[h.program] = coll.DetachProgram(h.program)
	}
	t.tracked = coll.DetachMap(residencyMapTracked)
	t.procs = coll.DetachMap(residencyMapProcs)
	t.ports = coll.DetachMap(residencyMapListenPorts)
	t.hist = coll.DetachMap(residencyMapHist)
	t.counts = coll.DetachMap(residencyMapCounters)
	t.keys = coll.DetachMap(residencyMapSkKeys)
	t.socks = coll.DetachMap(residencyMapSocks)
	t.others = []*ebpf.Map{coll.DetachMap(residencyMapThreads), coll.DetachMap(residencyMapScratch)}
	coll.Close()

	if err := t.Track(pids...); err != nil {
		t.Close()
		return nil, err
	}
	for _, h := range hs {
		l, err := ebpftier.Attach(tier, t.progs[h.program], h.target)
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("attach %s to %s: %w", h.program, h.target, err)
		}
		t.links = append(t.links, l)
	}
	return t, nil
}

// Tier is the tier whose programs are running.
func (t *Tracer) Tier() ebpftier.Tier { return t.tier }

// Track adds proxy processes to the traced set. The TCP ports listening in each one's
// network namespace (from /proc/<pid>/net) tell its accepted (downstream) sockets from
// the ones it opened (upstream), which matters for connections that already exist when
// tracing starts; where they cannot be read, the process's first act on each socket
// decides. Calling it again for a traced process refreshes its ports.
func (t *Tracer) Track(pids ...uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tracked == nil {
		return errors.New("residency tracer is closed")
	}
	for _, pid := range pids {
		v := residencyTrackedProc{Tgid: pid}
		ports, err := ListeningPorts(pid)
		if err == nil && len(ports) > 0 {
			for _, port := range ports {
				if err := t.ports.Update(port, uint8(1), ebpf.UpdateAny); err != nil {
					return fmt.Errorf("add listening port %d of pid %d: %w", port, pid, err)
				}
			}
			v.HasPorts = 1
		}
		if err := t.tracked.Update(pid, v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("track pid %d: %w", pid, err)
		}
	}
	return t.syncSlots(pids)
}

// tgidSlot is the slot of bpf/residency.c's procs a tgid maps to.
func tgidSlot(pid uint32) uint32 { return pid & (tgidSlots - 1) }

const (
	tgidSlots  = 1 << 14
	tgidShared = 0xFFFFFFFF
)

// syncSlots rewrites the procs slots that pids map to from tracked: empty, the one process
// that maps there, or shared (the programs then look the task up in tracked). A slot that
// already holds its process is left alone, so its pairing state survives a refresh.
func (t *Tracer) syncSlots(pids []uint32) error {
	bySlot := map[uint32][]residencyTrackedProc{}
	var pid uint32
	var v residencyTrackedProc
	it := t.tracked.Iterate()
	for it.Next(&pid, &v) {
		bySlot[tgidSlot(pid)] = append(bySlot[tgidSlot(pid)], v)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list tracked pids: %w", err)
	}
	for _, pid := range pids {
		slot := tgidSlot(pid)
		var want residencyTrackedProc
		switch in := bySlot[slot]; len(in) {
		case 0:
		case 1:
			want = in[0]
			var have residencyTrackedProc
			if err := t.procs.Lookup(slot, &have); err == nil && have.Tgid == want.Tgid && have.HasPorts == want.HasPorts {
				continue
			}
		default:
			want.Tgid = tgidShared
		}
		if err := t.procs.Update(slot, want, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("pid %d: set its slot: %w", pid, err)
		}
	}
	return nil
}

// ListeningPorts lists the TCP ports in LISTEN state in pid's network namespace.
func ListeningPorts(pid uint32) ([]uint16, error) {
	var ports []uint16
	var errs []error
	for _, name := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ports = append(ports, parseListening(data)...)
	}
	if len(errs) == 2 {
		return nil, errors.Join(errs...)
	}
	slices.Sort(ports)
	return slices.Compact(ports), nil
}

// Untrack removes proxy processes from the traced set. Unknown pids are ignored.
func (t *Tracer) Untrack(pids ...uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tracked == nil {
		return errors.New("residency tracer is closed")
	}
	for _, pid := range pids {
		if err := t.tracked.Delete(pid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("untrack pid %d: %w", pid, err)
		}
	}
	return t.syncSlots(pids)
}

// SetTracked makes pids the traced set: discovery calls it with the node's current proxies.
func (t *Tracer) SetTracked(pids []uint32) error {
	current, err := t.Tracked()
	if err != nil {
		return err
	}
	var gone []uint32
	for _, pid := range current {
		if !slices.Contains(pids, pid) {
			gone = append(gone, pid)
		}
	}
	if err := t.Untrack(gone...); err != nil {
		return err
	}
	return t.Track(pids...)
}

// Tracked lists the traced processes.
func (t *Tracer) Tracked() ([]uint32, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tracked == nil {
		return nil, errors.New("residency tracer is closed")
	}
	var pids []uint32
	var pid uint32
	var v residencyTrackedProc
	it := t.tracked.Iterate()
	for it.Next(&pid, &v) {
		pids = append(pids, pid)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list tracked pids: %w", err)
	}
	slices.Sort(pids)
	return pids, nil
}

// Read returns every histogram and counter, summed over CPUs, since the programs loaded.
// Subtract an earlier Snapshot for a window.
func (t *Tracer) Read() (Snapshot, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var s Snapshot
	if t.hist == nil {
		return s, errors.New("residency tracer is closed")
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return s, err
	}
	counts, err := readPerCPU(t.hist, int(Metrics)*Buckets, cpus)
	if err != nil {
		return s, fmt.Errorf("read residency histograms: %w", err)
	}
	for i, c := range counts {
		s.Histograms[i/Buckets].Counts[i%Buckets] = c
	}
	counters, err := readPerCPU(t.counts, numCounters, cpus)
	if err != nil {
		return s, fmt.Errorf("read residency counters: %w", err)
	}
	for i, c := range counters {
		s.Counters.set(i, c)
	}
	return s, nil
}

// readPerCPU sums a per-CPU array of u64 over CPUs: one batch call where the kernel has
// them (5.6+), one lookup per key elsewhere.
func readPerCPU(m *ebpf.Map, n, cpus int) ([]uint64, error) {
	sums := make([]uint64, n)
	keys := make([]uint32, n)
	vals := make([]uint64, n*cpus)
	var cursor ebpf.MapBatchCursor
	got, err := m.BatchLookup(&cursor, keys, vals, nil)
	if err == nil || errors.Is(err, ebpf.ErrKeyNotExist) {
		if got == n {
			for i := range got {
				for _, v := range vals[i*cpus : (i+1)*cpus] {
					sums[keys[i]] += v
				}
			}
			return sums, nil
		}
	} else if !errors.Is(err, ebpf.ErrNotSupported) {
		return nil, err
	}
	per := make([]uint64, cpus)
	for i := range n {
		if err := m.Lookup(uint32(i), &per); err != nil {
			return nil, err
		}
		for _, v := range per {
			sums[i] += v
		}
	}
	return sums, nil
}

// Stats returns the kernel's run count and run time of every attached program. Both are
// zero unless run-time accounting is on (Options.RunStats, or another holder of it on the
// node); StatsErr says why not.
func (t *Tracer) Stats() (ProgramStats, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := ProgramStats{PerProgram: map[string]ProgramStat{}}
	if t.tracked == nil {
		return s, errors.New("residency tracer is closed")
	}
	for name, p := range t.progs {
		ps, err := p.Stats()
		if err != nil {
			return s, fmt.Errorf("stats of %s: %w", name, err)
		}
		s.PerProgram[name] = ProgramStat{Runs: ps.RunCount, Runtime: ps.Runtime}
		s.Runs += ps.RunCount
		s.Runtime += ps.Runtime
	}
	return s, nil
}

// StatsErr is why run-time accounting could not be enabled, or nil.
func (t *Tracer) StatsErr() error { return t.statErr }

// Close detaches and frees everything. Safe to call more than once.
func (t *Tracer) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	for name, p := range t.progs {
		errs = append(errs, p.Close())
		delete(t.progs, name)
	}
	for _, m := range append([]*ebpf.Map{t.tracked, t.procs, t.ports, t.hist, t.counts, t.keys, t.socks}, t.others...) {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	t.tracked, t.procs, t.ports, t.hist, t.counts, t.keys, t.socks, t.others = nil, nil, nil, nil, nil, nil, nil, nil
	if t.stats != nil {
		errs = append(errs, t.stats.Close())
		t.stats = nil
	}
	return errors.Join(errs...)
}
