//go:build linux && (386 || amd64 || arm64)

package residency

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
)

func run(t *testing.T, args ...string) error {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func mustRun(t *testing.T, args ...string) {
	t.Helper()
	if err := run(t, args...); err != nil {
		t.Fatal(err)
	}
}

// podNetns is a network namespace joined to the host by a veth pair, the shape of a
// pod's network: hostIP on the host side, podIP inside, both in 198.18.0.0/15.
type podNetns struct {
	name, hostDev, podDev string
	hostIP, podIP         string
}

func newPodNetns(t *testing.T) podNetns {
	t.Helper()
	pid := os.Getpid()
	n := podNetns{
		name:    fmt.Sprintf("mesh-rsd-%d", pid),
		hostDev: fmt.Sprintf("rsdh%d", pid%100000000),
		podDev:  fmt.Sprintf("rsdp%d", pid%100000000),
	}
	// A /30 chosen by pid, so concurrent test binaries do not collide.
	third, fourth := (pid>>6)&0xff, (pid&63)*4
	n.hostIP = fmt.Sprintf("198.18.%d.%d", third, fourth+1)
	n.podIP = fmt.Sprintf("198.18.%d.%d", third, fourth+2)
	mustRun(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() {
		// Deleting the namespace destroys the veth end inside it and so the pair.
		if err := run(t, "ip", "netns", "del", n.name); err != nil {
			t.Log(err)
		}
		run(t, "ip", "link", "del", n.hostDev)
	})
	mustRun(t, "ip", "link", "add", n.hostDev, "type", "veth", "peer", "name", n.podDev)
	mustRun(t, "ip", "link", "set", n.podDev, "netns", n.name)
	mustRun(t, "ip", "addr", "add", n.hostIP+"/30", "dev", n.hostDev)
	mustRun(t, "ip", "link", "set", n.hostDev, "up")
	mustRun(t, "ip", "netns", "exec", n.name, "ip", "addr", "add", n.podIP+"/30", "dev", n.podDev)
	mustRun(t, "ip", "netns", "exec", n.name, "ip", "link", "set", n.podDev, "up")
	mustRun(t, "ip", "netns", "exec", n.name, "ip", "link", "set", "lo", "up")
	return n
}

// listenIn opens a TCP listener inside the namespace: the socket keeps the namespace it
// was created in, so only this thread has to enter it, and only for the call.
func (n podNetns) listenIn(t *testing.T, addr string) net.Listener {
	t.Helper()
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer self.Close()
	target, err := os.Open("/var/run/netns/" + n.name)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ln, lnErr := net.Listen("tcp", addr)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: the runtime then ends it rather than reuse it in the
		// wrong namespace.
		t.Fatalf("return to own network namespace: %v", err)
	}
	runtime.UnlockOSThread()
	if lnErr != nil {
		t.Fatal(lnErr)
	}
	return ln
}

// wireDelay stands in for tc netem where the kernel has no sch_netem: a relay outside
// the proxy that holds each chunk the client sends for delay before passing it on, so the
// requests reach the proxy's socket late, as on a slow link.
func wireDelay(t *testing.T, target string, delay time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer s.Close()
				buf := make([]byte, 64<<10)
				for {
					k, err := c.Read(buf)
					if err != nil {
						return
					}
					time.Sleep(delay)
					if _, err := s.Write(buf[:k]); err != nil {
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				defer c.Close()
				io.Copy(c, s)
			}()
		}
	}()
	return ln.Addr().String()
}

// TestPathDelayDoesNotMoveResidency: delay on the pod's link, outside the proxy, moves
// what the client sees but not the proxy's residency. The proxy and its upstream run in
// a namespace behind a veth, as in a pod.
func TestPathDelayDoesNotMoveResidency(t *testing.T) {
	requireRoot(t)
	const pathDelay = time.Millisecond
	ns := newPodNetns(t)
	up := upstream(t, ns.listenIn(t, "127.0.0.1:0"))
	p := startProxy(t, 200*time.Microsecond, ns.podIP+":0", up, "ip", "netns", "exec", ns.name)
	tr, attempts := StartAuto(ebpftier.Order, []uint32{p.pid}, Options{})
	if tr == nil {
		t.Fatalf("no residency tier attached: %+v", attempts)
	}
	defer tr.Close()

	base := measure(t, tr, p)
	base.report(t, "no path delay "+tr.Tier().String())

	how := "tc netem on " + ns.hostDev
	delayed := p
	if err := run(t, "tc", "qdisc", "add", "dev", ns.hostDev, "root", "netem", "delay", pathDelay.String()); err != nil {
		t.Logf("netem unavailable (%v); delaying the client's segments in a relay instead", err)
		how = "a relay"
		delayed.addr = wireDelay(t, p.addr, pathDelay)
	} else {
		t.Cleanup(func() { run(t, "tc", "qdisc", "del", "dev", ns.hostDev, "root") })
	}
	m := measure(t, tr, delayed)
	m.report(t, fmt.Sprintf("path delay %v by %s", pathDelay, how))

	// The delay must be real for the test to mean anything.
	if rise := m.clientP50 - base.clientP50; rise < pathDelay*9/10 {
		t.Fatalf("client p50 rose by %v only; the path delay of %v is not in effect", rise, pathDelay)
	}
	b, d := base.snap.Histograms[ResidencyRead].Quantile(0.5), m.snap.Histograms[ResidencyRead].Quantile(0.5)
	// The path delay must not be charged to the proxy. A tenth of it bounds what the changed
	// arrival pattern may shift the proxy's own wake-ups by, on a busy 2-core machine too.
	if moved, bound := (d - b).Abs(), max(tolerance(b), pathDelay/10); moved > bound {
		t.Errorf("residency p50 moved from %v to %v with %v of path delay; want within %v", b, d, pathDelay, bound)
	}
	if paired := m.snap.Counters.Paired; paired < uint64(m.logLength)*99/100 {
		t.Errorf("paired %d of %d requests; want at least 99%%", paired, m.logLength)
	}
}
