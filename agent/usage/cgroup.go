// Package usage measures CPU and memory of containers (from their cgroups), of processes (from
// procfs) and of the node, and turns two samples into rates over the window between them.
package usage

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultCgroupRoot is where cgroup hierarchies are mounted on every distribution we know of.
const DefaultCgroupRoot = "/sys/fs/cgroup"

// CgroupPaths locates one container's cgroup, in the form /proc/<pid>/cgroup gives it: a path
// inside each v1 controller's hierarchy and a path inside the v2 (unified) hierarchy.
type CgroupPaths struct {
	// V1 maps a v1 controller ("cpu", "cpuacct", "memory") to the path inside its hierarchy.
	V1 map[string]string
	// Unified is the path inside the v2 hierarchy ("" when the container has none).
	Unified string
}

// CgroupSample is one read of a container's cgroup counters. Counters are cumulative since the
// cgroup was created; gauges (memory) are values at read time.
type CgroupSample struct {
	// HasCPU is false when neither cpuacct (v1) nor a v2 cpu.stat could be read.
	HasCPU   bool
	CPUUsage time.Duration
	// HasThrottling is false without a CFS bandwidth controller (v1 cpu, or v2 with the cpu
	// controller enabled); a controller-less hybrid unified hierarchy has none.
	HasThrottling bool
	Throttled     time.Duration
	NrPeriods     uint64
	NrThrottled   uint64

	HasMemory bool
	// MemoryUsage is memory.usage_in_bytes (v1) or memory.current (v2).
	MemoryUsage  uint64
	InactiveFile uint64
	// WorkingSet is MemoryUsage − InactiveFile clamped at 0: the figure cAdvisor hands to the
	// kubelet and so the one `kubectl top` shows.
	WorkingSet uint64
	// Version says which hierarchy each figure came from, e.g. "v1" or "v2".
	CPUVersion, MemoryVersion string
	// At is when the CPU counters were read (monotonic); rates use it rather than the time of
	// the whole pass, so a sampler preempted mid-pass does not skew them.
	At time.Time
}

// CgroupReader reads cgroup controller files below a root (normally /sys/fs/cgroup).
type CgroupReader struct {
	root string
	// v2 is the mount point of the unified hierarchy: root itself on a pure v2 host, root/unified
	// on a hybrid one, "" when there is none.
	v2 string
}

// NewCgroupReader finds the unified hierarchy under root ("" means DefaultCgroupRoot).
func NewCgroupReader(root string) *CgroupReader {
	if root == "" {
		root = DefaultCgroupRoot
	}
	r := &CgroupReader{root: root}
	for _, dir := range []string{root, filepath.Join(root, "unified")} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err == nil {
			r.v2 = dir
			break
		}
	}
	return r
}

// Root is the directory the reader was built on.
func (r *CgroupReader) Root() string { return r.root }

// UnifiedMount is the mount point of the v2 hierarchy, "" when there is none.
func (r *CgroupReader) UnifiedMount() string { return r.v2 }

// Read reads CPU and memory for one cgroup. v1 controllers win over v2 when both are given,
// because on a hybrid host the v1 hierarchies carry the controllers and the unified one only the
// core files. It fails only when nothing at all could be read (typically: the cgroup is gone).
func (r *CgroupReader) Read(p CgroupPaths) (CgroupSample, error) {
	s, at, err := bracket(func() (CgroupSample, error) {
		var s CgroupSample
		return s, r.readCPU(p, &s)
	})
	var errs []error
	if err != nil {
		s = CgroupSample{}
		errs = append(errs, err)
	}
	s.At = at
	if err := r.readMemory(p, &s); err != nil {
		errs = append(errs, err)
	}
	if !s.HasCPU && !s.HasMemory {
		if len(errs) == 0 {
			errs = append(errs, errors.New("no cgroup path given"))
		}
		return s, errors.Join(errs...)
	}
	return s, nil
}

func (r *CgroupReader) v1Dir(ctrl string, p CgroupPaths) (string, bool) {
	rel, ok := p.V1[ctrl]
	if !ok {
		return "", false
	}
	// A controller comounted with others ("cpu,cpuacct") is also reachable through the
	// per-controller symlink hosts create next to the mount (systemd does), so one join covers
	// both layouts.
	return filepath.Join(r.root, ctrl, rel), true
}

func (r *CgroupReader) v2Dir(p CgroupPaths) (string, bool) {
	if r.v2 == "" || p.Unified == "" {
		return "", false
	}
	return filepath.Join(r.v2, p.Unified), true
}

func (r *CgroupReader) readCPU(p CgroupPaths, s *CgroupSample) error {
	if dir, ok := r.v1Dir("cpuacct", p); ok {
		ns, err := readUint(filepath.Join(dir, "cpuacct.usage"))
		if err != nil {
			return err
		}
		s.HasCPU, s.CPUUsage, s.CPUVersion = true, time.Duration(ns), "v1"
	} else if dir, ok := r.v2Dir(p); ok {
		kv, err := readKV(filepath.Join(dir, "cpu.stat"))
		if err != nil {
			return err
		}
		u, ok := kv["usage_usec"]
		if !ok {
			return fmt.Errorf("%s: no usage_usec", filepath.Join(dir, "cpu.stat"))
		}
		s.HasCPU, s.CPUUsage, s.CPUVersion = true, time.Duration(u)*time.Microsecond, "v2"
		// throttled_usec appears only where the cpu controller is enabled for this cgroup.
		if t, ok := kv["throttled_usec"]; ok {
			s.HasThrottling = true
			s.Throttled = time.Duration(t) * time.Microsecond
			s.NrPeriods, s.NrThrottled = kv["nr_periods"], kv["nr_throttled"]
		}
	}
	// The quota lives with the v1 cpu controller even where usage came from elsewhere (a hybrid
	// host with cpuacct unmounted reads usage from the unified tree).
	if dir, ok := r.v1Dir("cpu", p); ok && !s.HasThrottling {
		kv, err := readKV(filepath.Join(dir, "cpu.stat"))
		if err != nil && !s.HasCPU {
			return err
		}
		if t, ok := kv["throttled_time"]; ok {
			s.HasThrottling = true
			s.Throttled = time.Duration(t)
			s.NrPeriods, s.NrThrottled = kv["nr_periods"], kv["nr_throttled"]
		}
	}
	return nil
}

func (r *CgroupReader) readMemory(p CgroupPaths, s *CgroupSample) error {
	var usage uint64
	var inactive uint64
	if dir, ok := r.v1Dir("memory", p); ok {
		u, err := readUint(filepath.Join(dir, "memory.usage_in_bytes"))
		if err != nil {
			return err
		}
		kv, err := readKV(filepath.Join(dir, "memory.stat"))
		if err != nil {
			return err
		}
		// total_ includes descendants (a pod cgroup's containers), like usage_in_bytes does.
		usage, inactive, s.MemoryVersion = u, kv["total_inactive_file"], "v1"
	} else if dir, ok := r.v2Dir(p); ok {
		u, err := readUint(filepath.Join(dir, "memory.current"))
		if errors.Is(err, os.ErrNotExist) {
			// A unified hierarchy without the memory controller (hybrid hosts) has no memory files.
			return nil
		}
		if err != nil {
			return err
		}
		kv, err := readKV(filepath.Join(dir, "memory.stat"))
		if err != nil {
			return err
		}
		usage, inactive, s.MemoryVersion = u, kv["inactive_file"], "v2"
	} else {
		return nil
	}
	s.HasMemory, s.MemoryUsage, s.InactiveFile = true, usage, inactive
	if usage > inactive {
		s.WorkingSet = usage - inactive
	}
	return nil
}

// bracket runs read, a read of cumulative counters, and returns its result with the middle of
// the time it took. A read that got preempted (wide bracket) is retried a few times and the
// tightest kept, since a counter read 5 ms away from its timestamp is 5 ms of error in a rate.
func bracket[T any](read func() (T, error)) (T, time.Time, error) {
	// A cgroup file reads in tens of microseconds and a process's stat plus schedstat of a few
	// dozen threads in a few hundred; a preemption costs at least a scheduler tick (1–10 ms).
	const tight, attempts = time.Millisecond, 3
	var best T
	var at time.Time
	width := time.Duration(-1)
	for i := 0; i < attempts; i++ {
		t0 := time.Now()
		v, err := read()
		d := time.Since(t0)
		if err != nil {
			return v, t0, err
		}
		if width < 0 || d < width {
			best, at, width = v, t0.Add(d/2), d
		}
		if d <= tight {
			break
		}
	}
	return best, at, nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// readKV parses the "key value" lines of cpu.stat and memory.stat.
func readKV(path string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	kv := map[string]uint64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", path, line, err)
		}
		kv[f[0]] = v
	}
	return kv, nil
}
