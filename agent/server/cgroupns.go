package server

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/agent/usage"
)

// NamespaceRoots says where, in each host cgroup hierarchy, the cgroup namespace the agent
// reads /proc/<pid>/cgroup from is rooted. In a pod on a cgroup v2 node the runtime gives
// the agent a private cgroup namespace, so other containers' paths read as
// "/../../kubepods-....slice/cri-containerd-<id>.scope", relative to the agent's own
// container cgroup; the host's cgroupfs (mounted at --cgroup-root) needs them absolute.
// A nil map, or a hierarchy without an entry, means paths are used as read.
type NamespaceRoots map[string]string

// Resolve makes a path read inside the namespace absolute in the host hierarchy key.
func (n NamespaceRoots) Resolve(key, p string) string {
	root, ok := n[key]
	if !ok || !strings.HasPrefix(p, "/..") {
		return p
	}
	return filepath.Join(root, p)
}

// DetectNamespaceRoots finds the namespace root per hierarchy by comparing what procfs
// shows for the host's init (hostPID makes PID 1 the host's) with the agent's own cgroup:
// init's path starts with as many ".." as the namespace root is deep, and the one directory
// at that depth whose subtree at the agent's own relative path lists the agent's PID is the
// root. Hierarchies whose init path has no ".." (the agent shares the host's namespace)
// get no entry. mounts maps hierarchy keys (discovery.Unified or a v1 controller) to where
// that hierarchy is mounted.
func DetectNamespaceRoots(procRoot string, pid int, mounts map[string]string) (NamespaceRoots, error) {
	initPaths, err := readCgroup(filepath.Join(procRoot, "1", "cgroup"))
	if err != nil {
		return nil, err
	}
	selfPaths, err := readCgroup(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return nil, err
	}
	out := NamespaceRoots{}
	for key, mount := range mounts {
		ip, sp := initPaths[key], selfPaths[key]
		if mount == "" || !strings.HasPrefix(ip, "/..") || sp == "" {
			continue
		}
		depth := 0
		for _, c := range strings.Split(strings.TrimPrefix(ip, "/"), "/") {
			if c != ".." {
				break
			}
			depth++
		}
		root, err := findRoot(mount, depth, sp, pid)
		if err != nil {
			return out, fmt.Errorf("cgroup namespace root in %s: %w", mount, err)
		}
		out[key] = root
	}
	return out, nil
}

func readCgroup(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	lines, err := discovery.ParseProcCgroup(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return discovery.CgroupPaths(lines), nil
}

// findRoot looks at the directories depth levels below mount for the one whose self
// subtree holds pid.
func findRoot(mount string, depth int, self string, pid int) (string, error) {
	want := []byte(strconv.Itoa(pid))
	var found []string
	err := filepath.WalkDir(mount, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(mount, p)
		n := 0
		if rel != "." {
			n = strings.Count(rel, "/") + 1
		}
		if n < depth {
			return nil
		}
		procs, err := os.ReadFile(filepath.Join(p, self, "cgroup.procs"))
		if err == nil {
			for _, l := range bytes.Split(procs, []byte("\n")) {
				if bytes.Equal(bytes.TrimSpace(l), want) {
					found = append(found, "/"+filepath.ToSlash(rel))
					break
				}
			}
		}
		return filepath.SkipDir
	})
	if err != nil {
		return "", err
	}
	if len(found) != 1 {
		return "", fmt.Errorf("%d directories at depth %d hold PID %d at %s, want exactly one", len(found), depth, pid, self)
	}
	return found[0], nil
}

// hostPaths converts discovery's per-hierarchy paths to the sampler's form, made absolute
// in the host's hierarchies.
func hostPaths(m map[string]string, ns NamespaceRoots) usage.CgroupPaths {
	var p usage.CgroupPaths
	for k, v := range m {
		v = ns.Resolve(k, v)
		if k == discovery.Unified {
			p.Unified = v
			continue
		}
		if p.V1 == nil {
			p.V1 = map[string]string{}
		}
		p.V1[k] = v
	}
	return p
}
