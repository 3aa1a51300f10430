package main

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/kubectl-mesh/kubectl-mesh/agent/residency"
)

// emptyPrograms is a program that returns at once on each sock tracepoint the residency
// programs use, with run-time accounting on: its mean run time is what the accounting itself
// adds to every run (two clock reads), the floor under the residency programs' figures.
type emptyPrograms struct {
	progs []*ebpf.Program
	links []link.Link
	stats interface{ Close() error }
}

func attachEmpty() (*emptyPrograms, error) {
	e := &emptyPrograms{}
	var err error
	if e.stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
		return nil, fmt.Errorf("run-time accounting: %w", err)
	}
	for _, tp := range []string{"sk_data_ready", "sock_recv_length", "sock_send_length", "inet_sock_set_state"} {
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
