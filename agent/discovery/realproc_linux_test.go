package discovery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// cgroupMounts returns the host's v1 cpu hierarchy and the v2 hierarchy mount points
// (either may be empty).
func cgroupMounts(t *testing.T) (cpuV1, v2 string) {
	t.Helper()
	ms, err := mountinfo.GetMounts(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		switch m.FSType {
		case "cgroup":
			for _, o := range strings.Split(m.VFSOptions, ",") {
				if o == "cpu" && cpuV1 == "" {
					cpuV1 = m.Mountpoint
				}
			}
		case "cgroup2":
			if v2 == "" && strings.HasPrefix(m.Mountpoint, "/sys/fs/cgroup") {
				v2 = m.Mountpoint
			}
		}
	}
	return cpuV1, v2
}

// TestRealProcessInKubeletCgroup puts two real processes into cgroups named the way
// kubelet names a container's (below a simulated cluster's cgroup root) and finds them
// through /proc: one named like Envoy, one like pilot-agent, running as UID 1337.
func TestRealProcessInKubeletCgroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (it creates cgroups)")
	}
	cpuV1, v2 := cgroupMounts(t)
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	suffix := hex.EncodeToString(rnd[:])
	podUID := fmt.Sprintf("%s-0000-4000-8000-%s", suffix[:8], suffix[4:16])
	idRaw := make([]byte, 32)
	if _, err := rand.Read(idRaw); err != nil {
		t.Fatal(err)
	}
	cid := hex.EncodeToString(idRaw)
	top := "meshsimtest" + suffix[:6]
	rel := filepath.Join(top, "kubepods", "besteffort", "pod"+podUID, cid)

	// On hybrid hosts both hierarchies get the container, as kubelet does.
	var roots []string
	for _, m := range []string{v2, cpuV1} {
		if m == "" {
			continue
		}
		if err := os.MkdirAll(filepath.Join(m, rel), 0o755); err != nil {
			if m == v2 && cpuV1 != "" {
				t.Logf("v2 hierarchy at %s not writable (%v); using v1 cpu only", m, err)
				continue
			}
			t.Fatal(err)
		}
		roots = append(roots, m)
		root := m
		t.Cleanup(func() {
			// Leaf first; the children are already killed and reaped by then (cleanups run
			// in reverse order of registration).
			for d := filepath.Join(root, rel); d != root; d = filepath.Dir(d) {
				if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
					t.Errorf("rmdir %s: %v", d, err)
				}
			}
		})
	}
	if len(roots) == 0 {
		t.Fatal("no cgroup hierarchy found")
	}

	// Copies of sleep under the names the classifier knows, executable by UID 1337.
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	binDir := t.TempDir()
	// t.TempDir makes both its directories private to root.
	for _, d := range []string{filepath.Dir(binDir), binDir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	start := func(name string) *exec.Cmd {
		dst := filepath.Join(binDir, name)
		copyFile(t, sleepBin, dst)
		cmd := exec.Command(dst, "120")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1337, Gid: 1337}}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		t.Cleanup(func() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			_ = cmd.Wait()
		})
		for _, r := range roots {
			if err := os.WriteFile(filepath.Join(r, rel, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
				t.Fatalf("move %d into %s: %v", pid, r, err)
			}
		}
		return cmd
	}
	helper := start("pilot-agent")
	proxy := start("envoy")

	got, err := Scanner{}.Scan(func(id string) bool { return id == cid })
	if err != nil {
		t.Fatal(err)
	}
	cp := got[cid]
	if cp == nil {
		t.Fatalf("container %s not found in /proc", cid[:12])
	}
	if cp.PodUID != podUID || cp.QoS != "besteffort" {
		t.Errorf("ref %+v, want pod %s", cp.ContainerRef, podUID)
	}
	if len(cp.Processes) != 2 || cp.Processes[0].PID != min(helper.Process.Pid, proxy.Process.Pid) {
		t.Fatalf("processes %+v", cp.Processes)
	}
	for _, p := range cp.Processes {
		if p.UID != 1337 || p.StartTime == 0 {
			t.Errorf("process %+v", p)
		}
	}
	if cpuV1 != "" && !strings.HasSuffix(cp.CgroupPaths["cpu"], "/"+rel) {
		t.Errorf("cpu cgroup %q does not end in %s", cp.CgroupPaths["cpu"], rel)
	}

	// The same through the pod watch, as the agent will use it.
	pod := newPod("real", "sleeper", podUID, "n1", annotate("sidecar.istio.io/status", istioStatus),
		container("istio-proxy", "containerd://"+cid))
	client := fake.NewClientset()
	if _, err := client.CoreV1().Pods("real").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d := New(client, "n1", Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sc, err := d.Lookup("real", "sleeper")
	if err != nil {
		t.Fatal(err)
	}
	roles := map[int]Role{}
	for _, p := range sc.Processes {
		roles[p.PID] = p.Role
	}
	if roles[helper.Process.Pid] != RoleHelper || roles[proxy.Process.Pid] != RoleProxy || sc.ProxyUID != 1337 {
		t.Errorf("roles %v proxy uid %d", roles, sc.ProxyUID)
	}
	if !strings.HasSuffix(sc.CgroupPath(), "/"+rel) {
		t.Errorf("sidecar cgroup %q", sc.CgroupPath())
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
