package simcluster

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/moby/sys/mountinfo"
)

// teardown removes everything the cluster described by st put on the host. live holds the
// processes this process started itself (by PID); others are killed from their records. It is
// also run on a fresh slot, where it removes leftovers of a crashed run, so every step tolerates
// finding nothing.
func teardown(st *state, live map[int]*proc, logf func(string, ...any)) error {
	var errs []error
	stopNamed := func(match func(string) bool, grace time.Duration) {
		for i := len(st.Procs) - 1; i >= 0; i-- {
			r := st.Procs[i]
			if !match(r.Name) {
				continue
			}
			began := time.Now()
			if p, ok := live[r.PID]; ok {
				p.stop(grace)
			} else {
				killRecorded(r, grace)
			}
			if d := time.Since(began); d > time.Second {
				logf("stopping %s took %s", r.Name, d.Round(time.Millisecond))
			}
		}
	}
	is := func(names ...string) func(string) bool {
		return func(n string) bool {
			for _, x := range names {
				if n == x || (strings.HasSuffix(x, "*") && strings.HasPrefix(n, strings.TrimSuffix(x, "*"))) {
					return true
				}
			}
			return false
		}
	}
	// Node side first, so nothing recreates what is being removed.
	// The agents' graceful shutdown waits for open streams (kwok's port-forward tunnels).
	stopNamed(is("agent-*", "kwok"), time.Second)
	stopNamed(is("kubelet"), 10*time.Second)
	if st.ContainerdSocket != "" {
		began := time.Now()
		killContainers(st)
		if d := time.Since(began); d > time.Second {
			logf("stopping containers took %s", d.Round(time.Millisecond))
		}
	}
	stopNamed(is("containerd"), 10*time.Second)
	if st.ContainerdSocket != "" {
		// Shims run in their own process groups and outlive containerd.
		for _, pid := range pidsWithArg(st.ContainerdSocket) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if st.CgroupRoot != "" {
		killCgroupProcs(st.CgroupRoot)
	}
	stopNamed(is("kube-scheduler", "kube-controller-manager"), 5*time.Second)
	stopNamed(is("kube-apiserver"), 10*time.Second)
	stopNamed(is("etcd"), 10*time.Second)
	// Anything recorded under another name (none today) goes last.
	stopNamed(func(string) bool { return true }, 2*time.Second)

	// Sandbox and container IDs name libcni's cached results and the shims' sockets; read them
	// before the directory goes.
	if st.Dir != "" {
		cri := filepath.Join(st.Dir, "containerd", "root", "io.containerd.grpc.v1.cri")
		for _, sub := range []string{"sandboxes", "containers"} {
			ents, _ := os.ReadDir(filepath.Join(cri, sub))
			for _, e := range ents {
				st.sandboxes = append(st.sandboxes, e.Name())
			}
		}
	}
	if st.Dir != "" {
		if err := unmountUnder(st.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	if len(st.NATRule) > 0 {
		// Delete until it is gone: a crashed run followed by a retry could have added it twice.
		for i := 0; i < 4; i++ {
			if exec.Command("iptables", append([]string{"-w", "-t", "nat", "-D", "PREROUTING"}, st.NATRule...)...).Run() != nil {
				break
			}
		}
	}
	if st.Bridge != "" {
		if err := removeBridge(st.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	if st.CgroupRoot != "" {
		if err := removeCgroups(st.CgroupRoot); err != nil {
			errs = append(errs, err)
		}
	}
	removeHostFiles(st)
	if st.Dir != "" {
		if err := os.RemoveAll(st.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", st.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// killContainers stops every container of the cluster's containerd, through containerd while it
// still runs so that the shims unmount the root filesystems and exit on their own.
func killContainers(st *state) {
	sock := st.ContainerdSocket
	if _, err := os.Stat(sock); err != nil {
		return
	}
	out, err := exec.Command("ctr", "-a", sock, "-n", "k8s.io", "tasks", "ls", "-q").Output()
	if err != nil {
		return
	}
	// Order does not matter (containers and sandboxes alike): SIGKILL all, then delete all.
	ids := strings.Fields(string(out))
	for _, id := range ids {
		_ = exec.Command("ctr", "-a", sock, "-n", "k8s.io", "tasks", "kill", "-a", "-s", "SIGKILL", id).Run()
	}
	for _, id := range ids {
		_ = exec.Command("ctr", "-a", sock, "-n", "k8s.io", "tasks", "delete", "-f", id).Run()
	}
}

// pidsWithArg lists processes that have arg as one of their command-line arguments.
func pidsWithArg(arg string) []int {
	if arg == "" {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if a == arg {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// killCgroupProcs SIGKILLs every process in the cluster's cgroup subtree (containers whose shim
// is already gone) until the subtree is empty.
func killCgroupProcs(root string) {
	for i := 0; i < 50; i++ {
		found := false
		for _, h := range cgroupHierarchies() {
			_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
				if err != nil || !d.IsDir() {
					return nil
				}
				b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
						found = true
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
				return nil
			})
		}
		if !found {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// removeCgroups removes the cluster's cgroup subtree, deepest directories first, in every
// hierarchy.
func removeCgroups(root string) error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		top := filepath.Join(h, root)
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
		for _, d := range dirs {
			var err error
			// A cgroup whose last task just died can refuse removal for a moment.
			for i := 0; i < 20; i++ {
				if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
					err = nil
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// mounts lists this process's mounts (the host's: the harness runs in the host's namespace).
func mounts() []*mountinfo.Info {
	m, _ := mountinfo.GetMounts(nil)
	return m
}

// mountsUnder lists mount points inside dir.
func mountsUnder(dir string) []string {
	var out []string
	prefix := strings.TrimRight(dir, "/") + "/"
	for _, m := range mounts() {
		if strings.HasPrefix(m.Mountpoint, prefix) {
			out = append(out, m.Mountpoint)
		}
	}
	return out
}

// unmountUnder detaches every mount inside dir (pod volumes, container root filesystems, sandbox
// /dev/shm, network namespace bind mounts), deepest first. Unmounting a pod's netns bind mount
// is what destroys the namespace and with it the pod's veth.
func unmountUnder(dir string) error {
	for round := 0; round < 5; round++ {
		ms := mountsUnder(dir)
		if len(ms) == 0 {
			return nil
		}
		sort.Slice(ms, func(i, j int) bool { return len(ms[i]) > len(ms[j]) })
		for _, m := range ms {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
	if ms := mountsUnder(dir); len(ms) > 0 {
		return fmt.Errorf("still mounted under %s: %v", dir, ms)
	}
	return nil
}

// removeBridge deletes the bridge and any interface still enslaved to it (pod veths whose
// namespace outlived the unmount).
func removeBridge(br string) error {
	if _, err := os.Stat(filepath.Join("/sys/class/net", br)); err != nil {
		return nil
	}
	ents, _ := os.ReadDir(filepath.Join("/sys/class/net", br, "brif"))
	for _, e := range ents {
		_ = exec.Command("ip", "link", "del", e.Name()).Run()
	}
	return run("ip", "link", "del", br)
}

// removeLinksInto removes symlinks in dir that point into target (the kubelet's
// /var/log/containers links).
func removeLinksInto(dir, target string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if dest, err := os.Readlink(p); err == nil && strings.HasPrefix(dest, target+"/") {
			_ = os.Remove(p)
		}
	}
}

// removeHostFiles removes what this cluster left in fixed host paths (see fixedHostDirs): log
// links into the cluster directory, libcni results of its sandboxes, and, in directories this
// cluster created, everything else; then those directories if empty.
func removeHostFiles(st *state) {
	if st.Dir != "" {
		removeLinksInto("/var/log/containers", st.Dir)
	}
	results, _ := os.ReadDir("/var/lib/cni/results")
	for _, e := range results {
		n := e.Name()
		ours := st.Bridge != "" && strings.HasPrefix(n, st.Bridge+"-")
		for _, id := range st.sandboxes {
			ours = ours || strings.Contains(n, "-"+id+"-")
		}
		if ours {
			_ = os.Remove(filepath.Join("/var/lib/cni/results", n))
		}
	}
	// A shim killed rather than stopped leaves its socket, at a path containerd derives from
	// its own address, the namespace and the task ID.
	if st.ContainerdSocket != "" {
		for _, id := range st.sandboxes {
			sum := sha256.Sum256([]byte(filepath.Join(st.ContainerdSocket, "k8s.io", id)))
			_ = os.Remove(filepath.Join("/run/containerd/s", hex.EncodeToString(sum[:])))
		}
	}
	for _, d := range st.CreatedDirs {
		if d == "/var/lib/kubelet" {
			// The device manager's socket path is fixed; with no kubelet of its own here before
			// this cluster, the socket is ours.
			_ = os.Remove("/var/lib/kubelet/device-plugins/kubelet.sock")
		}
		removeEmptyDirs(d)
	}
}

// removeEmptyDirs removes dir and its subdirectories, deepest first, where they are empty.
func removeEmptyDirs(dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	for _, d := range dirs {
		_ = syscall.Rmdir(d)
	}
}
