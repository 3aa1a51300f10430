package usage

import (
	"os"
	"testing"
	"time"
)

func TestProcFixtures(t *testing.T) {
	r, err := NewProcReader("testdata/proc")
	if err != nil {
		t.Fatal(err)
	}
	envoy, err := r.Read(4242)
	if err != nil {
		t.Fatal(err)
	}
	if envoy.Comm != "envoy" || envoy.StartTicks != 98765 || envoy.StatCPU != 18010*time.Millisecond {
		t.Errorf("envoy stat: %+v", envoy)
	}
	if len(envoy.Threads) != 2 || envoy.Threads[4242] != 2*time.Second || envoy.Threads[4243] != 16012345678 {
		t.Errorf("envoy threads: %v", envoy.Threads)
	}
	if !envoy.HasPSS || envoy.RSS != 36864<<10 || envoy.PSS != 30720<<10 {
		t.Errorf("envoy memory: rss %d pss %d has %v", envoy.RSS, envoy.PSS, envoy.HasPSS)
	}

	// No smaps_rollup, smaps or task directory: RSS from status, CPU from stat only.
	pilot, err := r.Read(4343)
	if err != nil {
		t.Fatal(err)
	}
	if pilot.Comm != "pilot-agent" || pilot.StatCPU != 3*time.Second || pilot.Threads != nil {
		t.Errorf("pilot-agent stat: %+v", pilot)
	}
	if pilot.HasPSS || pilot.RSS != 12288<<10 {
		t.Errorf("pilot-agent memory: %+v", pilot)
	}

	if _, err := r.Read(999999); err == nil {
		t.Error("missing pid read without error")
	}

	n, err := r.ReadNode()
	if err != nil {
		t.Fatal(err)
	}
	want := NodeSample{Cores: 2, Busy: 135 * time.Second, MemTotal: 24681684 << 10, MemUsed: (24681684 - 23678976) << 10}
	n.At = time.Time{}
	if n != want {
		t.Errorf("node %+v, want %+v", n, want)
	}
}

func TestProcSelfLive(t *testing.T) {
	r, err := NewProcReader("")
	if err != nil {
		t.Fatal(err)
	}
	s, err := r.Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// A Go test binary has several threads and has run some code by now.
	if len(s.Threads) < 2 || s.StatCPU < 0 || s.RSS == 0 || !s.HasPSS || s.PSS == 0 {
		t.Errorf("self: %+v", s)
	}
}

func TestProcessCPUDelta(t *testing.T) {
	ms := time.Millisecond
	prev := ProcessSample{StatCPU: 100 * ms, Threads: map[int]time.Duration{1: 50 * ms, 2: 40 * ms}}
	cases := []struct {
		name    string
		cur     ProcessSample
		want    time.Duration
		wantSrc CPUSource
	}{
		{"threads stable", ProcessSample{StatCPU: 120 * ms, Threads: map[int]time.Duration{1: 61 * ms, 2: 47 * ms}}, 18 * ms, CPUFromSchedstat},
		{"thread born", ProcessSample{StatCPU: 130 * ms, Threads: map[int]time.Duration{1: 55 * ms, 2: 40 * ms, 3: 25 * ms}}, 30 * ms, CPUFromSchedstat},
		// Thread 2 exited taking its schedstat with it; stat still has it.
		{"thread exited", ProcessSample{StatCPU: 170 * ms, Threads: map[int]time.Duration{1: 60 * ms}}, 70 * ms, CPUFromStat},
		{"no schedstat", ProcessSample{StatCPU: 110 * ms}, 10 * ms, CPUFromStat},
	}
	for _, tc := range cases {
		got, src := processCPUDelta(prev, tc.cur)
		if got != tc.want || src != tc.wantSrc {
			t.Errorf("%s: %v from %s, want %v from %s", tc.name, got, src, tc.want, tc.wantSrc)
		}
	}
}
