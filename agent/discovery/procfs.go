package discovery

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// DefaultProcRoot is the host's procfs when the agent runs on the host; in the agent's
// pod the host's /proc is mounted at /host/proc and passed in instead.
const DefaultProcRoot = "/proc"

// Role says what a process in a sidecar container does.
type Role string

const (
	RoleProxy  Role = "proxy"
	RoleHelper Role = "helper"
)

// Process is one process (thread group) found in a container's cgroup.
type Process struct {
	PID int
	// StartTime is the start time in clock ticks since boot (/proc/<pid>/stat field 22);
	// with PID it identifies the process across PID reuse. Zero if stat was unreadable.
	StartTime uint64
	Comm      string
	Cmdline   []string
	// UID is the effective UID from the status file's Uid line: the one the process's
	// sockets are owned by, which the mesh's iptables owner match sees.
	UID uint32
	// Role is filled in by mesh recognition; the scanner leaves it empty.
	Role Role
}

// ContainerProcs is everything the scanner found for one container.
type ContainerProcs struct {
	ContainerRef
	// CgroupPaths of the container's first process, per controller (Unified for v2).
	CgroupPaths map[string]string
	Processes   []Process
}

// Scanner finds container processes in a procfs tree.
type Scanner struct {
	// Root is the procfs mount; empty means DefaultProcRoot.
	Root string
}

func (s Scanner) root() string {
	if s.Root == "" {
		return DefaultProcRoot
	}
	return s.Root
}

// Scan walks every process under Root and groups those that live in a container by
// container ID. want, if not nil, limits the (costlier) reading of comm, cmdline and
// status to the containers it accepts. Processes that exit during the walk are skipped.
func (s Scanner) Scan(want func(containerID string) bool) (map[string]*ContainerProcs, error) {
	root := s.root()
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", root, err)
	}
	out := make(map[string]*ContainerProcs)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		dir := filepath.Join(root, e.Name())
		cg, err := os.ReadFile(filepath.Join(dir, "cgroup"))
		if err != nil {
			continue // exited, or a kernel thread we may not read
		}
		lines, err := ParseProcCgroup(bytes.NewReader(cg))
		if err != nil {
			continue
		}
		ref, ok := ContainerFromCgroups(lines)
		if !ok || (want != nil && !want(ref.ContainerID)) {
			continue
		}
		p, err := readProcess(dir, pid)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, err
		}
		cp := out[ref.ContainerID]
		if cp == nil {
			cp = &ContainerProcs{ContainerRef: ref, CgroupPaths: CgroupPaths(lines)}
			out[ref.ContainerID] = cp
		}
		cp.Processes = append(cp.Processes, p)
	}
	for _, cp := range out {
		sort.Slice(cp.Processes, func(i, j int) bool { return cp.Processes[i].PID < cp.Processes[j].PID })
	}
	return out, nil
}

// readProcess reads comm, cmdline, status and (optionally) stat of one process.
func readProcess(dir string, pid int) (Process, error) {
	p := Process{PID: pid}
	comm, err := os.ReadFile(filepath.Join(dir, "comm"))
	if err != nil {
		return p, err
	}
	p.Comm = strings.TrimRight(string(comm), "\n")
	cmd, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return p, err
	}
	p.Cmdline = splitCmdline(cmd)
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return p, err
	}
	uid, err := statusUID(status)
	if err != nil {
		return p, fmt.Errorf("pid %d: %w", pid, err)
	}
	p.UID = uid
	if stat, err := os.ReadFile(filepath.Join(dir, "stat")); err == nil {
		p.StartTime = statStartTime(stat)
	}
	return p, nil
}

// splitCmdline splits the NUL-separated argv. Programs that rewrite their argv in place
// (nginx's "nginx: worker process") leave a single space-separated string; that is kept
// as is and interpreted by whoever needs the program name.
func splitCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}

// statusUID returns the effective UID from a status file's "Uid:\treal\teffective\tsaved\tfs" line.
func statusUID(status []byte) (uint32, error) {
	for _, line := range strings.Split(string(status), "\n") {
		rest, ok := strings.CutPrefix(line, "Uid:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			return 0, fmt.Errorf("malformed Uid line %q", line)
		}
		v, err := strconv.ParseUint(f[1], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("malformed Uid line %q", line)
		}
		return uint32(v), nil
	}
	return 0, errors.New("no Uid line in status")
}

// statStartTime returns field 22 of /proc/<pid>/stat. The comm field (2) may contain
// spaces and parentheses, so fields are counted from the last ')'.
func statStartTime(stat []byte) uint64 {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}
