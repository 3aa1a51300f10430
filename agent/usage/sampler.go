package usage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// Targets says what to sample besides the node and the agent itself.
type Targets struct {
	// Containers maps a caller-chosen key (normally the container ID) to its cgroup.
	Containers map[string]CgroupPaths
	PIDs       []int
}

// Sample is one pass over the targets. At carries Go's monotonic clock reading, so windows
// between samples are immune to wall-clock steps.
type Sample struct {
	At         time.Time
	Containers map[string]CgroupSample
	Processes  map[int]ProcessSample
	Node       NodeSample
	NodeErr    error
	Self       ProcessSample
	SelfErr    error
	// Errors holds per-target read failures, keyed "container <key>" or "pid <n>".
	Errors map[string]error
}

// Sampler reads cgroups and procfs.
type Sampler struct {
	Cgroups *CgroupReader
	Procs   *ProcReader
	// SelfPID is the process whose cost is reported apart as the agent's own.
	SelfPID int
}

// NewSampler builds a Sampler on the given roots ("" for the defaults) with the calling process
// as the agent.
func NewSampler(cgroupRoot, procRoot string) (*Sampler, error) {
	pr, err := NewProcReader(procRoot)
	if err != nil {
		return nil, err
	}
	return &Sampler{Cgroups: NewCgroupReader(cgroupRoot), Procs: pr, SelfPID: os.Getpid()}, nil
}

// Sample reads everything once. Failures are recorded per target rather than returned, since a
// container or process going away between discovery and sampling is normal.
func (s *Sampler) Sample(t Targets) *Sample {
	out := &Sample{
		Containers: make(map[string]CgroupSample, len(t.Containers)),
		Processes:  make(map[int]ProcessSample, len(t.PIDs)),
		Errors:     map[string]error{},
	}
	// The pass time is informational; each target's rate uses its own read time.
	out.At = time.Now()
	for key, p := range t.Containers {
		cs, err := s.Cgroups.Read(p)
		if err != nil {
			out.Errors["container "+key] = err
			continue
		}
		out.Containers[key] = cs
	}
	for _, pid := range t.PIDs {
		ps, err := s.Procs.Read(pid)
		if err != nil {
			out.Errors[fmt.Sprintf("pid %d", pid)] = err
			continue
		}
		out.Processes[pid] = ps
	}
	out.Node, out.NodeErr = s.Procs.ReadNode()
	out.Self, out.SelfErr = s.Procs.Read(s.SelfPID)
	return out
}

// Measure takes a sample, waits for window (or ctx), takes another and reports the rates between.
func (s *Sampler) Measure(ctx context.Context, t Targets, window time.Duration) (*Report, error) {
	if window <= 0 {
		return nil, fmt.Errorf("window %v: must be positive", window)
	}
	first := s.Sample(t)
	timer := time.NewTimer(window)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
	}
	return Between(first, s.Sample(t))
}

// ContainerUsage is a container's CPU over a window and its memory at the window's end.
type ContainerUsage struct {
	HasCPU        bool
	CPUMillicores float64
	HasThrottling bool
	Throttled     time.Duration
	// Periods and ThrottledPeriods count CFS periods in the window, and those that hit the quota.
	Periods, ThrottledPeriods uint64
	HasMemory                 bool
	MemoryUsage               uint64
	WorkingSet                uint64
}

// ProcessUsage is a process's CPU over a window and its memory at the window's end.
type ProcessUsage struct {
	PID           int
	Comm          string
	CPUMillicores float64
	CPUSource     CPUSource
	RSS           uint64
	PSS           uint64
	HasPSS        bool
}

// NodeUsage is the node's CPU over a window and its memory at the window's end.
type NodeUsage struct {
	Cores         int
	CPUMillicores float64
	MemTotal      uint64
	MemUsed       uint64
}

// Report holds rates between two samples. Targets present in only one sample are left out,
// with a reason in Errors.
type Report struct {
	// Window is between the starts of the two passes; each rate is over its own target's read
	// times, which differ from it by the time a pass takes.
	Window     time.Duration
	Containers map[string]ContainerUsage
	Processes  map[int]ProcessUsage
	Node       *NodeUsage
	// Agent is the agent's own process, reported apart from everything it measures.
	Agent  *ProcessUsage
	Errors map[string]error
}

// ErrNoWindow is returned when the second sample is not later than the first.
var ErrNoWindow = errors.New("usage: samples do not span a positive window")

// Between computes rates from prev to cur.
func Between(prev, cur *Sample) (*Report, error) {
	w := cur.At.Sub(prev.At)
	if w <= 0 {
		return nil, ErrNoWindow
	}
	r := &Report{
		Window:     w,
		Containers: make(map[string]ContainerUsage, len(cur.Containers)),
		Processes:  make(map[int]ProcessUsage, len(cur.Processes)),
		Errors:     map[string]error{},
	}
	for k, err := range cur.Errors {
		r.Errors[k] = err
	}
	for key, c := range cur.Containers {
		p, ok := prev.Containers[key]
		if !ok {
			r.Errors["container "+key] = errors.New("not in the previous sample")
			continue
		}
		r.Containers[key] = containerUsage(p, c, span(p.At, c.At, w))
	}
	for pid, c := range cur.Processes {
		p, ok := prev.Processes[pid]
		if !ok {
			r.Errors[fmt.Sprintf("pid %d", pid)] = errors.New("not in the previous sample")
			continue
		}
		pu, err := processUsage(p, c, span(p.At, c.At, w))
		if err != nil {
			r.Errors[fmt.Sprintf("pid %d", pid)] = err
			continue
		}
		r.Processes[pid] = pu
	}
	if prev.NodeErr == nil && cur.NodeErr == nil {
		r.Node = &NodeUsage{
			Cores:         cur.Node.Cores,
			CPUMillicores: millicores(cur.Node.Busy-prev.Node.Busy, span(prev.Node.At, cur.Node.At, w)),
			MemTotal:      cur.Node.MemTotal,
			MemUsed:       cur.Node.MemUsed,
		}
	} else {
		r.Errors["node"] = errors.Join(prev.NodeErr, cur.NodeErr)
	}
	if prev.SelfErr == nil && cur.SelfErr == nil {
		if a, err := processUsage(prev.Self, cur.Self, span(prev.Self.At, cur.Self.At, w)); err == nil {
			r.Agent = &a
		} else {
			r.Errors["agent"] = err
		}
	} else {
		r.Errors["agent"] = errors.Join(prev.SelfErr, cur.SelfErr)
	}
	return r, nil
}

// span is the window between two reads of one target, falling back to the pass window for
// samples without their own read times.
func span(a, b time.Time, pass time.Duration) time.Duration {
	if a.IsZero() || b.IsZero() || !b.After(a) {
		return pass
	}
	return b.Sub(a)
}

func containerUsage(p, c CgroupSample, w time.Duration) ContainerUsage {
	u := ContainerUsage{
		HasMemory:   c.HasMemory,
		MemoryUsage: c.MemoryUsage,
		WorkingSet:  c.WorkingSet,
	}
	// Counters only compare within one hierarchy; a reset (cgroup recreated under the same
	// path) shows as a decrease and yields no figure rather than a wrong one.
	if p.HasCPU && c.HasCPU && p.CPUVersion == c.CPUVersion && c.CPUUsage >= p.CPUUsage {
		u.HasCPU = true
		u.CPUMillicores = millicores(c.CPUUsage-p.CPUUsage, w)
	}
	if p.HasThrottling && c.HasThrottling && c.Throttled >= p.Throttled &&
		c.NrPeriods >= p.NrPeriods && c.NrThrottled >= p.NrThrottled {
		u.HasThrottling = true
		u.Throttled = c.Throttled - p.Throttled
		u.Periods = c.NrPeriods - p.NrPeriods
		u.ThrottledPeriods = c.NrThrottled - p.NrThrottled
	}
	return u
}

func processUsage(p, c ProcessSample, w time.Duration) (ProcessUsage, error) {
	if p.StartTicks != c.StartTicks {
		return ProcessUsage{}, fmt.Errorf("pid %d was reused during the window", c.PID)
	}
	d, src := processCPUDelta(p, c)
	return ProcessUsage{
		PID:           c.PID,
		Comm:          c.Comm,
		CPUMillicores: millicores(d, w),
		CPUSource:     src,
		RSS:           c.RSS,
		PSS:           c.PSS,
		HasPSS:        c.HasPSS,
	}, nil
}

func millicores(cpu, window time.Duration) float64 {
	if cpu < 0 {
		return 0
	}
	return float64(cpu) / float64(window) * 1000
}

// Collector keeps the previous sample so each call reports the window since the last one, the
// shape a periodic snapshot loop or a Prometheus scrape wants.
type Collector struct {
	Sampler *Sampler
	mu      sync.Mutex
	prev    *Sample
}

// ErrFirstSample is returned by the first Collect: one sample is not a rate.
var ErrFirstSample = errors.New("usage: first sample taken, no window yet")

// Collect samples t and reports rates since the previous call.
func (c *Collector) Collect(t Targets) (*Report, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur := c.Sampler.Sample(t)
	prev := c.prev
	c.prev = cur
	if prev == nil {
		return nil, ErrFirstSample
	}
	return Between(prev, cur)
}
