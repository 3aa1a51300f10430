package usage

import (
	"testing"
	"time"
)

const (
	v1Ctr = "/kubepods/burstable/pod0c3b6c9e-7b1a-4c1e-9d7a-5e2f8a1b9c00/4f1c2d3e5a6b"
	v2Ctr = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c3b6c9e_7b1a_4c1e_9d7a_5e2f8a1b9c00.slice/cri-containerd-4f1c2d3e5a6b.scope"
	hyCtr = "/kubepods/besteffort/podabc/9a8b7c"
)

func TestCgroupFixtures(t *testing.T) {
	cases := []struct {
		name  string
		root  string
		paths CgroupPaths
		want  CgroupSample
	}{{
		name:  "v1 separate mounts",
		root:  "testdata/cgroup-v1",
		paths: CgroupPaths{V1: map[string]string{"cpu": v1Ctr, "cpuacct": v1Ctr, "memory": v1Ctr}},
		want: CgroupSample{
			HasCPU: true, CPUUsage: 123456789012, CPUVersion: "v1",
			HasThrottling: true, Throttled: 8500 * time.Millisecond, NrPeriods: 1200, NrThrottled: 340,
			// total_inactive_file (descendants included), not inactive_file.
			HasMemory: true, MemoryUsage: 73400320, InactiveFile: 12582912, WorkingSet: 73400320 - 12582912, MemoryVersion: "v1",
		},
	}, {
		name:  "v1 comounted cpu,cpuacct through the per-controller symlinks",
		root:  "testdata/cgroup-v1-comount",
		paths: CgroupPaths{V1: map[string]string{"cpu": v1Ctr, "cpuacct": v1Ctr}},
		want: CgroupSample{
			HasCPU: true, CPUUsage: 5 * time.Second, CPUVersion: "v1",
			HasThrottling: true, Throttled: 3 * time.Millisecond, NrPeriods: 10, NrThrottled: 2,
		},
	}, {
		name:  "v1 working set clamps at zero",
		root:  "testdata/cgroup-v1",
		paths: CgroupPaths{V1: map[string]string{"memory": "/kubepods/clamped"}},
		want:  CgroupSample{HasMemory: true, MemoryUsage: 4096, InactiveFile: 8192, WorkingSet: 0, MemoryVersion: "v1"},
	}, {
		name:  "v2",
		root:  "testdata/cgroup-v2",
		paths: CgroupPaths{Unified: v2Ctr},
		want: CgroupSample{
			HasCPU: true, CPUUsage: 98765432 * time.Microsecond, CPUVersion: "v2",
			HasThrottling: true, Throttled: 4200 * time.Millisecond, NrPeriods: 500, NrThrottled: 120,
			HasMemory: true, MemoryUsage: 52428800, InactiveFile: 6291456, WorkingSet: 52428800 - 6291456, MemoryVersion: "v2",
		},
	}, {
		name:  "hybrid: cpu from the controller-less unified tree, memory from v1",
		root:  "testdata/cgroup-hybrid",
		paths: CgroupPaths{V1: map[string]string{"memory": hyCtr}, Unified: hyCtr},
		want: CgroupSample{
			HasCPU: true, CPUUsage: 2500 * time.Millisecond, CPUVersion: "v2",
			HasMemory: true, MemoryUsage: 8388608, InactiveFile: 1048576, WorkingSet: 8388608 - 1048576, MemoryVersion: "v1",
		},
	}, {
		name:  "hybrid: usage from unified, throttling from the v1 cpu controller",
		root:  "testdata/cgroup-hybrid",
		paths: CgroupPaths{V1: map[string]string{"cpu": hyCtr}, Unified: hyCtr},
		want: CgroupSample{
			HasCPU: true, CPUUsage: 2500 * time.Millisecond, CPUVersion: "v2",
			HasThrottling: true, Throttled: 12 * time.Millisecond, NrPeriods: 40, NrThrottled: 4,
		},
	}, {
		name:  "hybrid unified only: no memory controller, no throttling, still cpu",
		root:  "testdata/cgroup-hybrid",
		paths: CgroupPaths{Unified: hyCtr},
		want:  CgroupSample{HasCPU: true, CPUUsage: 2500 * time.Millisecond, CPUVersion: "v2"},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NewCgroupReader(tc.root).Read(tc.paths)
			if err != nil {
				t.Fatal(err)
			}
			if got.At.IsZero() {
				t.Error("no read time")
			}
			got.At = time.Time{}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestCgroupUnifiedMount(t *testing.T) {
	for root, want := range map[string]string{
		"testdata/cgroup-v2":     "testdata/cgroup-v2",
		"testdata/cgroup-hybrid": "testdata/cgroup-hybrid/unified",
		"testdata/cgroup-v1":     "",
	} {
		if got := NewCgroupReader(root).UnifiedMount(); got != want {
			t.Errorf("%s: unified mount %q, want %q", root, got, want)
		}
	}
}

func TestCgroupGone(t *testing.T) {
	r := NewCgroupReader("testdata/cgroup-v1")
	if _, err := r.Read(CgroupPaths{V1: map[string]string{"cpuacct": "/gone", "memory": "/gone"}}); err == nil {
		t.Error("reading a missing cgroup succeeded")
	}
	if _, err := r.Read(CgroupPaths{}); err == nil {
		t.Error("reading no paths succeeded")
	}
}
