package usage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/procfs"
)

// DefaultProcRoot is where procfs is mounted.
const DefaultProcRoot = "/proc"

// userHZ is the unit of utime/stime in /proc/<pid>/stat. The kernel fixes USER_HZ at 100 on
// every architecture Kubernetes runs on; it is not the kernel's CONFIG_HZ.
const userHZ = 100

// ProcessSample is one read of a process. CPU figures are cumulative since the process started.
type ProcessSample struct {
	PID  int
	Comm string
	// StartTicks is the process start time in clock ticks since boot; a differing value for the
	// same PID means the PID was reused and the two samples are different processes.
	StartTicks uint64
	// StatCPU is utime+stime from /proc/<pid>/stat: whole thread group including exited threads,
	// in 10 ms steps.
	StatCPU time.Duration
	// Threads holds each live thread's run time in ns from /proc/<pid>/task/<tid>/schedstat
	// (sum_exec_runtime, the scheduler's own accounting). Nil when schedstat is unavailable.
	Threads map[int]time.Duration
	// At is when the CPU figures were read (monotonic).
	At  time.Time
	RSS uint64
	PSS uint64
	// HasPSS is false when smaps_rollup/smaps could not be read and RSS came from status VmRSS.
	HasPSS bool
}

// ProcReader reads per-process figures from a procfs mount.
type ProcReader struct {
	root string
	fs   procfs.FS
	// SkipSmaps avoids smaps_rollup, which walks every mapping under the mm lock; RSS then
	// comes from status and PSS is not reported.
	SkipSmaps bool
}

// NewProcReader opens procfs at root ("" means DefaultProcRoot).
func NewProcReader(root string) (*ProcReader, error) {
	if root == "" {
		root = DefaultProcRoot
	}
	fs, err := procfs.NewFS(root)
	if err != nil {
		return nil, err
	}
	return &ProcReader{root: root, fs: fs}, nil
}

// Root is the procfs mount the reader was built on.
func (r *ProcReader) Root() string { return r.root }

// FS is the underlying procfs handle, for node-wide files.
func (r *ProcReader) FS() procfs.FS { return r.fs }

// Read samples one process.
func (r *ProcReader) Read(pid int) (ProcessSample, error) {
	p, err := r.fs.Proc(pid)
	if err != nil {
		return ProcessSample{}, err
	}
	s, at, err := bracket(func() (ProcessSample, error) {
		st, err := p.Stat()
		if err != nil {
			return ProcessSample{}, err
		}
		return ProcessSample{
			PID:        pid,
			Comm:       st.Comm,
			StartTicks: st.Starttime,
			StatCPU:    time.Duration(uint64(st.UTime)+uint64(st.STime)) * (time.Second / userHZ),
			Threads:    r.threads(pid),
		}, nil
	})
	if err != nil {
		return ProcessSample{}, err
	}
	s.At = at
	if !r.SkipSmaps {
		if sm, err := p.ProcSMapsRollup(); err == nil {
			s.RSS, s.PSS, s.HasPSS = sm.Rss, sm.Pss, true
		}
	}
	if !s.HasPSS {
		status, err := p.NewStatus()
		if err != nil {
			return ProcessSample{}, err
		}
		s.RSS = status.VmRSS
	}
	return s, nil
}

// threads reads every live thread's schedstat run time. /proc/<pid>/schedstat alone is the
// leader thread only, which for Envoy or a Go program is a small part of the process.
func (r *ProcReader) threads(pid int) map[int]time.Duration {
	dir := filepath.Join(r.root, strconv.Itoa(pid), "task")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	m := make(map[int]time.Duration, len(ents))
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ns, err := readSchedstatRun(filepath.Join(dir, e.Name(), "schedstat"))
		if errors.Is(err, os.ErrNotExist) {
			// The thread exited between listing and reading; its time is gone from schedstat,
			// which Between notices because the thread set shrank.
			continue
		}
		if err != nil {
			// No CONFIG_SCHED_INFO, or an unexpected format: stat's coarser total is used instead.
			return nil
		}
		m[tid] = ns
	}
	return m
}

func readSchedstatRun(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	f := bytes.Fields(b)
	if len(f) < 1 {
		return 0, fmt.Errorf("%s: empty", path)
	}
	ns, err := strconv.ParseUint(string(f[0]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return time.Duration(ns), nil
}

// CPUSource names where a process's CPU figure came from.
type CPUSource string

const (
	// CPUFromSchedstat is per-thread sum_exec_runtime: nanoseconds.
	CPUFromSchedstat CPUSource = "schedstat"
	// CPUFromStat is utime+stime: 10 ms steps, but it keeps the time of threads that exited.
	CPUFromStat CPUSource = "stat"
)

// processCPUDelta is the CPU a process used between two samples. schedstat is preferred for its
// resolution, but only while it is complete: a thread that exited in the window took its run
// time with it, so then the thread-group total from stat is used.
func processCPUDelta(prev, cur ProcessSample) (time.Duration, CPUSource) {
	if prev.Threads != nil && cur.Threads != nil {
		var d time.Duration
		complete := true
		for tid, was := range prev.Threads {
			now, ok := cur.Threads[tid]
			if !ok || now < was {
				complete = false
				break
			}
			d += now - was
		}
		if complete {
			for tid, now := range cur.Threads {
				if _, ok := prev.Threads[tid]; !ok {
					d += now // born inside the window
				}
			}
			return d, CPUFromSchedstat
		}
	}
	if cur.StatCPU < prev.StatCPU {
		return 0, CPUFromStat
	}
	return cur.StatCPU - prev.StatCPU, CPUFromStat
}
