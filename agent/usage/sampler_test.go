package usage

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"
)

func TestBetween(t *testing.T) {
	t0 := time.Now()
	sec := time.Second
	prev := &Sample{
		At: t0,
		Containers: map[string]CgroupSample{
			"a":     {At: t0, HasCPU: true, CPUUsage: 10 * sec, CPUVersion: "v2", HasThrottling: true, Throttled: sec, NrPeriods: 100, NrThrottled: 10},
			"reset": {At: t0, HasCPU: true, CPUUsage: 10 * sec, CPUVersion: "v1"},
			"gone":  {At: t0, HasCPU: true},
		},
		Processes: map[int]ProcessSample{
			7: {At: t0, PID: 7, StartTicks: 5, StatCPU: sec},
			8: {At: t0, PID: 8, StartTicks: 5},
		},
		Node: NodeSample{At: t0, Cores: 2, Busy: 100 * sec},
		Self: ProcessSample{At: t0, PID: 1, StartTicks: 1, StatCPU: sec},
	}
	// The pass took 2 s, but container "a" was read 10 ms later in it than in the first pass:
	// its own read times give 2.010 s.
	cur := &Sample{
		At: t0.Add(2 * sec),
		Containers: map[string]CgroupSample{
			"a":     {At: t0.Add(2010 * time.Millisecond), HasCPU: true, CPUUsage: 10*sec + 1005*time.Millisecond, CPUVersion: "v2", HasThrottling: true, Throttled: 1300 * time.Millisecond, NrPeriods: 120, NrThrottled: 13, HasMemory: true, MemoryUsage: 100, WorkingSet: 80},
			"reset": {At: t0.Add(2 * sec), HasCPU: true, CPUUsage: 1 * sec, CPUVersion: "v1"},
			"new":   {At: t0.Add(2 * sec), HasCPU: true},
		},
		Processes: map[int]ProcessSample{
			7: {At: t0.Add(2 * sec), PID: 7, Comm: "envoy", StartTicks: 5, StatCPU: 1500 * time.Millisecond, RSS: 10, PSS: 5, HasPSS: true},
			8: {At: t0.Add(2 * sec), PID: 8, StartTicks: 6},
		},
		Node:   NodeSample{At: t0.Add(2 * sec), Cores: 2, Busy: 101 * sec, MemTotal: 1000, MemUsed: 400},
		Self:   ProcessSample{At: t0.Add(2 * sec), PID: 1, StartTicks: 1, StatCPU: sec + 10*time.Millisecond},
		Errors: map[string]error{"pid 9": errors.New("gone")},
	}
	r, err := Between(prev, cur)
	if err != nil {
		t.Fatal(err)
	}
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	a := r.Containers["a"]
	if !a.HasCPU || !near(a.CPUMillicores, 500) || a.Throttled != 300*time.Millisecond ||
		a.Periods != 20 || a.ThrottledPeriods != 3 || a.WorkingSet != 80 || a.MemoryUsage != 100 {
		t.Errorf("container a: %+v", a)
	}
	if rs := r.Containers["reset"]; rs.HasCPU {
		t.Errorf("a counter that went backwards gave a rate: %+v", rs)
	}
	if _, ok := r.Containers["new"]; ok || r.Errors["container new"] == nil {
		t.Error("a container absent from the first sample got a rate")
	}
	if p := r.Processes[7]; !near(p.CPUMillicores, 250) || p.CPUSource != CPUFromStat || p.Comm != "envoy" || p.RSS != 10 || p.PSS != 5 {
		t.Errorf("process 7: %+v", p)
	}
	if _, ok := r.Processes[8]; ok || r.Errors["pid 8"] == nil {
		t.Error("a reused pid got a rate")
	}
	if r.Errors["pid 9"] == nil {
		t.Error("a read error of the second sample was dropped")
	}
	if r.Node == nil || !near(r.Node.CPUMillicores, 500) || r.Node.MemUsed != 400 || r.Node.Cores != 2 {
		t.Errorf("node: %+v", r.Node)
	}
	if r.Agent == nil || !near(r.Agent.CPUMillicores, 5) {
		t.Errorf("agent: %+v", r.Agent)
	}
	if _, err := Between(cur, prev); !errors.Is(err, ErrNoWindow) {
		t.Errorf("reversed samples: %v", err)
	}
}

func TestCollectorLive(t *testing.T) {
	s, err := NewSampler("", "")
	if err != nil {
		t.Fatal(err)
	}
	c := &Collector{Sampler: s}
	if _, err := c.Collect(Targets{}); !errors.Is(err, ErrFirstSample) {
		t.Fatalf("first collect: %v", err)
	}
	// Spin briefly so the agent figure has something to show.
	deadline := time.Now().Add(200 * time.Millisecond)
	for x := 0; time.Now().Before(deadline); x++ {
	}
	r, err := c.Collect(Targets{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Agent == nil || r.Node == nil {
		t.Fatalf("report: %+v", r)
	}
	t.Logf("agent %.1fm (%s) rss %d; node %.1fm of %d cores", r.Agent.CPUMillicores, r.Agent.CPUSource, r.Agent.RSS, r.Node.CPUMillicores, r.Node.Cores)
	if r.Agent.CPUMillicores <= 0 || r.Agent.CPUMillicores > float64(r.Node.Cores)*1000*1.05 {
		t.Errorf("agent cpu %.1fm after spinning", r.Agent.CPUMillicores)
	}
	if r.Node.MemTotal == 0 || r.Node.MemUsed == 0 || r.Node.MemUsed > r.Node.MemTotal {
		t.Errorf("node memory %+v", r.Node)
	}
}

func TestMeasureCancel(t *testing.T) {
	s, err := NewSampler("", "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Measure(ctx, Targets{}, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled measure: %v", err)
	}
	if _, err := s.Measure(context.Background(), Targets{}, 0); err == nil {
		t.Error("zero window accepted")
	}
}

func TestProto(t *testing.T) {
	c := ContainerUsage{CPUMillicores: 250, Throttled: 1500 * time.Millisecond, WorkingSet: 3 << 20}
	procs := []ProcessUsage{{PID: 1, RSS: 10, PSS: 6}, {PID: 2, RSS: 20, PSS: 4}}
	u := c.Usage(procs...).Proto()
	if u.CpuMillicores != 250 || u.CpuThrottled.AsDuration() != 1500*time.Millisecond ||
		u.MemoryWorkingSetBytes != 3<<20 || u.MemoryRssBytes != 30 || u.MemoryPssBytes != 10 {
		t.Errorf("container usage: %v", u)
	}
	p := ProcessUsage{PID: 42, Comm: "envoy", CPUMillicores: 12.5, RSS: 100, PSS: 80}.Proto("proxy")
	if p.Pid != 42 || p.Comm != "envoy" || p.Role != "proxy" || p.Usage.CpuMillicores != 12.5 ||
		p.Usage.MemoryRssBytes != 100 || p.Usage.MemoryPssBytes != 80 || p.Usage.MemoryWorkingSetBytes != 0 {
		t.Errorf("process usage: %v", p)
	}
	n := NodeUsage{Cores: 2, CPUMillicores: 900, MemTotal: 1000, MemUsed: 300}.Proto()
	if n.CpuCores != 2 || n.CpuMillicores != 900 || n.MemoryTotalBytes != 1000 || n.MemoryUsedBytes != 300 {
		t.Errorf("node usage: %v", n)
	}
}
