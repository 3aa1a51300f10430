package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
	"github.com/kubectl-mesh/kubectl-mesh/agent/netns/podtest"
	"github.com/kubectl-mesh/kubectl-mesh/agent/residency"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
	"github.com/prometheus/procfs"
)

type tracingConfig struct {
	quartets    int           // ABBA quartets of windows with tracing switched on and off
	window      time.Duration // their length
	round       time.Duration // the length of the accounting rounds
	connections int
}

// mode is what a round attaches.
type mode int

const (
	onStats   mode = iota // the residency programs tracing the proxy, run-time accounting on
	untracked             // the programs attached, nothing tracked, accounting on
	empty                 // an empty program on each of their tracepoints, accounting on
)

var modeNames = map[mode]string{onStats: "on+stats", untracked: "untracked", empty: "empty"}

// roundResult is one load round.
type roundResult struct {
	rate   float64
	errors uint64
	// requests completed and the CPU time the exchange's own processes (this load generator,
	// the proxy and the upstream: the programs run in their tasks and softirqs) spent over
	// the round. Other work on the machine is left out.
	requests uint64
	cpu      time.Duration
	// The programs' runs and run time, per program, and the tracked events the tracer saw.
	runs    uint64
	runtime time.Duration
	perProg map[string]residency.ProgramStat
	events  uint64
}

// measureTracing drives an nginx reverse proxy (in front of an nginx upstream) at its maximum
// closed-loop rate, in windows without and with the residency programs tracing the proxy's
// processes (measureToggled), and compares them; the same windows also give the exchange's
// CPU time per request (its own processes only). Windows with empty programs on the same
// tracepoints instead give the floor under any program there: what the kernel's dispatch of
// an event to BPF costs this exchange, which dispatchCost also times per event.
//
// The tracing windows run the tracer as the agent does, without the kernel's run-time
// accounting, which would slow every BPF program on the node. Separate rounds turn it on to
// measure the programs' run time per event: tracing the proxy, attached with nothing
// tracked (the cost of rejecting an event), and an empty program (the accounting's own floor).
func measureTracing(ctx context.Context, cfg tracingConfig) (rows []row, err error) {
	var cl cleanups
	defer func() {
		if cerr := cl.run(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		return nil, errors.New("nginx not found; install Debian's: apt-get install nginx")
	}
	c, err := startChain(ctx, &cl, nginx, cfg)
	if err != nil {
		return nil, err
	}
	logf("upstream nginx %v, proxy nginx %v on %s", c.upstream, c.proxy, c.load.Target)
	parts := append(append([]int{os.Getpid()}, c.upstream...), c.proxy...)
	round := func(m mode) (roundResult, error) {
		r, err := runRound(ctx, c.load, m, c.pids(), parts)
		if err != nil {
			return r, fmt.Errorf("round %s: %w", modeNames[m], err)
		}
		logf("round %-9s %6.0f req/s, %d errors, CPU %.1f µs/req, tracked events %.2f/req, BPF runs %d (mean %v)",
			modeNames[m], r.rate, r.errors, r.cpuPerRequest(), float64(r.events)/float64(max(r.requests, 1)), r.runs, meanRun(r.runs, r.runtime))
		return r, nil
	}

	var tier ebpftier.Tier
	trace := func() (attached, error) {
		tr, attempts := residency.StartAuto(ebpftier.Order, c.pids(), residency.Options{})
		if tr == nil {
			return nil, fmt.Errorf("no residency tier attached: %v", attempts)
		}
		tier = tr.Tier()
		return tr, nil
	}
	logf("%d quartets of %v windows, tracing switched on and off (ABBA) under one load", cfg.quartets, cfg.window)
	windows, err := measureToggled(ctx, c, cfg.quartets, cfg.window, trace)
	if err != nil {
		return rows, fmt.Errorf("tracing windows: %w", err)
	}
	floorQuartets := max(cfg.quartets/2, 1)
	logf("%d quartets of %v windows, empty programs switched on and off", floorQuartets, cfg.window)
	floorWindows, err := measureToggled(ctx, c, floorQuartets, cfg.window, func() (attached, error) { return attachEmpty(false) })
	if err != nil {
		return rows, fmt.Errorf("empty-program windows: %w", err)
	}
	dispatch, err := dispatchCost()
	if err != nil {
		return rows, fmt.Errorf("dispatch cost: %w", err)
	}
	acct := map[mode][]roundResult{}
	for _, m := range []mode{onStats, untracked, empty, onStats, untracked, empty} {
		r, err := round(m)
		if err != nil {
			return rows, err
		}
		acct[m] = append(acct[m], r)
	}

	var rateOn, rateOff, cpuOn, cpuOff []float64
	var events, paired, drops, onRequests uint64
	for _, w := range windows {
		if w.on {
			rateOn, cpuOn = append(rateOn, w.rate()), append(cpuOn, w.cpuPerRequest())
			events, paired, drops, onRequests = events+w.events, paired+w.paired, drops+w.drops, onRequests+w.requests
		} else {
			rateOff, cpuOff = append(rateOff, w.rate()), append(cpuOff, w.cpuPerRequest())
		}
	}
	rateQuartets, cpuQuartets := quartetRatios(windows)
	floorRate, floorCPU := quartetRatios(floorWindows)
	rows = append(rows,
		row{fmt.Sprintf("proxied req/s, tracing off / on, tier %s (medians of %d windows of %v each, %d conns)", tier, len(rateOff), cfg.window, cfg.connections),
			fmt.Sprintf("%.0f / %.0f", median(rateOff), median(rateOn)), "-", ""},
		ratioRow(fmt.Sprintf("throughput ratio on/off (mean of %d ABBA quartets of windows, 95%% interval)", len(rateQuartets)), rateQuartets),
		row{"CPU per request (load process+proxy+upstream), off / on (medians)", fmt.Sprintf("%.1f / %.1f µs", median(cpuOff), median(cpuOn)), "-", ""},
		ratioRow("CPU-bound throughput ratio: CPU/req off ÷ on (mean of quartets)", cpuQuartets),
		row{"tracked events per request / paired / drops (tracing windows)", fmt.Sprintf("%.2f / %d / %d", float64(events)/float64(max(onRequests, 1)), paired, drops), "-", ""},
		ratioRow(fmt.Sprintf("the floor: throughput ratio with empty programs on the same tracepoints (%d quartets)", len(floorRate)), floorRate),
		ratioRow("the floor, CPU-bound: CPU/req off ÷ empty programs", floorCPU),
		row{"kernel dispatch per event to an empty program (socket write+read loop)", fmt.Sprintf("%.0f ns", dispatch), "-", ""},
	)
	var errs uint64
	for _, rs := range acct {
		for _, r := range rs {
			errs += r.errors
		}
	}
	rows = append(rows, row{"load errors (accounting rounds)", strconv.FormatUint(errs, 10), "0", verdict(errs == 0)})

	// Run time per event. The accounting rounds' runs include every socket event on the node,
	// other programs' traffic too; those are all rejections, which the untracked rounds cost.
	sum := func(rs []roundResult) (runs, events, requests uint64, runtime time.Duration, perProg map[string]residency.ProgramStat) {
		perProg = map[string]residency.ProgramStat{}
		for _, r := range rs {
			runs, events, requests, runtime = runs+r.runs, events+r.events, requests+r.requests, runtime+r.runtime
			for name, ps := range r.perProg {
				acc := perProg[name]
				acc.Runs, acc.Runtime = acc.Runs+ps.Runs, acc.Runtime+ps.Runtime
				perProg[name] = acc
			}
		}
		return
	}
	runs, ev, _, runtime, perProg := sum(acct[onStats])
	rejRuns, _, _, rejTime, _ := sum(acct[untracked])
	floorRuns, _, _, floorTime, _ := sum(acct[empty])
	if runs == 0 || rejRuns == 0 || runtime == 0 {
		return append(rows, row{"mean BPF run time per event", "not measured: run-time accounting refused or no runs", "< 300 ns", "MISSES target"}), nil
	}
	reject := float64(rejTime.Nanoseconds()) / float64(rejRuns)
	tracked := (float64(runtime.Nanoseconds()) - float64(runs-ev)*reject) / float64(max(ev, 1))
	// Each tracked event at the proxy has an untracked counterpart at the client or the
	// upstream (a send for each arrival, a read for each send), so the exchange's own
	// events are half tracked, half rejected.
	exchange := (tracked + reject) / 2
	names := slices.Sorted(maps.Keys(perProg))
	rows = append(rows,
		row{fmt.Sprintf("mean BPF run time per event of the proxied exchange ((tracked+rejected)/2)"), fmt.Sprintf("%.0f ns", exchange), "< 300 ns", verdict(exchange < 300)},
		row{fmt.Sprintf("  per tracked event (estimated from %d events)", ev), fmt.Sprintf("%.0f ns", tracked), "-", ""},
		row{fmt.Sprintf("  per rejected event (nothing tracked, %d runs)", rejRuns), fmt.Sprintf("%.0f ns", reject), "-", ""},
		row{fmt.Sprintf("  per run of an empty program: the accounting's floor (%d runs)", floorRuns), fmt.Sprintf("%d ns", meanRun(floorRuns, floorTime).Nanoseconds()), "-", ""},
		row{fmt.Sprintf("  per run, all runs while tracing (%d runs, other traffic included)", runs), fmt.Sprintf("%d ns", meanRun(runs, runtime).Nanoseconds()), "-", ""},
	)
	for _, name := range names {
		ps := perProg[name]
		rows = append(rows, row{"    " + name, fmt.Sprintf("%d runs, mean %d ns", ps.Runs, meanRun(ps.Runs, ps.Runtime).Nanoseconds()), "-", ""})
	}
	// Without the accounting, as the agent runs, a request costs its events' work (their run
	// time less the accounting's floor) and the kernel's dispatch of every run to BPF.
	requests := float64(max(sumRequests(acct[onStats]), 1))
	floor := float64(meanRun(floorRuns, floorTime).Nanoseconds())
	work := float64(ev) / requests * (tracked + reject - 2*floor)
	runsPerReq := float64(runs) / requests
	perReq := work + runsPerReq*dispatch
	est := median(cpuOff) * 1000 / (median(cpuOff)*1000 + perReq)
	floorEst := median(cpuOff) * 1000 / (median(cpuOff)*1000 + runsPerReq*dispatch)
	rows = append(rows,
		row{fmt.Sprintf("cost per request: programs' work + %.1f runs × dispatch", runsPerReq), fmt.Sprintf("%.0f + %.0f ns", work, runsPerReq*dispatch), "-", ""},
		row{"throughput ratio expected from it: CPU/(CPU + work + dispatch), CPU/req off", fmt.Sprintf("%.3f×", est), "≥ 0.97×", verdict(est >= 0.97)},
		row{"  the same for empty programs: CPU/(CPU + dispatch)", fmt.Sprintf("%.3f×", floorEst), "-", ""},
	)
	return rows, nil
}

// startChain starts an upstream nginx and a reverse proxy nginx in front of it, and warms
// both with a second of load.
func startChain(ctx context.Context, cl *cleanups, nginx string, cfg tracingConfig) (chain, error) {
	var c chain
	upPort, err := freePort()
	if err != nil {
		return c, err
	}
	upstream := fmt.Sprintf(`
  server {
    listen 127.0.0.1:%d;
    location / { return 200 "ok\n"; }
    location = /status { stub_status; }
  }`, upPort)
	c.upstreamAddr = fmt.Sprintf("127.0.0.1:%d", upPort)
	if c.upstream, err = startNginx(ctx, cl, nginx, upstream, upPort); err != nil {
		return c, err
	}
	proxyPort, err := freePort()
	if err != nil {
		return c, err
	}
	proxy := fmt.Sprintf(`
  upstream app {
    server 127.0.0.1:%d;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:%d;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }`, upPort, proxyPort)
	if c.proxy, err = startNginx(ctx, cl, nginx, proxy, proxyPort); err != nil {
		return c, err
	}
	c.load = loadgen.Options{
		Target:      fmt.Sprintf("127.0.0.1:%d", proxyPort),
		Protocol:    loadgen.HTTP1,
		Connections: cfg.connections,
		Duration:    cfg.round,
	}
	// No warm-up inside rounds: the BPF and CPU windows span the whole round, so its request
	// count must too. The connections and both nginx are warmed once here instead.
	warm := c.load
	warm.Duration = time.Second
	if _, err := loadgen.Run(ctx, warm); err != nil {
		return c, fmt.Errorf("warm-up: %w", err)
	}
	return c, nil
}

func sumRequests(rs []roundResult) uint64 {
	var n uint64
	for _, r := range rs {
		n += r.requests
	}
	return n
}

// runRound runs one load round with m attached and the run-time accounting on; attaching
// and detaching stay outside the measured window.
func runRound(ctx context.Context, load loadgen.Options, m mode, pids []uint32, parts []int) (roundResult, error) {
	var r roundResult
	var tr *residency.Tracer
	var stats func() (residency.ProgramStats, error)
	switch m {
	case onStats, untracked:
		if m == untracked {
			pids = nil
		}
		var attempts []ebpftier.Attempt
		tr, attempts = residency.StartAuto(ebpftier.Order, pids, residency.Options{RunStats: true})
		if tr == nil {
			return r, fmt.Errorf("no residency tier attached: %v", attempts)
		}
		defer tr.Close()
		if err := tr.StatsErr(); err != nil {
			return r, fmt.Errorf("run-time accounting: %w", err)
		}
		stats = tr.Stats
	case empty:
		e, err := attachEmpty(true)
		if err != nil {
			return r, err
		}
		defer e.Close()
		stats = e.Stats
	}
	before, err := stats()
	if err != nil {
		return r, err
	}
	var snapBefore residency.Snapshot
	if tr != nil {
		if snapBefore, err = tr.Read(); err != nil {
			return r, err
		}
	}
	cpuBefore, err := processCPU(parts)
	if err != nil {
		return r, err
	}
	res, err := loadgen.Run(ctx, load)
	if err != nil {
		return r, err
	}
	if res.Stopped {
		return r, ctx.Err()
	}
	cpuAfter, err := processCPU(parts)
	if err != nil {
		return r, err
	}
	r.rate, r.errors, r.requests, r.cpu = res.AchievedRate, res.Errors, res.Requests, cpuAfter-cpuBefore
	after, err := stats()
	if err != nil {
		return r, err
	}
	r.runs, r.runtime = after.Runs-before.Runs, after.Runtime-before.Runtime
	r.perProg = map[string]residency.ProgramStat{}
	for name, ps := range after.PerProgram {
		b := before.PerProgram[name]
		r.perProg[name] = residency.ProgramStat{Runs: ps.Runs - b.Runs, Runtime: ps.Runtime - b.Runtime}
	}
	if tr != nil {
		snap, err := tr.Read()
		if err != nil {
			return r, err
		}
		d := snap.Sub(&snapBefore)
		r.events = d.Counters.Events
		if m == untracked && r.events != 0 {
			return r, fmt.Errorf("the programs counted %d events with nothing tracked", r.events)
		}
	}
	return r, nil
}

// startNginx runs Debian's nginx with one worker in the foreground on a config of its own in
// a temp dir, waits until it answers on port, and returns its master and worker PIDs.
func startNginx(ctx context.Context, cl *cleanups, bin, servers string, port int) ([]int, error) {
	dir, err := os.MkdirTemp("", "agentbench-nginx-")
	if err != nil {
		return nil, err
	}
	cl.add(func() error { return os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
%[2]s
}
`, dir, servers)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", confPath, "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	master := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	cl.add(func() error {
		workers := podtest.ChildPIDs(master)
		_ = syscall.Kill(master, syscall.SIGTERM)
		select {
		case <-exited:
			return nil
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(master, syscall.SIGKILL)
			for _, w := range workers {
				_ = syscall.Kill(w, syscall.SIGKILL)
			}
			<-exited
			return errors.New("nginx ignored SIGTERM")
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if w := podtest.ChildPIDs(master); resp.StatusCode == http.StatusOK && len(w) > 0 {
				return append([]int{master}, w...), nil
			}
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("nginx exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("nginx not answering on %s: %v", url, err)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// cpuPerRequest is the machine's busy CPU time per request over the round, in µs.
func (r roundResult) cpuPerRequest() float64 {
	if r.requests == 0 {
		return 0
	}
	return float64(r.cpu.Microseconds()) / float64(r.requests)
}

func meanRun(runs uint64, runtime time.Duration) time.Duration {
	if runs == 0 {
		return 0
	}
	return runtime / time.Duration(runs)
}

// processCPU is the CPU time (user and system) the given processes have used: this process
// from getrusage (finer than /proc's 10 ms steps), the others from /proc/<pid>/stat.
func processCPU(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		if pid == os.Getpid() {
			var ru syscall.Rusage
			if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
				return 0, err
			}
			total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
			continue
		}
		p, err := procfs.NewProc(pid)
		if err != nil {
			return 0, err
		}
		st, err := p.Stat()
		if err != nil {
			return 0, err
		}
		total += time.Duration(st.CPUTime() * float64(time.Second))
	}
	return total, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtRates(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(parts, ", ")
}

// ratioRow is a ratio's mean over rounds (quartets, pairs) against the 0.97× target, with
// its 95% interval and every value.
func ratioRow(name string, xs []float64) row {
	if len(xs) == 0 {
		return row{name, "not measured: too few rounds", "≥ 0.97×", verdict(false)}
	}
	m, lo, hi := meanInterval(xs)
	return row{name, fmt.Sprintf("%.3f× (%.3f–%.3f; %s)", m, lo, hi, fmtRatios(xs)), "≥ 0.97×", verdict(m >= 0.97)}
}

// meanInterval is the mean of xs and its 95% bootstrap interval.
func meanInterval(xs []float64) (m, lo, hi float64) {
	mean := func(xs []float64) float64 {
		var sum float64
		for _, x := range xs {
			sum += x
		}
		return sum / float64(len(xs))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	means := make([]float64, 10000)
	sample := make([]float64, len(xs))
	for i := range means {
		for j := range sample {
			sample[j] = xs[rng.IntN(len(xs))]
		}
		means[i] = mean(sample)
	}
	slices.Sort(means)
	return mean(xs), means[250], means[9749]
}

func fmtRatios(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(parts, ", ")
}
