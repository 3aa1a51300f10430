package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostNS is the namespace the process started in, read before any test could leave the main
// thread elsewhere (after that, /proc/self/ns/net follows the main thread, not the process).
var hostNS = func() uint64 {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		panic(err)
	}
	return st.Ino
}()

// newNetNS creates a named network namespace with loopback up and removes it when the test ends.
func newNetNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network namespaces")
	}
	name := fmt.Sprintf("mnstest-%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	return "/run/netns/" + name
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// socketNetNS asks the kernel which namespace a socket belongs to (SIOCGSKNS).
func socketNetNS(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ino uint64
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		nsfd, err := unix.IoctlRetInt(int(fd), unix.SIOCGSKNS)
		if err != nil {
			ioErr = err
			return
		}
		defer unix.Close(nsfd)
		var st unix.Stat_t
		ioErr = unix.Fstat(nsfd, &st)
		ino = st.Ino
	})
	if err != nil || ioErr != nil {
		t.Fatal(err, ioErr)
	}
	return ino
}

func TestListenAndDialInsideNamespace(t *testing.T) {
	ns := newNetNS(t)
	ctx := context.Background()
	ln, err := Listen(ctx, ns, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got, want := socketNetNS(t, ln.(*net.TCPListener)), inode(t, ns); got != want {
		t.Fatalf("listener in namespace %d, want %d", got, want)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	addr := ln.Addr().String()

	d := &Dialer{NSPath: ns, Dialer: net.Dialer{Timeout: 5 * time.Second}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := socketNetNS(t, c.(*net.TCPConn)), inode(t, ns); got != want {
		t.Fatalf("dialed socket in namespace %d, want %d", got, want)
	}
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}
	c.Close()

	// Sockets opened afterwards by this goroutine belong to the process's namespace.
	h, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if got, self := socketNetNS(t, h.(*net.TCPListener)), hostNS; got != self {
		t.Fatalf("a listener opened after the namespace switch is in namespace %d, want the process's %d", got, self)
	}
}

func TestDialRefusedInsideNamespace(t *testing.T) {
	ns := newNetNS(t)
	// A port listening on the host's loopback must not be reachable from the namespace.
	h, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	d := &Dialer{NSPath: ns, Dialer: net.Dialer{Timeout: 5 * time.Second}}
	_, err = d.Dial("tcp", h.Addr().String())
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial host loopback from namespace: %v, want connection refused", err)
	}
}

func TestThreadsStayInTheirNamespace(t *testing.T) {
	ns := newNetNS(t)
	self := hostNS
	d := &Dialer{NSPath: ns}
	ln, err := Listen(context.Background(), ns, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for range 50 {
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	// Every thread of the process must be back in the original namespace.
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		p := "/proc/self/task/" + task.Name() + "/ns/net"
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			continue // the thread exited meanwhile
		}
		if st.Ino != self && task.Name() != fmt.Sprint(wedged.Load()) {
			t.Errorf("thread %s is in namespace %d, want %d", task.Name(), st.Ino, self)
		}
	}
}

// wedged is the main thread when TestFailedReturnKillsThread left it parked in a namespace.
var wedged atomic.Int64

func TestFailedReturnKillsThread(t *testing.T) {
	ns := newNetNS(t)
	self := hostNS
	calls := 0
	var tid int
	setns = func(fd, nstype int) error {
		calls++
		if calls == 2 {
			tid = unix.Gettid()
			return unix.EPERM
		}
		return unix.Setns(fd, nstype)
	}
	defer func() { setns = unix.Setns }()
	err := Do(ns, func() error { return nil })
	if err == nil || !strings.Contains(err.Error(), "return from network namespace") {
		t.Fatalf("Do: %v, want a failure to return", err)
	}
	// The goroutine ended locked, so the runtime must retire its thread, which is still in the
	// pod's namespace. Wait for that (bounded), then check that no thread is left there.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var st unix.Stat_t
		err := unix.Stat(fmt.Sprintf("/proc/self/task/%d/ns/net", tid), &st)
		if err != nil {
			break // thread gone
		}
		if st.Ino == self {
			t.Fatalf("thread %d went back to the host namespace although setns failed", tid)
		}
		if tid == os.Getpid() {
			// The runtime cannot end the main thread; it parks it for good instead ("wedges"
			// it, see mexit in runtime/proc.go), which equally keeps it from being reused.
			t.Logf("the failed thread was the main thread, parked for good in the pod namespace")
			wedged.Store(int64(tid))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d still alive in the pod namespace after the goroutine ended", tid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
