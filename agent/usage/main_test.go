package usage

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// childEnv selects a child mode: the test binary re-executes itself so ground-truth workloads
// need no external tools.
const childEnv = "USAGE_TEST_CHILD"

const (
	touchBytes  = 256 << 20
	sharedBytes = 64 << 20
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		runChild(mode)
		return
	}
	os.Exit(m.Run())
}

// runChild never returns normally; each mode exits when its stdin closes, so a parent that dies
// without cleaning up still takes its children with it.
func runChild(mode string) {
	in := bufio.NewReader(os.Stdin)
	exitOnEOF := func() {
		_, _ = io.Copy(io.Discard, in)
		os.Exit(0)
	}
	switch mode {
	case "burn":
		go exitOnEOF()
		fmt.Println("ready")
		for {
		}
	case "idle":
		fmt.Println("ready")
		exitOnEOF()
	case "touch":
		fmt.Println("base")
		waitGo(in)
		mem, err := syscall.Mmap(-1, 0, touchBytes, syscall.PROT_READ|syscall.PROT_WRITE,
			syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		touch(mem)
		fmt.Println("ready")
		exitOnEOF()
	case "share":
		// fd 3 is the shared memfd passed in ExtraFiles.
		fmt.Println("base")
		waitGo(in)
		mem, err := syscall.Mmap(3, 0, sharedBytes, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		touch(mem)
		fmt.Println("ready")
		exitOnEOF()
	default:
		fmt.Fprintln(os.Stderr, "unknown child mode", mode)
		os.Exit(2)
	}
}

func touch(mem []byte) {
	for i := 0; i < len(mem); i += os.Getpagesize() {
		mem[i] = 1
	}
}

func waitGo(in *bufio.Reader) {
	if _, err := in.ReadString('\n'); err != nil {
		os.Exit(0)
	}
}

// child is a running re-executed test binary.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startChild(t *testing.T, mode string, env []string, extra ...*os.File) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+mode), env...)
	cmd.ExtraFiles = extra
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	return c
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// expect blocks until the child prints want; a crashed child closes stdout and fails the test.
func (c *child) expect(t *testing.T, want string) {
	t.Helper()
	line, err := c.out.ReadString('\n')
	if err != nil {
		t.Fatalf("child %d: waiting for %q: %v", c.pid(), want, err)
	}
	if got := strings.TrimSpace(line); got != want {
		t.Fatalf("child %d: got %q, want %q", c.pid(), got, want)
	}
}

func (c *child) send(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
}
