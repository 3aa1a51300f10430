package abtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubectl-mesh/kubectl-mesh/agent/netns"
	"github.com/kubectl-mesh/kubectl-mesh/agent/netns/podtest"
)

// The ports Istio uses: the app's, and the inbound proxy's.
const (
	appPort   = podtest.AppPort
	proxyPort = podtest.ProxyPort
)

// testPod is a pod without Kubernetes: a named network namespace joined to the host by a veth
// pair, with Istio's inbound interception (PREROUTING redirect of the app port to the proxy).
type testPod struct {
	*podtest.Pod
	app *http.Client
}

// newTestPod builds the namespace, veth pair, addresses and interception, and starts the app (a
// process in the pod listening on every address of the pod, loopback and pod IP, at appPort).
// Everything is removed when the test ends, failed or not.
func newTestPod(t *testing.T) *testPod {
	t.Helper()
	p := &testPod{Pod: podtest.New(t, "mab", 160, 2048)}

	// The app is a process of its own in the pod, as in a real pod: sharing a Go runtime with
	// the load generator made its wake-up after a 1 ms proxy delay slower than right after the
	// generator's own write, which is a property of the test, not of the sidecar.
	app := startChild(t, p, "app")
	around := &netns.Dialer{NSPath: p.NSPath, Dialer: net.Dialer{Timeout: time.Second}}
	waitListening(t, func() (net.Conn, error) { return around.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", appPort)) }, app.exited, "app")
	p.app = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return around.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", appPort))
	}}}
	t.Cleanup(p.app.CloseIdleConnections)
	return p
}

// appRequests asks the app how many requests it has served (its /count is not counted).
func (p *testPod) appRequests(t *testing.T) int64 {
	t.Helper()
	resp, err := p.app.Get("http://app/count")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var n int64
	if _, err := fmt.Fscan(resp.Body, &n); err != nil {
		t.Fatal(err)
	}
	return n
}

// trySetNetem puts a netem delay on the host end of the veth, which delays packets from the host
// into the pod, i.e. the through path only (the around path never leaves the namespace). It
// reports false if the kernel has no netem qdisc.
func (p *testPod) trySetNetem(t *testing.T, delay time.Duration) bool {
	t.Helper()
	out, err := exec.Command("tc", "qdisc", "add", "dev", p.HostIf, "root", "netem", "delay", fmt.Sprintf("%dus", delay.Microseconds())).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "qdisc kind is unknown") {
			return false
		}
		t.Fatalf("tc qdisc add netem: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("tc", "qdisc", "del", "dev", p.HostIf, "root").Run() })
	return true
}

// delayProxy is a known-delay HTTP/1.1 sidecar: for each request it waits exactly its delay
// before forwarding to the app on the pod's loopback, and logs how long it actually waited.
// It runs as a process of its own inside the pod (the test binary re-executed, see TestMain),
// like a real sidecar, so that its waiting and spinning do not share a Go runtime with the load
// generator.
type delayProxy struct {
	delay time.Duration

	mu sync.Mutex
	// Per request: how long it waited, and its residency (response written − request read).
	waits, residencies []int64
}

const (
	childEnv      = "ABTEST_CHILD"
	childDelayEnv = "ABTEST_DELAY"
	childLogEnv   = "ABTEST_WAITS"
)

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "delay-proxy":
		os.Exit(delayProxyMain())
	case "app":
		os.Exit(appMain())
	}
	os.Exit(m.Run())
}

// appMain is the app process: a cheap HTTP/1.1 endpoint on the app port until SIGTERM.
func appMain() int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ln, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", appPort))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var served atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		if r.URL.Path == "/count" {
			fmt.Fprintln(w, served.Load())
			return
		}
		served.Add(1)
		io.WriteString(w, "ok\n")
	})}
	go srv.Serve(ln)
	<-term
	srv.Close()
	return 0
}

// delayProxyMain is the sidecar process: it serves until SIGTERM, then writes the waits it
// logged, one per line in nanoseconds, to the file named by childLogEnv.
func delayProxyMain() int {
	d, err := time.ParseDuration(os.Getenv(childDelayEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	ln, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", proxyPort))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	dp := &delayProxy{delay: d}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", appPort), 5*time.Second)
				if err != nil {
					return
				}
				defer u.Close()
				dp.serve(c, u)
			}()
		}
	}()
	<-term
	ln.Close()
	dp.mu.Lock()
	defer dp.mu.Unlock()
	var b strings.Builder
	for i, w := range dp.waits {
		fmt.Fprintln(&b, w, dp.residencies[i])
	}
	if err := os.WriteFile(os.Getenv(childLogEnv), []byte(b.String()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

// childProcess is the test binary re-executed inside the pod in one of TestMain's modes.
type childProcess struct {
	pid     int
	exited  chan error
	logPath string
	stopped bool
}

// startChild runs the test binary in mode inside the pod; it is killed, by PID, when the test
// ends unless stopped before.
func startChild(t *testing.T, p *testPod, mode string, env ...string) *childProcess {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), mode+".log")
	cmd := exec.Command("ip", append(append([]string{"netns", "exec", p.Name}, realtimePrefix()...), self, "-test.run=^$")...)
	cmd.Env = append(append(os.Environ(), childEnv+"="+mode, childLogEnv+"="+logPath), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childProcess{pid: cmd.Process.Pid, exited: make(chan error, 1), logPath: logPath}
	go func() { c.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if !c.stopped {
			syscall.Kill(c.pid, syscall.SIGKILL)
			<-c.exited
		}
	})
	return c
}

// terminate stops the child with SIGTERM and waits for it.
func (c *childProcess) terminate(t *testing.T) {
	t.Helper()
	c.stopped = true
	syscall.Kill(c.pid, syscall.SIGTERM)
	select {
	case err := <-c.exited:
		if err != nil {
			t.Fatalf("child %d: %v", c.pid, err)
		}
	case <-time.After(10 * time.Second):
		syscall.Kill(c.pid, syscall.SIGKILL)
		<-c.exited
		t.Fatalf("child %d ignored SIGTERM", c.pid)
	}
}

// startDelayProxy runs the delay proxy with delay d in the pod and waits until it listens.
func startDelayProxy(t *testing.T, p *testPod, d time.Duration) *childProcess {
	t.Helper()
	c := startChild(t, p, "delay-proxy", childDelayEnv+"="+d.String())
	addr := net.JoinHostPort(p.PodIP, fmt.Sprint(proxyPort))
	waitListening(t, func() (net.Conn, error) { return net.DialTimeout("tcp", addr, time.Second) }, c.exited, "delay proxy")
	return c
}

// proxyLog is what the delay proxy logged per request, in nanoseconds.
type proxyLog struct {
	waits, residencies []int64
}

// stop ends the delay proxy and returns its log.
func (pp *childProcess) stop(t *testing.T) proxyLog {
	t.Helper()
	pp.terminate(t)
	data, err := os.ReadFile(pp.logPath)
	if err != nil {
		t.Fatal(err)
	}
	var waits, residencies []int64
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var w, r int64
		if _, err := fmt.Sscan(line, &w, &r); err != nil {
			t.Fatalf("delay proxy log %q: %v", line, err)
		}
		waits, residencies = append(waits, w), append(residencies, r)
	}
	return proxyLog{waits: waits, residencies: residencies}
}

// waitListening dials until it connects, the process exits, or 15 s pass.
func waitListening(t *testing.T, dial func() (net.Conn, error), exited chan error, what string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := dial()
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("%s exited before listening: %v", what, err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening after 15 s: %v", what, err)
		}
	}
}

func (dp *delayProxy) serve(down, up net.Conn) {
	dr, ur := bufio.NewReader(down), bufio.NewReader(up)
	for {
		req, err := http.ReadRequest(dr)
		if err != nil {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
		start := time.Now()
		preciseWait(start.Add(dp.delay))
		waited := time.Since(start)
		if err := req.Write(up); err != nil {
			return
		}
		resp, err := http.ReadResponse(ur, req)
		if err != nil {
			return
		}
		err = resp.Write(down)
		resp.Body.Close()
		if err != nil {
			return
		}
		residency := time.Since(start)
		dp.mu.Lock()
		dp.waits = append(dp.waits, int64(waited))
		dp.residencies = append(dp.residencies, int64(residency))
		dp.mu.Unlock()
	}
}

// preciseWait blocks until the deadline. Go's timers are often late by most of a millisecond,
// so it sleeps in the kernel with a 1 ns timer slack (the default 50 µs would be added to every
// sleep) until shortly before the deadline and spins the rest. The spin is kept short because a
// task that burns CPU is scheduled later on its next wake-up when the machine is busy, which
// would slow the proxy's relaying of the response and blur the ground truth.
func preciseWait(deadline time.Time) {
	const spin = 40 * time.Microsecond
	if d := time.Until(deadline) - spin; d > 0 {
		runtime.LockOSThread()
		unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
		ts := unix.NsecToTimespec(int64(d))
		for {
			var rem unix.Timespec
			err := unix.ClockNanosleep(unix.CLOCK_MONOTONIC, 0, &ts, &rem)
			if !errors.Is(err, unix.EINTR) {
				break
			}
			ts = rem
		}
		runtime.UnlockOSThread()
	}
	for time.Now().Before(deadline) {
	}
}

// startNginx runs Debian's nginx inside the pod as the reverse proxy sidecar under UID 1337,
// at real-time priority like the rest of the pod.
func startNginx(t *testing.T, p *testPod) {
	t.Helper()
	podtest.StartNginx(t, p.Pod, realtimePrefix()...)
}

// Real-time scheduling for the pod's processes and the test's own threads.
//
// The tests share two CPUs with whatever else runs. On a loaded machine a task woken after a
// pause waits for the CPU hog that got the CPU meanwhile to finish its slice, while a chain of
// hand-offs without pauses does not: with the load average at 18, holding each request for 1 ms
// in the proxy made the rest of the request ~250 µs slower than at d = 0 (the proxy's own log
// showed it too, so it was not the A/B method). That is real added latency on such a node, but
// it is the neighbours' doing, and it varies with them, so the ground truth runs the client,
// the proxy, the app and the wire delay as SCHED_FIFO where the kernel allows it. RT
// throttling (sched_rt_runtime_us) still leaves the rest of the machine its share.
const rtPriority = "10"

var rtAllowed = sync.OnceValue(func() bool {
	return exec.Command("chrt", "-f", rtPriority, "true").Run() == nil
})

func realtimePrefix() []string {
	if rtAllowed() {
		return []string{"chrt", "-f", rtPriority}
	}
	return nil
}

// realtimeSelf makes every thread of this process SCHED_FIFO (threads started later inherit it
// from the thread that starts them) until the test ends.
func realtimeSelf(t *testing.T) {
	t.Helper()
	if !rtAllowed() {
		t.Log("real-time scheduling refused here; measuring at normal priority")
		return
	}
	set := func(policy, prio uint32) error {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		for _, task := range tasks {
			var tid int
			if _, err := fmt.Sscan(task.Name(), &tid); err != nil {
				continue
			}
			attr := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: policy, Priority: prio}
			if err := unix.SchedSetAttr(tid, attr, 0); err != nil && !errors.Is(err, unix.ESRCH) {
				return err
			}
		}
		return nil
	}
	if err := set(unix.SCHED_FIFO, 10); err != nil {
		t.Fatalf("SCHED_FIFO: %v", err)
	}
	t.Cleanup(func() {
		if err := set(unix.SCHED_NORMAL, 0); err != nil {
			t.Errorf("back to SCHED_NORMAL: %v", err)
		}
	})
}
