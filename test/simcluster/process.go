package simcluster

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procRecord is what the state file keeps of a started process, enough to kill it later from
// another process (`simcluster stop`, or a Start that finds a crashed cluster's leftovers).
type procRecord struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// Start is the process start time (field 22 of /proc/<pid>/stat); it tells the recorded
	// process apart from an unrelated one that later got the same PID.
	Start uint64 `json:"start"`
	Log   string `json:"log"`
}

// proc is a child process this Cluster started and still waits for.
type proc struct {
	rec  procRecord
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// startProc starts bin in its own process group, with stdout and stderr going to
// <dir>/logs/<name>.log, and records it in the state file before returning.
func (c *Cluster) startProc(name string, env []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(c.dir, "logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), env...)
	// Own process group so that teardown can kill a component together with anything it forked;
	// Pdeathsig so that a test binary killed by `go test -timeout` does not leave the cluster
	// running (the next Start on the same slot removes whatever else remains).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	p.rec = procRecord{Name: name, PID: cmd.Process.Pid, Start: procStartTime(cmd.Process.Pid), Log: logPath}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.state.Procs = append(c.state.Procs, p.rec)
	c.mu.Unlock()
	c.logf("started %s (pid %d), log %s", name, p.rec.PID, logPath)
	return p, c.saveState()
}

// stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs it. A process that
// exited earlier is left alone: its PID, and so its group ID, may belong to someone else by now.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	killGroup(p.rec.PID, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
	}
	killGroup(p.rec.PID, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

func killGroup(pgid int, sig syscall.Signal) {
	if pgid > 1 {
		_ = syscall.Kill(-pgid, sig)
	}
}

// procStartTime returns field 22 (starttime) of /proc/<pid>/stat, or 0 if the process is gone.
func procStartTime(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name (field 2) may contain spaces; the fields after it start past the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// alive reports whether the recorded process still runs (same PID and start time).
func (r procRecord) alive() bool {
	return r.PID > 0 && r.Start != 0 && procStartTime(r.PID) == r.Start
}

// killRecorded kills a recorded process group that this process does not own (stale cleanup).
func killRecorded(r procRecord, grace time.Duration) {
	if !r.alive() {
		return
	}
	killGroup(r.PID, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && r.alive() {
		time.Sleep(50 * time.Millisecond)
	}
	killGroup(r.PID, syscall.SIGKILL)
	for i := 0; i < 100 && r.alive(); i++ {
		time.Sleep(50 * time.Millisecond)
	}
}

// tail returns the last n lines of a file, for failure reports.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// run runs a short helper command and returns its combined output in the error.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
