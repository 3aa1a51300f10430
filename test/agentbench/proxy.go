package main

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/kubectl-mesh/kubectl-mesh/agent/residency"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
)

type tracingConfig struct {
	rounds      int
	round       time.Duration
	connections int
}

// roundResult is one load round.
type roundResult struct {
	traced bool
	rate   float64
	errors uint64
	// Traced rounds only: the programs' runs and run time over the round, and what the
	// tracer saw.
	runs    uint64
	runtime time.Duration
	events  uint64
	paired  uint64
	drops   uint64
}

// measureTracing drives an nginx reverse proxy (in front of an nginx upstream) at its maximum
// closed-loop rate, alternating rounds without and with the residency programs tracing the
// proxy's processes, and compares the medians.
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
	upPort, err := freePort()
	if err != nil {
		return nil, err
	}
	proxyPort, err := freePort()
	if err != nil {
		return nil, err
	}
	upstream := fmt.Sprintf(`
  server {
    listen 127.0.0.1:%d;
    location / { return 200 "ok\n"; }
  }`, upPort)
	up, err := startNginx(ctx, &cl, nginx, upstream, upPort)
	if err != nil {
		return nil, err
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
	px, err := startNginx(ctx, &cl, nginx, proxy, proxyPort)
	if err != nil {
		return nil, err
	}
	logf("upstream nginx %v on :%d, proxy nginx %v on :%d", up, upPort, px, proxyPort)
	pids := make([]uint32, len(px))
	for i, p := range px {
		pids[i] = uint32(p)
	}

	load := loadgen.Options{
		Target:      fmt.Sprintf("127.0.0.1:%d", proxyPort),
		Protocol:    loadgen.HTTP1,
		Connections: cfg.connections,
		Duration:    cfg.round,
		Warmup:      time.Second,
	}
	var results []roundResult
	tier := ebpftier.None
	for i := 0; i < 2*cfg.rounds; i++ {
		traced := i%2 == 1
		r, t, err := runRound(ctx, load, traced, pids)
		if err != nil {
			return rows, fmt.Errorf("round %d (traced %v): %w", i+1, traced, err)
		}
		if traced {
			tier = t
		}
		logf("round %d traced=%v: %.0f req/s, %d errors, BPF runs %d events %d paired %d drops %d",
			i+1, traced, r.rate, r.errors, r.runs, r.events, r.paired, r.drops)
		results = append(results, r)
	}

	var on, off []float64
	var runs, events, paired, drops uint64
	var runtime time.Duration
	var errs uint64
	for _, r := range results {
		errs += r.errors
		if r.traced {
			on = append(on, r.rate)
			runs += r.runs
			runtime += r.runtime
			events += r.events
			paired += r.paired
			drops += r.drops
		} else {
			off = append(off, r.rate)
		}
	}
	mOn, mOff := median(on), median(off)
	ratio := mOn / mOff
	// Each traced round follows an untraced one; their ratio cancels slow drift in what
	// else the machine is doing, which the ratio of medians does not.
	var pairs []float64
	for i := range min(len(on), len(off)) {
		pairs = append(pairs, on[i]/off[i])
	}
	rows = append(rows,
		row{fmt.Sprintf("proxied req/s, tracing off (median of %d × %s, %d conns)", len(off), cfg.round, cfg.connections), fmt.Sprintf("%.0f (%s)", mOff, fmtRates(off)), "-", ""},
		row{fmt.Sprintf("proxied req/s, tracing on, tier %s (median of %d)", tier, len(on)), fmt.Sprintf("%.0f (%s)", mOn, fmtRates(on)), "-", ""},
		row{"throughput ratio on/off (ratio of medians)", fmt.Sprintf("%.3f×", ratio), "≥ 0.97×", verdict(ratio >= 0.97)},
		row{"throughput ratio on/off (median of adjacent-pair ratios)", fmt.Sprintf("%.3f× (%s)", median(pairs), fmtRatios(pairs)), "≥ 0.97×", verdict(median(pairs) >= 0.97)},
	)
	if runs > 0 && runtime > 0 {
		mean := runtime / time.Duration(runs)
		rows = append(rows, row{fmt.Sprintf("mean BPF run time per event (%d runs)", runs), fmt.Sprintf("%d ns", mean.Nanoseconds()), "< 300 ns", verdict(mean < 300*time.Nanosecond)})
	} else {
		rows = append(rows, row{"mean BPF run time per event", "not measured (no runs or run-time accounting refused)", "< 300 ns", "MISSES target"})
	}
	rows = append(rows,
		row{"residency events / paired / drops (traced rounds)", fmt.Sprintf("%d / %d / %d", events, paired, drops), "-", ""},
		row{"load errors (all rounds)", strconv.FormatUint(errs, 10), "0", verdict(errs == 0)},
	)
	return rows, nil
}

// runRound runs one load round; a traced round attaches the residency programs first and
// detaches them after, so attach and detach cost stays out of the rate.
func runRound(ctx context.Context, load loadgen.Options, traced bool, pids []uint32) (roundResult, ebpftier.Tier, error) {
	r := roundResult{traced: traced}
	tier := ebpftier.None
	var tr *residency.Tracer
	var before residency.ProgramStats
	var snapBefore residency.Snapshot
	if traced {
		var attempts []ebpftier.Attempt
		tr, attempts = residency.StartAuto(ebpftier.Order, pids, residency.Options{})
		if tr == nil {
			return r, tier, fmt.Errorf("no residency tier attached: %v", attempts)
		}
		defer tr.Close()
		if err := tr.StatsErr(); err != nil {
			logf("run-time accounting unavailable: %v", err)
		}
		tier = tr.Tier()
		var err error
		if before, err = tr.Stats(); err != nil {
			return r, tier, err
		}
		if snapBefore, err = tr.Read(); err != nil {
			return r, tier, err
		}
	}
	res, err := loadgen.Run(ctx, load)
	if err != nil {
		return r, tier, err
	}
	if res.Stopped {
		return r, tier, ctx.Err()
	}
	r.rate, r.errors = res.AchievedRate, res.Errors
	if traced {
		after, err := tr.Stats()
		if err != nil {
			return r, tier, err
		}
		snap, err := tr.Read()
		if err != nil {
			return r, tier, err
		}
		d := snap.Sub(&snapBefore)
		r.runs, r.runtime = after.Runs-before.Runs, after.Runtime-before.Runtime
		r.events, r.paired, r.drops = d.Counters.Events, d.Counters.Paired, d.Counters.Drops()
	}
	return r, tier, nil
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
		workers := childPIDs(master)
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
			if w := childPIDs(master); resp.StatusCode == http.StatusOK && len(w) > 0 {
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

func childPIDs(pid int) []int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
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

func fmtRatios(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.3f", x)
	}
	return strings.Join(parts, ", ")
}
