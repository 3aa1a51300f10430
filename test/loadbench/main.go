// Command loadbench compares pkg/loadgen with fortio and wrk on the same nginx on loopback:
// maximum requests per second closed loop, and the achieved-rate error of a fixed-rate open
// loop. It prints a table and asserts nothing; the figures go in the closing note.
//
// On a shared machine one run of each says little, so the max-rate runs are repeated in
// rounds, the tools taking turns to go first, and it prints per tool the median rate, the
// best round and the median CPU time spent per request, with loadgen's ratio to the others.
//
// It starts Debian's nginx from a config written to a temporary directory, on a free port,
// and stops it by PID at the end. fortio (v1.66.5) and wrk are looked up in -bin, then PATH.
//
//	go run ./test/loadbench -duration 5s -connections 16 -rate 5000 -rounds 7 -open-rounds 3
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
	"github.com/prometheus/procfs"
)

func main() {
	duration := flag.Duration("duration", 5*time.Second, "length of every run")
	conns := flag.Int("connections", 16, "connections for every tool")
	rate := flag.Float64("rate", 5000, "open-loop rate for the achieved-rate comparison")
	rounds := flag.Int("rounds", 7, "repeat the max-rate runs, interleaved, and keep the medians (0: none)")
	only := flag.String("tools", "loadgen,fortio,wrk", "the max-rate tools to run, loadgen first")
	openRounds := flag.Int("open-rounds", 3, "repeat the open-loop runs and keep the median error (0: none)")
	bin := flag.String("bin", defaultBin(), "directory holding fortio (and wrk) before PATH")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of loadgen's first max-rate run (of its open loop with -rounds 0) here")
	flag.Parse()
	if err := run(*duration, *conns, *rate, *rounds, *openRounds, strings.Split(*only, ","), *bin, *cpuprofile); err != nil {
		fmt.Fprintln(os.Stderr, "loadbench:", err)
		os.Exit(1)
	}
}

// defaultBin is the harness cache's bin directory, found from the working directory up.
func defaultBin() string {
	if c := os.Getenv("MESH_SIM_CACHE"); c != "" {
		return filepath.Join(c, "bin")
	}
	dir, _ := os.Getwd()
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, ".cache", "bin")
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

func lookTool(bin, name string) (string, error) {
	if bin != "" {
		p := filepath.Join(bin, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath(name)
}

type row struct {
	tool, mode       string
	asked, achieved  float64
	p50, p99         time.Duration
	errors, requests uint64
	cpu              time.Duration // the generator's own CPU time (user + system)
	server           time.Duration // nginx's workers' CPU time meanwhile
	note             string
}

func run(duration time.Duration, conns int, rate float64, rounds, openRounds int, only []string, bin, cpuprofile string) error {
	fortio, err := lookTool(bin, "fortio")
	if err != nil {
		return fmt.Errorf("fortio not found (GOBIN=<repo>/.cache/bin go install fortio.org/fortio@v1.66.5): %w", err)
	}
	wrk, err := lookTool(bin, "wrk")
	if err != nil {
		return fmt.Errorf("wrk not found (apt-get install -y wrk): %w", err)
	}
	addr, nginxPID, stop, err := startNginx()
	if err != nil {
		return err
	}
	defer stop()
	url := "http://" + addr + "/"
	fmt.Printf("nginx on %s, %d connections, %v per run, GOMAXPROCS %d, %d CPUs, load average %s\n\n", addr, conns, duration, runtime.GOMAXPROCS(0), runtime.NumCPU(), loadavg())

	var prof *os.File
	if cpuprofile != "" {
		if prof, err = os.Create(cpuprofile); err != nil {
			return err
		}
		defer prof.Close()
	}

	// Each round runs the three tools back to back, starting with a different one each
	// round, so a burst of load from elsewhere on the machine lands on all of them alike;
	// medians then drop the rounds it spoiled.
	type tool struct {
		name string
		run  func() (row, error)
		rows []row
	}
	tools := []*tool{
		{name: "loadgen", run: func() (row, error) {
			if prof != nil {
				if err := pprof.StartCPUProfile(prof); err != nil {
					return row{}, err
				}
				defer func() {
					pprof.StopCPUProfile()
					prof = nil // one profile is enough
				}()
			}
			return runLoadgen(addr, 0, conns, duration)
		}},
		{name: "fortio", run: func() (row, error) { return runFortio(fortio, url, 0, conns, duration) }},
		{name: "wrk", run: func() (row, error) { return runWrk(wrk, url, conns, duration) }},
	}
	tools = slices.DeleteFunc(tools, func(t *tool) bool { return !slices.Contains(only, t.name) })
	if len(tools) == 0 || tools[0].name != "loadgen" {
		return fmt.Errorf("-tools %s: want loadgen and any of fortio, wrk", strings.Join(only, ","))
	}
	var order []row
	for r := 0; r < rounds; r++ {
		for i := range tools {
			t := tools[(r+i)%len(tools)]
			fmt.Fprintf(os.Stderr, "round %d/%d: %s\n", r+1, rounds, t.name)
			before := nginxCPU(nginxPID)
			x, err := t.run()
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			serverDelta(&x, before, nginxCPU(nginxPID))
			x.note = strings.TrimSpace(fmt.Sprintf("round %d %s", r+1, x.note))
			t.rows = append(t.rows, x)
			order = append(order, x)
		}
	}
	var ols, fls []row
	for r := 0; r < openRounds; r++ {
		fmt.Fprintf(os.Stderr, "open loop round %d/%d\n", r+1, openRounds)
		if prof != nil && rounds == 0 { // no max-rate run: profile the open loop instead
			if err := pprof.StartCPUProfile(prof); err != nil {
				return err
			}
		}
		before := nginxCPU(nginxPID)
		ol, err := runLoadgen(addr, rate, conns, duration)
		if prof != nil && rounds == 0 {
			pprof.StopCPUProfile()
			prof = nil
		}
		if err != nil {
			return fmt.Errorf("loadgen open loop: %w", err)
		}
		after := nginxCPU(nginxPID)
		serverDelta(&ol, before, after)
		before = after
		fl, err := runFortio(fortio, url, rate, conns, duration)
		if err != nil {
			return fmt.Errorf("fortio -qps: %w", err)
		}
		serverDelta(&fl, before, nginxCPU(nginxPID))
		ols, fls = append(ols, ol), append(fls, fl)
	}

	tw := tabwriter.NewWriter(os.Stdout, 2, 8, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tool\tmode\tasked/s\tachieved/s\trate error\tp50\tp99\trequests\terrors\tCPU µs/req\tnginx µs/req\t  note")
	print := func(r row) {
		asked, rerr := "max", "-"
		if r.asked > 0 {
			asked = fmt.Sprintf("%.0f", r.asked)
			rerr = fmt.Sprintf("%.3f%%", 100*rateErr(r))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%s\t%v\t%v\t%d\t%d\t%.1f\t%.1f\t  %s\n", r.tool, r.mode, asked, r.achieved, rerr, r.p50, r.p99, r.requests, r.errors, cpuPerReq(r), serverPerReq(r), r.note)
	}
	for _, r := range order {
		print(r)
	}
	for i := range ols {
		print(ols[i])
		print(fls[i])
	}
	tw.Flush()
	fmt.Printf("\nload average at the end: %s (figures from a shared machine move with it)\n", loadavg())

	if rounds > 0 {
		fmt.Printf("\nmax rate, median of %d interleaved rounds of %v, %d connections:\n", rounds, duration, conns)
		// Load from elsewhere only ever lowers a rate, so the best round says what a tool can
		// do and the median what it did; the CPU it spent per request moves least with load.
		for _, t := range tools {
			fmt.Printf("  %-8s %8.0f/s median, %8.0f/s best, %5.1f CPU µs/req (nginx %.1f)\n", t.name, median(t.rows, achieved), best(t.rows), median(t.rows, cpuPerReq), median(t.rows, serverPerReq))
		}
		ours := tools[0].rows
		targets := map[string]float64{"fortio": 1.0, "wrk": 0.8}
		for _, t := range tools[1:] {
			ratios := make([]float64, len(ours))
			for i := range ours {
				ratios[i] = ours[i].achieved / t.rows[i].achieved
			}
			fmt.Printf("  loadgen / %-6s %.2f× of medians (target ≥ %.1f), %.2f× of bests; per round %.2f× median, %.2f×–%.2f×; CPU per request %.2f×\n",
				t.name, median(ours, achieved)/median(t.rows, achieved), targets[t.name], best(ours)/best(t.rows),
				medianOf(ratios), slices.Min(ratios), slices.Max(ratios), median(ours, cpuPerReq)/median(t.rows, cpuPerReq))
		}
	}
	if openRounds > 0 {
		fmt.Printf("open loop at %.0f/s, median of %d: loadgen achieved-rate error %.3f%% (target ≤ 0.5%%), fortio %.3f%%\n",
			rate, openRounds, 100*median(ols, rateErr), 100*median(fls, rateErr))
	}
	return nil
}

func median(rs []row, f func(row) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return medianOf(v)
}

// medianOf sorts v and returns its median.
func medianOf(v []float64) float64 {
	slices.Sort(v)
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

func achieved(r row) float64 { return r.achieved }

func best(rs []row) float64 {
	b := 0.0
	for _, r := range rs {
		b = max(b, r.achieved)
	}
	return b
}

func rateErr(r row) float64 { return math.Abs(r.achieved-r.asked) / r.asked }

func serverPerReq(r row) float64 {
	if r.requests == 0 {
		return 0
	}
	return float64(r.server.Microseconds()) / float64(r.requests)
}

// nginxCPU is the CPU time of each child of the nginx master, from /proc: the workers do
// the serving, and the generator's own cost means little without theirs.
func nginxCPU(master int) map[int]time.Duration {
	out := map[int]time.Duration{}
	procs, _ := procfs.AllProcs()
	for _, p := range procs {
		if st, err := p.Stat(); err == nil && st.PPID == master {
			out[p.PID] = time.Duration(st.CPUTime() * float64(time.Second))
		}
	}
	return out
}

// serverDelta sets r.server to the workers' CPU time between two nginxCPU readings and
// notes how it split between them: connections land on workers by a hash of their ports
// (reuseport), and a tool whose connections mostly hit one worker is capped by it.
func serverDelta(r *row, before, after map[int]time.Duration) {
	var shares []time.Duration
	for pid, t := range after {
		d := t - before[pid]
		r.server += d
		shares = append(shares, d)
	}
	if r.server <= 0 {
		return
	}
	slices.Sort(shares)
	slices.Reverse(shares)
	parts := make([]string, len(shares))
	for i, d := range shares {
		parts[i] = strconv.Itoa(int(100 * d / r.server))
	}
	r.note = strings.TrimSpace(r.note + " nginx split " + strings.Join(parts, "/") + "%")
}

func cpuPerReq(r row) float64 {
	if r.requests == 0 {
		return 0
	}
	return float64(r.cpu.Microseconds()) / float64(r.requests)
}

func runLoadgen(addr string, rate float64, conns int, d time.Duration) (row, error) {
	before := selfCPU()
	res, err := loadgen.Run(context.Background(), loadgen.Options{
		Target: addr, Protocol: loadgen.HTTP1, Rate: rate, Connections: conns, Duration: d,
	})
	if err != nil {
		return row{}, err
	}
	cpu := selfCPU() - before
	mode := "closed"
	note := ""
	if rate > 0 {
		mode = "open"
		sent := 0.0
		if res.SendSpan > 0 {
			sent = float64(res.Requests-1) / res.SendSpan.Seconds()
		}
		note = fmt.Sprintf("rate from send times %.1f/s, missed %d, lateness p99 %v, service p50 %v, saturated %v",
			sent, res.Missed, histogram.Quantile(res.Lateness, 0.99), histogram.Quantile(res.Service, 0.5), res.Saturated)
	}
	return row{tool: "loadgen", mode: mode, asked: rate, achieved: res.AchievedRate, cpu: cpu,
		p50: histogram.Quantile(res.Latency, 0.5), p99: histogram.Quantile(res.Latency, 0.99),
		requests: res.Requests, errors: res.Errors, note: note}, nil
}

func runFortio(fortio, url string, rate float64, conns int, d time.Duration) (row, error) {
	qps := "0" // fortio's max speed
	mode := "closed"
	if rate > 0 {
		qps = strconv.FormatFloat(rate, 'f', -1, 64)
		mode = "open"
	}
	cmd := exec.Command(fortio, "load", "-quiet", "-qps", qps, "-c", strconv.Itoa(conns),
		"-t", d.String(), "-r", "0.00001", "-json", "-", url)
	out, err := cmd.Output()
	if err != nil {
		return row{}, fmt.Errorf("%w: %s", err, stderrOf(err))
	}
	var res struct {
		ActualQPS         float64
		RetCodes          map[string]uint64
		DurationHistogram struct {
			Count       uint64
			Percentiles []struct{ Percentile, Value float64 }
		}
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return row{}, fmt.Errorf("fortio JSON: %w", err)
	}
	r := row{tool: "fortio", mode: mode, asked: rate, achieved: res.ActualQPS, requests: res.DurationHistogram.Count, cpu: childCPU(cmd)}
	for code, n := range res.RetCodes {
		if code != "200" {
			r.errors += n
		}
	}
	for _, p := range res.DurationHistogram.Percentiles {
		v := time.Duration(p.Value * float64(time.Second)).Round(time.Microsecond)
		switch p.Percentile {
		case 50:
			r.p50 = v
		case 99:
			r.p99 = v
		}
	}
	if rate > 0 {
		r.note = "no coordinated-omission correction: latency is service time"
	}
	return r, nil
}

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkTotal   = regexp.MustCompile(`([0-9]+) requests in`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses:\s+([0-9]+)`)
	wrkLatency = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
)

func runWrk(wrk, url string, conns int, d time.Duration) (row, error) {
	threads := min(runtime.NumCPU(), conns)
	cmd := exec.Command(wrk, "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", fmt.Sprintf("%ds", int(d.Seconds())), "--latency", url)
	out, err := cmd.Output()
	if err != nil {
		return row{}, fmt.Errorf("%w: %s", err, stderrOf(err))
	}
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		return row{}, fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
	}
	r := row{tool: "wrk", mode: "closed", note: fmt.Sprintf("%d threads", threads), cpu: childCPU(cmd)}
	r.achieved, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := wrkTotal.FindSubmatch(out); m != nil {
		r.requests, _ = strconv.ParseUint(string(m[1]), 10, 64)
	}
	if m := wrkNon2xx.FindSubmatch(out); m != nil {
		r.errors, _ = strconv.ParseUint(string(m[1]), 10, 64)
	}
	for _, m := range wrkLatency.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(m[2]), 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[string(m[3])]
		dur := time.Duration(v * float64(unit)).Round(time.Microsecond)
		if string(m[1]) == "50" {
			r.p50 = dur
		} else {
			r.p99 = dur
		}
	}
	return r, nil
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func childCPU(cmd *exec.Cmd) time.Duration {
	if cmd.ProcessState == nil {
		return 0
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(b))
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// reuseport gives each worker its own listening socket, and the kernel spreads connections
// over them by a hash of their addresses, alike for every tool. Without it a burst of
// connects often lands on one worker, which then caps whichever tool drew that.
const nginxConf = `worker_processes %d;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[2]s/tmp/body;
    proxy_temp_path %[2]s/tmp/proxy;
    fastcgi_temp_path %[2]s/tmp/fastcgi;
    uwsgi_temp_path %[2]s/tmp/uwsgi;
    scgi_temp_path %[2]s/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    open_file_cache max=16;
    server {
        listen %[3]s reuseport;
        root %[2]s/www;
        location / { index index.html; }
    }
}
`

// startNginx runs nginx in the foreground on a free loopback port and returns a stop func
// that ends it by PID.
func startNginx() (string, int, func(), error) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/nginx"); err2 != nil {
			return "", 0, nil, fmt.Errorf("nginx not found (apt-get install -y nginx): %w", err)
		}
		nginx = "/usr/sbin/nginx"
	}
	dir, err := os.MkdirTemp("", "loadbench-nginx-")
	if err != nil {
		return "", 0, nil, err
	}
	cleanup := func() { os.RemoveAll(dir) }
	// nginx workers drop to an unprivileged user that must reach the static file.
	if err := os.Chmod(dir, 0o755); err != nil {
		cleanup()
		return "", 0, nil, err
	}
	for _, d := range []string{"www", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			cleanup()
			return "", 0, nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "www", "index.html"), []byte("hello from nginx on loopback\n"), 0o644); err != nil {
		cleanup()
		return "", 0, nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cleanup()
		return "", 0, nil, err
	}
	addr := l.Addr().String()
	l.Close()
	// One worker per CPU, like a default install.
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, nginxConf, runtime.NumCPU(), dir, addr), 0o644); err != nil {
		cleanup()
		return "", 0, nil, err
	}
	cmd := exec.Command(nginx, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		cleanup()
		return "", 0, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		cleanup()
	}
	for i := 0; i < 100; i++ {
		select {
		case err := <-exited:
			cleanup()
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return "", 0, nil, fmt.Errorf("nginx exited: %v\n%s", err, log)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if len(line) > 12 && line[9:12] == "200" {
				return addr, cmd.Process.Pid, stop, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop()
	return "", 0, nil, errors.New("nginx did not answer 200 within 5 s")
}
