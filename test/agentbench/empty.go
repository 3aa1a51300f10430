package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/kubectl-mesh/kubectl-mesh/agent/residency"
)

// emptyPrograms is a program that returns at once on each tracepoint the residency
// programs use for HTTP/1.1. What it costs is the kernel's dispatch of each event to BPF,
// the floor under any program there. With run-time accounting on, its mean run time is what
// the accounting itself adds to every run (two clock reads), the floor under the residency
// programs' figures.
type emptyPrograms struct {
	progs []*ebpf.Program
	links []link.Link
	stats interface{ Close() error }
}

func attachEmpty(stats bool) (*emptyPrograms, error) {
	return attachEmptyTo(stats, "tcp_rcv_space_adjust", "sock_send_length", "inet_sock_set_state")
}

func attachEmptyTo(stats bool, tracepoints ...string) (*emptyPrograms, error) {
	e := &emptyPrograms{}
	if stats {
		var err error
		if e.stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
			return nil, fmt.Errorf("run-time accounting: %w", err)
		}
	}
	for _, tp := range tracepoints {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         "empty_" + tp[:min(len(tp), 9)],
			Type:         ebpf.Tracing,
			AttachType:   ebpf.AttachTraceRawTp,
			AttachTo:     tp,
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
			License:      "GPL",
		})
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("load an empty tp_btf program for %s: %w", tp, err)
		}
		e.progs = append(e.progs, p)
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("attach an empty program to %s: %w", tp, err)
		}
		e.links = append(e.links, l)
	}
	return e, nil
}

// dispatchCost is what one event costs the task that raises it when an empty program is
// attached to its tracepoint, in ns: a unix datagram socket pair's write and read in a
// loop, with an empty program on sock_send_length and without it, in ABBA order. One CPU,
// warm caches and no other work make it the cost's lower bound, and steady enough to
// resolve a few ns.
func dispatchCost() (float64, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	const n = 20000
	msg, buf := []byte{1}, make([]byte, 1)
	loop := func() (time.Duration, error) {
		start := time.Now()
		for range n {
			if _, err := unix.Write(fds[0], msg); err != nil {
				return 0, err
			}
			if _, err := unix.Read(fds[1], buf); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	const quartets = 40
	var took [2]time.Duration // by attached
	for i := range 4 * quartets {
		k := 0
		var e *emptyPrograms
		if i%4 == 1 || i%4 == 2 { // ABBA
			k = 1
			if e, err = attachEmptyTo(false, "sock_send_length"); err != nil {
				return 0, err
			}
		}
		d, err := loop()
		if e != nil {
			e.Close()
		}
		if err != nil {
			return 0, err
		}
		took[k] += d
	}
	return float64((took[1] - took[0]).Nanoseconds()) / (2 * quartets * n), nil
}

// Stats sums the programs' runs and run time.
func (e *emptyPrograms) Stats() (residency.ProgramStats, error) {
	s := residency.ProgramStats{PerProgram: map[string]residency.ProgramStat{}}
	for _, p := range e.progs {
		ps, err := p.Stats()
		if err != nil {
			return s, err
		}
		s.Runs += ps.RunCount
		s.Runtime += ps.Runtime
	}
	return s, nil
}

func (e *emptyPrograms) Close() error {
	var errs []error
	for _, l := range e.links {
		errs = append(errs, l.Close())
	}
	for _, p := range e.progs {
		errs = append(errs, p.Close())
	}
	if e.stats != nil {
		errs = append(errs, e.stats.Close())
	}
	return errors.Join(errs...)
}
