//go:build linux && (386 || amd64 || arm64)

package residency

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading eBPF programs needs root (CAP_BPF and CAP_PERFMON); run these tests as root")
	}
}

// kernelHasTracepoints is independent evidence that the hooks exist, so the tests
// check the tracer against the kernel rather than a remembered matrix.
func kernelHasTracepoints(t *testing.T) bool {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Logf("no kernel BTF: %v", err)
		return false
	}
	for _, tp := range []string{"tcp_rcv_space_adjust", "sock_send_length", "inet_sock_set_state", "sk_data_ready"} {
		if _, err := spec.AnyTypeByName("btf_trace_" + tp); err != nil {
			t.Logf("kernel BTF has no %s tracepoint", tp)
			return false
		}
	}
	return true
}

var (
	proxyOnce sync.Once
	proxyBin  string
	proxyErr  error
)

// delayProxy builds the known-delay proxy once per test binary.
func delayProxy(t *testing.T) string {
	t.Helper()
	proxyOnce.Do(func() {
		dir, err := os.MkdirTemp("", "delayproxy")
		if err != nil {
			proxyErr = err
			return
		}
		proxyBin = filepath.Join(dir, "delayproxy")
		cmd := exec.Command("go", "build", "-o", proxyBin, "github.com/kubectl-mesh/kubectl-mesh/test/delayproxy")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			proxyErr = fmt.Errorf("build delayproxy: %v\n%s", err, out)
		}
	})
	if proxyErr != nil {
		t.Fatal(proxyErr)
	}
	return proxyBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if proxyBin != "" {
		os.RemoveAll(filepath.Dir(proxyBin))
	}
	os.Exit(code)
}

// upstream serves a small fixed body, as an app behind a sidecar would.
func upstream(t *testing.T, ln net.Listener) string {
	t.Helper()
	body := bytes.Repeat([]byte("x"), 64)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type runningProxy struct {
	addr string
	pid  uint32
	log  string
}

// startProxy runs the delay proxy, under prefix (for example ip netns exec) if given,
// and stops it, by its pid, when the test ends.
func startProxy(t *testing.T, delay time.Duration, listen, upstreamAddr string, prefix ...string) runningProxy {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "delay.log")
	args := append(slices.Clone(prefix), delayProxy(t), "--listen", listen, "--upstream", upstreamAddr,
		"--delay", delay.String(), "--log", logPath)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("delay proxy did not start: %v", err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if !ok {
		t.Fatalf("delay proxy said %q", line)
	}
	// ip netns exec execs the command, so the pid is the proxy's.
	return runningProxy{addr: addr, pid: uint32(cmd.Process.Pid), log: logPath}
}

// logResidencies reads the proxy's log from line skip on: per request its
// t_write − t_read minus its upstream round trip, in ns, with the write instants taken
// when each write returned (after) and when it was called (start).
func logResidencies(t *testing.T, path string, skip int) (after, start []float64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) < skip || lines[0] == "" {
		return nil, nil
	}
	for _, l := range lines[skip:] {
		var v [4]int64
		f := strings.Fields(l)
		if len(f) != 4 {
			t.Fatalf("bad log line %q", l)
		}
		for i := range v {
			n, err := strconv.ParseInt(f[i], 10, 64)
			if err != nil {
				t.Fatalf("bad log line %q", l)
			}
			v[i] = n
		}
		after = append(after, float64(v[0]-v[1]))
		start = append(start, float64(v[2]-v[3]))
	}
	return after, start
}

func countLines(t *testing.T, path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(data, []byte("\n"))
}

// waitLines waits for the proxy to log want lines. It logs each request right after
// answering it, so the last line can trail the client's last response briefly.
func waitLines(t *testing.T, path string, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for countLines(t, path) < want {
		if time.Now().After(deadline) {
			t.Fatalf("proxy logged %d lines; want %d", countLines(t, path), want)
		}
		time.Sleep(time.Millisecond)
	}
}

const (
	requests = 2000
	interval = time.Millisecond
)

// drive sends n GETs through addr at one per interval (or back to back when the
// exchange takes longer), on one kept-alive connection, and returns the client's p50.
func drive(t *testing.T, addr string, n int) time.Duration {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	url := "http://" + addr + "/"
	start := time.Now()
	var lat []float64
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		sent := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: %s", i, resp.Status)
		}
		lat = append(lat, float64(time.Since(sent)))
	}
	return quantile(lat, 0.5)
}

func quantile(vs []float64, q float64) time.Duration {
	s := slices.Clone(vs)
	slices.Sort(s)
	return time.Duration(s[int(q*float64(len(s)-1))])
}

func tolerance(truth time.Duration) time.Duration {
	return max(30*time.Microsecond, truth/20)
}

// measurement is one run of requests through a traced proxy.
type measurement struct {
	snap        Snapshot
	logP50      time.Duration
	logStartP50 time.Duration
	stats       ProgramStats
	logLength   int
	clientP50   time.Duration
}

// measure runs requests through p while tr traces it, returning what both saw.
func measure(t *testing.T, tr *Tracer, p runningProxy) measurement {
	t.Helper()
	before, err := tr.Read()
	if err != nil {
		t.Fatal(err)
	}
	statsBefore, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	skip := countLines(t, p.log)
	clientP50 := drive(t, p.addr, requests)
	waitLines(t, p.log, skip+requests)
	after, err := tr.Read()
	if err != nil {
		t.Fatal(err)
	}
	stats, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	stats.Runs -= statsBefore.Runs
	stats.Runtime -= statsBefore.Runtime
	for name, ps := range stats.PerProgram {
		b := statsBefore.PerProgram[name]
		stats.PerProgram[name] = ProgramStat{Runs: ps.Runs - b.Runs, Runtime: ps.Runtime - b.Runtime}
	}
	logged, loggedStart := logResidencies(t, p.log, skip)
	return measurement{snap: after.Sub(&before), logP50: quantile(logged, 0.5), logStartP50: quantile(loggedStart, 0.5),
		stats: stats, logLength: len(logged), clientP50: clientP50}
}

func (m measurement) report(t *testing.T, label string) {
	h := &m.snap.Histograms
	c := m.snap.Counters
	t.Logf("%s: client p50 %v | log p50 %v (from write starts %v) | eBPF residency p50 %v p90 %v p99 %v (n=%d), from reads p50 %v mean %v, request leg p50 %v, response leg p50 %v, queueing p50 down %v up %v, forward p50 request %v (n=%d) response %v (n=%d) | paired %d/%d, no-response %d, unpaired-forward %d, stale %d | %d BPF runs, mean %v",
		label, m.clientP50, m.logP50, m.logStartP50, h[Residency].Quantile(0.5), h[Residency].Quantile(0.9), h[Residency].Quantile(0.99), h[Residency].Total(),
		h[ResidencyRead].Quantile(0.5), h[ResidencyRead].Mean(), h[RequestLeg].Quantile(0.5), h[ResponseLeg].Quantile(0.5),
		h[QueueDownstream].Quantile(0.5), h[QueueUpstream].Quantile(0.5),
		h[ForwardRequest].Quantile(0.5), h[ForwardRequest].Total(), h[ForwardResponse].Quantile(0.5), h[ForwardResponse].Total(),
		c.Paired, m.logLength, c.NoResponse, c.UnpairedForward, c.Stale, m.stats.Runs, m.stats.MeanRuntime())
	for name, ps := range m.stats.PerProgram {
		t.Logf("  %s: %d runs, mean %v", name, ps.Runs, ps.Runtime/time.Duration(max(ps.Runs, 1)))
	}
}

// checkAgainstLog holds the kernel's view to the proxy's own. Per request the proxy's
// timestamps bracket the tracepoints: each read is timed just after the read's
// tracepoint, each write once just before the call (start) and once after it returns
// (after, which on a busy host also holds the wake-up preemption by the receiver the
// write woke). So the read-based residency p50 must lie between the two logged p50s,
// give or take max(30µs, 5%).
func (m measurement) checkAgainstLog(t *testing.T) {
	t.Helper()
	got := m.snap.Histograms[ResidencyRead].Quantile(0.5)
	if lo := m.logStartP50 - tolerance(m.logStartP50); got < lo {
		t.Errorf("eBPF residency_read p50 %v below the proxy's write-start figure %v minus tolerance", got, m.logStartP50)
	}
	if hi := m.logP50 + tolerance(m.logP50); got > hi {
		t.Errorf("eBPF residency_read p50 %v above the proxy's t_write − t_read figure %v plus tolerance", got, m.logP50)
	}
	// One request per connection (its first) cannot be timed; the client keeps one.
	if paired := m.snap.Counters.Paired; paired < uint64(m.logLength)*99/100 {
		t.Errorf("paired %d of %d requests; want at least 99%%", paired, m.logLength)
	}
	// The unpaired fallback sees every request's arrival being read, paired or not.
	if q := m.snap.Histograms[QueueDownstream].Total(); q < uint64(m.logLength)*99/100 {
		t.Errorf("downstream queueing recorded %d times for %d requests", q, m.logLength)
	}
	// For HTTP/1.1 each direction's forward burst is its paired leg measured without the
	// pairing: from the same arrival to the same write, one per request.
	for _, c := range []struct{ fwd, leg Metric }{{ForwardRequest, RequestLeg}, {ForwardResponse, ResponseLeg}} {
		f, l := &m.snap.Histograms[c.fwd], &m.snap.Histograms[c.leg]
		if n := f.Total(); n < uint64(m.logLength)*99/100 || n > uint64(m.logLength)+1 {
			t.Errorf("%s recorded %d times for %d requests", c.fwd, n, m.logLength)
		}
		if d := (f.Quantile(0.5) - l.Quantile(0.5)).Abs(); d > tolerance(l.Quantile(0.5)) {
			t.Errorf("%s p50 %v differs from %s p50 %v by more than %v", c.fwd, f.Quantile(0.5), c.leg, l.Quantile(0.5), tolerance(l.Quantile(0.5)))
		}
	}
}

// checkDelay holds the increase over the d = 0 run to the known delay: what the proxy
// adds beyond its own fixed cost must be d within max(30µs, 5%). Only the read-based
// residency is held to it: the arrival-based one also holds the proxy's wake-up time,
// which is scheduler noise of ±30µs between runs on a busy 2-CPU host.
func checkDelay(t *testing.T, base, m measurement, d time.Duration) {
	t.Helper()
	for _, metric := range []Metric{ResidencyRead} {
		added := m.snap.Histograms[metric].Quantile(0.5) - base.snap.Histograms[metric].Quantile(0.5)
		if diff := (added - d).Abs(); diff > tolerance(d) {
			t.Errorf("eBPF %s p50 rose by %v over d=0; want the delay %v within %v", metric, added, d, tolerance(d))
		}
	}
}

// TestResidencyMatchesProxyLog is the ground truth: a proxy that adds a known delay and
// logs its own time per request, traced by each tier this kernel allows.
func TestResidencyMatchesProxyLog(t *testing.T) {
	requireRoot(t)
	hooks := kernelHasTracepoints(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := upstream(t, ln)
	worked := map[ebpftier.Tier]bool{}
	base := map[ebpftier.Tier]measurement{}
	for _, delay := range []time.Duration{0, 200 * time.Microsecond, time.Millisecond} {
		p := startProxy(t, delay, "127.0.0.1:0", up)
		for _, tier := range []ebpftier.Tier{ebpftier.TPBTF, ebpftier.RawTP} {
			t.Run(fmt.Sprintf("d=%v/%s", delay, tier), func(t *testing.T) {
				tr, err := StartWith(tier, []uint32{p.pid}, Options{RunStats: true, Queueing: true})
				if err != nil {
					t.Logf("%s unavailable: %v", tier, err)
					return
				}
				defer tr.Close()
				worked[tier] = true
				m := measure(t, tr, p)
				m.report(t, fmt.Sprintf("d=%v %s", delay, tier))

				m.checkAgainstLog(t)
				if delay == 0 {
					base[tier] = m
				} else if b, ok := base[tier]; ok {
					checkDelay(t, b, m, delay)
				} else {
					t.Errorf("%s has no d=0 run to compare with", tier)
				}
				if tr.StatsErr() == nil && m.stats.Runs == 0 {
					t.Error("run-time statistics enabled but no program runs counted")
				}
			})
		}
	}
	if hooks && !worked[ebpftier.RawTP] {
		t.Error("kernel BTF has the residency tracepoints, but raw_tp residency did not attach as root")
	}
	if !worked[ebpftier.TPBTF] && !worked[ebpftier.RawTP] && hooks {
		t.Error("no tier produced a residency result")
	}
}

// TestUntrackedProxyIsNotMeasured: the filter is the tracked set, nothing else.
func TestUntrackedProxyIsNotMeasured(t *testing.T) {
	requireRoot(t)
	tr, attempts := StartAuto(ebpftier.Order, nil, Options{})
	if tr == nil {
		if kernelHasTracepoints(t) {
			t.Fatalf("no tier attached: %+v", attempts)
		}
		t.Skip("kernel lacks the residency tracepoints")
	}
	defer tr.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, 0, "127.0.0.1:0", upstream(t, ln))
	before, _ := tr.Read()
	drive(t, p.addr, 50)
	after, err := tr.Read()
	if err != nil {
		t.Fatal(err)
	}
	if d := after.Sub(&before); d.Histograms[Residency].Total() != 0 || d.Counters.Paired != 0 {
		t.Fatalf("untracked proxy measured: %+v", d.Counters)
	}
	if err := tr.Track(p.pid); err != nil {
		t.Fatal(err)
	}
	if pids, err := tr.Tracked(); err != nil || !slices.Equal(pids, []uint32{p.pid}) {
		t.Fatalf("Tracked = %v, %v", pids, err)
	}
	drive(t, p.addr, 50)
	tracked, err := tr.Read()
	if err != nil {
		t.Fatal(err)
	}
	if d := tracked.Sub(&after); d.Counters.Paired < 45 {
		t.Fatalf("tracked proxy: paired %d of 50", d.Counters.Paired)
	}
	// A second tracked process whose tgid has the same low bits shares the proxy's slot:
	// both are then found through the hash, and measured as before.
	other := p.pid ^ tgidSlots
	if err := tr.Track(other); err != nil {
		t.Fatal(err)
	}
	var slot residencyTrackedProc
	if err := tr.procs.Lookup(tgidSlot(p.pid), &slot); err != nil || slot.Tgid != tgidShared {
		t.Fatalf("slot after tracking %d and %d: %+v, %v; want shared", p.pid, other, slot, err)
	}
	drive(t, p.addr, 50)
	shared, err := tr.Read()
	if err != nil {
		t.Fatal(err)
	}
	if d := shared.Sub(&tracked); d.Counters.Paired < 45 {
		t.Fatalf("tracked proxy in a shared slot: paired %d of 50 (%+v)", d.Counters.Paired, d.Counters)
	}
	if err := tr.Untrack(other); err != nil {
		t.Fatal(err)
	}
	if err := tr.procs.Lookup(tgidSlot(p.pid), &slot); err != nil || slot.Tgid != p.pid {
		t.Fatalf("slot after untracking %d: %+v, %v; want the proxy's own", other, slot, err)
	}
	if err := tr.SetTracked(nil); err != nil {
		t.Fatal(err)
	}
	if pids, _ := tr.Tracked(); len(pids) != 0 {
		t.Fatalf("after SetTracked(nil): %v", pids)
	}
	if err := tr.procs.Lookup(tgidSlot(p.pid), &slot); err != nil || slot.Tgid != 0 {
		t.Fatalf("slot after SetTracked(nil): %+v, %v; want empty", slot, err)
	}
	before, _ = tr.Read()
	drive(t, p.addr, 50)
	if after, _ := tr.Read(); after.Sub(&before).Counters.Events != 0 {
		t.Fatalf("untracked again, yet %d events", after.Sub(&before).Counters.Events)
	}
}

// TestTierChoice mirrors the agent's start-up: forced tiers without residency programs
// say so, and the automatic choice is the first tier that works alone.
func TestTierChoice(t *testing.T) {
	requireRoot(t)
	for _, tier := range []ebpftier.Tier{ebpftier.FEntry, ebpftier.KProbe, ebpftier.None} {
		if tr, err := Start(tier, nil); err == nil {
			tr.Close()
			t.Errorf("forced %s started", tier)
		} else if !errors.Is(err, ErrNotImplemented) {
			t.Errorf("forced %s: %v; want ErrNotImplemented", tier, err)
		}
	}
	want := ebpftier.None
	for _, tier := range ebpftier.Order {
		if tr, err := Start(tier, nil); err == nil {
			tr.Close()
			want = tier
			break
		}
	}
	tr, attempts := StartAuto(ebpftier.Order, nil, Options{})
	if tr == nil {
		if want != ebpftier.None {
			t.Fatalf("automatic choice found nothing; %s works alone: %+v", want, attempts)
		}
		if kernelHasTracepoints(t) {
			t.Fatalf("no tier attached although the kernel has the hooks: %+v", attempts)
		}
		return
	}
	defer tr.Close()
	if tr.Tier() != want {
		t.Fatalf("automatic choice %s; trying each alone says %s", tr.Tier(), want)
	}
	// The agent's tracers leave the node's run-time accounting alone.
	if err := tr.StatsErr(); !errors.Is(err, ErrRunStatsOff) {
		t.Errorf("StatsErr without RunStats = %v; want ErrRunStatsOff", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Read(); err == nil {
		t.Error("Read after Close succeeded")
	}
}

// TestTracingStartsMidExchange: tracing starts while a request is at the upstream, so the
// proxy's first act seen on its upstream socket is reading the response and on its
// downstream socket writing the answer, the reverse of what new connections show. The
// listening ports must still give each socket its role, and later exchanges on the same
// connections must be timed as on fresh ones.
func TestTracingStartsMidExchange(t *testing.T) {
	requireRoot(t)
	held, release := make(chan struct{}), make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			close(held)
			<-release
		}
		w.Header().Set("Content-Length", "2")
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	p := startProxy(t, 0, "127.0.0.1:0", ln.Addr().String())

	tr := &http.Transport{MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	get := func(path string) error {
		resp, err := client.Get("http://" + p.addr + path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	done := make(chan error, 1)
	go func() { done <- get("/hold") }()
	select {
	case <-held:
	case err := <-done:
		t.Fatalf("held request ended early: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("held request never reached the upstream")
	}
	tracer, attempts := StartAuto(ebpftier.Order, []uint32{p.pid}, Options{Queueing: true})
	if tracer == nil {
		close(release)
		t.Fatalf("no residency tier attached: %+v", attempts)
	}
	defer tracer.Close()
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// With the roles swapped the programs would still pair, but would time the client's
	// and the upstream's turns instead of the proxy's: the values tell.
	const n = 300
	waitLines(t, p.log, 1)
	before, err := tracer.Read()
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := get("/"); err != nil {
			t.Fatal(err)
		}
	}
	waitLines(t, p.log, 1+n)
	after, err := tracer.Read()
	if err != nil {
		t.Fatal(err)
	}
	logged, loggedStart := logResidencies(t, p.log, 1)
	m := measurement{snap: after.Sub(&before), logP50: quantile(logged, 0.5), logStartP50: quantile(loggedStart, 0.5), logLength: len(logged)}
	m.report(t, "mid-exchange start "+tracer.Tier().String())
	m.checkAgainstLog(t)

	// Swapped roles would time adjacent exchanges' legs and still look right in
	// aggregate, so check the roles themselves: the socket on the proxy's port is
	// downstream, its peer upstream.
	_, portStr, _ := net.SplitHostPort(p.addr)
	port, _ := strconv.Atoi(portStr)
	states := socketStates(t, tracer)
	var downs int
	for sk, st := range states {
		if st.Lport != uint16(port) {
			continue
		}
		downs++
		if st.Role != 1 {
			t.Errorf("socket on the proxy's listening port %d has role %d; want downstream (1)", port, st.Role)
		}
		if peer, ok := states[st.Peer]; !ok || peer.Role != 2 || peer.Peer != sk {
			t.Errorf("downstream socket's peer %+v; want an upstream socket paired back", peer)
		}
	}
	if downs != 1 {
		t.Errorf("%d sockets with state on the proxy's port %d; want the client's one connection", downs, port)
	}
}

// TestStateFreedOnClose: every socket given a slot gives it back at its close, zeroed, on
// each tier. A socket whose close is missed keeps a slot that a new socket at the same
// address would inherit with stale state, and the table fills.
func TestStateFreedOnClose(t *testing.T) {
	requireRoot(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := upstream(t, ln)
	for _, tier := range []ebpftier.Tier{ebpftier.TPBTF, ebpftier.RawTP} {
		t.Run(tier.String(), func(t *testing.T) {
			p := startProxy(t, 0, "127.0.0.1:0", up)
			tr, err := Start(tier, []uint32{p.pid})
			if err != nil {
				if kernelHasTracepoints(t) {
					t.Fatalf("%s did not start: %v", tier, err)
				}
				t.Skipf("%s unavailable: %v", tier, err)
			}
			defer tr.Close()
			// The proxy opens an upstream connection per client connection and closes it
			// with it; three connections in turn.
			for range 3 {
				drive(t, p.addr, 5)
			}
			// The proxy closes its sides after the client's close reaches it.
			deadline := time.Now().Add(5 * time.Second)
			for {
				states := socketStates(t, tr)
				if len(states) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after every connection closed: %d sockets hold a slot (%+v); want none", len(states), states)
				}
				time.Sleep(10 * time.Millisecond)
			}
			snap, err := tr.Read()
			if err != nil {
				t.Fatal(err)
			}
			// Every request pairs, each connection's first too: its arrival is read from
			// the TCP clock at the read, after the socket has state.
			if snap.Counters.Paired != 15 {
				t.Errorf("paired %d of 15 requests on 3 connections; want 15 (%+v)", snap.Counters.Paired, snap.Counters)
			}
			// Queueing was not asked for.
			if n := snap.Histograms[ForwardRequest].Total() + snap.Histograms[ForwardResponse].Total(); n != 0 {
				t.Errorf("%d connection-level queueing values without Options.Queueing; want none", n)
			}
		})
	}
}

// socketStates reads the socket table: each socket holding a slot, with its state. A free
// slot must have been zeroed when it was given back.
func socketStates(t *testing.T, tr *Tracer) map[uint64]residencySkState {
	t.Helper()
	states := map[uint64]residencySkState{}
	var slot uint32
	var sk uint64
	it := tr.keys.Iterate()
	for it.Next(&slot, &sk) {
		var st residencySkState
		if err := tr.socks.Lookup(slot, &st); err != nil {
			t.Fatalf("socket slot %d: %v", slot, err)
		}
		if sk != 0 {
			states[sk] = st
		} else if st != (residencySkState{}) {
			t.Errorf("free socket slot %d holds state %+v", slot, st)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return states
}
