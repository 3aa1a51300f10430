package server

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/agent/usage"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

const (
	roleEnv = "MESH_SNAPTEST_ROLE"
	// burnTouch is what the stand-in proxy touches once it is in its cgroup, so that the
	// memory is charged there (v1 leaves charges made before a move behind).
	burnTouch = 16 << 20
)

// TestMain lets the test binary stand in for a proxy: started under the name envoy, it
// waits to be moved into its cgroup (a byte on stdin), touches memory, says so on stdout
// and burns CPU until killed.
func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "nsdetect" {
		// Inside a private cgroup namespace: find its root and place the sibling's path.
		mount, sibling := os.Args[len(os.Args)-2], os.Args[len(os.Args)-1]
		ns, err := DetectNamespaceRoots("/proc", os.Getpid(), map[string]string{discovery.Unified: mount})
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		paths, err := readCgroup(filepath.Join("/proc", sibling, "cgroup"))
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		fmt.Println(ns[discovery.Unified], paths[discovery.Unified], ns.Resolve(discovery.Unified, paths[discovery.Unified]))
		os.Exit(0)
	}
	if os.Getenv(roleEnv) == "burn" {
		var b [1]byte
		if _, err := os.Stdin.Read(b[:]); err != nil {
			os.Exit(2)
		}
		mem := make([]byte, burnTouch)
		for i := range mem {
			mem[i] = byte(i)
		}
		fmt.Println("ready")
		x := 0
		for {
			for i := 0; i < len(mem); i += 4096 {
				x += int(mem[i])
			}
			mem[x%len(mem)]++
		}
	}
	os.Exit(m.Run())
}

// cgroupHierarchies returns where the cpu, cpuacct and memory v1 controllers and the v2
// hierarchy are mounted (each may be missing); comounted controllers share an entry.
func cgroupHierarchies(t *testing.T) (v1 []string, v2 string) {
	t.Helper()
	ms, err := mountinfo.GetMounts(nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, m := range ms {
		switch m.FSType {
		case "cgroup":
			for _, o := range strings.Split(m.VFSOptions, ",") {
				if (o == "cpu" || o == "cpuacct" || o == "memory") && !seen[m.Mountpoint] {
					seen[m.Mountpoint] = true
					v1 = append(v1, m.Mountpoint)
				}
			}
		case "cgroup2":
			if v2 == "" && strings.HasPrefix(m.Mountpoint, "/sys/fs/cgroup") {
				v2 = m.Mountpoint
			}
		}
	}
	return v1, v2
}

// TestSnapshotRealProcesses puts a CPU-burning stand-in Envoy and a sleeping stand-in
// pilot-agent into a cgroup named the way kubelet names a container's, announces the pod
// through a fake API, and runs the real Snapshot against the host's /proc and cgroups.
func TestSnapshotRealProcesses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (it creates cgroups)")
	}
	v1, v2 := cgroupHierarchies(t)
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
	top := "meshsnaptest" + suffix[:6]
	rel := filepath.Join(top, "kubepods", "besteffort", "pod"+podUID, cid)

	var roots []string
	mounts := v1
	if len(v1) == 0 && v2 != "" {
		mounts = []string{v2}
	}
	for _, m := range mounts {
		if err := os.MkdirAll(filepath.Join(m, rel), 0o755); err != nil {
			t.Fatal(err)
		}
		if m == v2 {
			// v2 accounts CPU and memory in a cgroup only when its parents hand the
			// controllers down, as kubelet's cgroup manager does on its own tree.
			for d := filepath.Join(m, top); d != filepath.Join(m, rel); d = filepath.Join(d, strings.Split(strings.TrimPrefix(filepath.Join(m, rel), d+"/"), "/")[0]) {
				if err := os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte("+cpu +memory"), 0o644); err != nil {
					t.Fatalf("enable cpu and memory below %s: %v", d, err)
				}
			}
		}
		roots = append(roots, m)
		root := m
		t.Cleanup(func() {
			// Leaf first; the children are killed and reaped by then (cleanups run in
			// reverse order of registration).
			for d := filepath.Join(root, rel); d != root; d = filepath.Dir(d) {
				if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
					t.Errorf("rmdir %s: %v", d, err)
				}
			}
		})
	}
	if len(roots) == 0 {
		t.Fatal("no cgroup hierarchy with cpu and memory found")
	}
	if v2 != "" && len(v1) > 0 {
		t.Logf("hybrid host: v1 controllers %v carry the figures; %s left alone", v1, v2)
	}

	binDir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	// comm is the base name of the path exec'd, so a symlink gives the name the classifier
	// knows.
	start := func(name, target string, args ...string) (*exec.Cmd, *os.File) {
		link := filepath.Join(binDir, name)
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(link, args...)
		cmd.Env = append(os.Environ(), roleEnv+"=burn")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
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
		if _, err := stdin.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		f, ok := out.(*os.File)
		if !ok {
			t.Fatalf("stdout pipe is %T", out)
		}
		return cmd, f
	}
	helper, _ := start("pilot-agent", sleepBin, "120")
	proxy, proxyOut := start("envoy", exe)
	readyc := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(proxyOut).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("stand-in proxy said %q", line)
		}
		readyc <- err
	}()
	select {
	case err := <-readyc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("stand-in proxy did not touch its memory within 30s")
	}

	const node = "snaptest-node"
	client := fake.NewClientset()
	if _, err := client.CoreV1().Pods("shop").Create(context.Background(),
		meshedPod("shop", "web", podUID, node, cid), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	d := discovery.New(client, node, discovery.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sampler, err := usage.NewSampler("", "")
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, New(Facts{NodeName: node}, SyncedDiscovery(d), sampler))
	resp, err := c.Snapshot(ctx, &agentapi.SnapshotRequest{Window: durationpb.New(500 * time.Millisecond), Namespaces: []string{"shop"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Sidecars) != 1 || len(resp.Errors) != 0 {
		t.Fatalf("sidecars %v errors %v", resp.Sidecars, resp.Errors)
	}
	sc := resp.Sidecars[0]
	t.Logf("sidecar %s/%s usage %v processes %v", sc.Pod.Namespace, sc.Pod.Name, sc.Usage, sc.Processes)
	if sc.Pod.Uid != podUID || sc.ContainerId != cid || sc.Mesh != "istio" || !strings.HasSuffix(sc.CgroupPath, rel) {
		t.Errorf("identity %v", sc)
	}
	u := sc.Usage
	if u == nil || u.CpuMillicores <= 0 || u.MemoryWorkingSetBytes < burnTouch/2 || u.MemoryRssBytes < burnTouch || u.MemoryPssBytes == 0 {
		t.Errorf("container usage %v; want CPU > 0, working set ≥ %d, RSS ≥ %d", u, burnTouch/2, burnTouch)
	}
	byPID := map[int32]*agentapi.ProcessUsage{}
	for _, p := range sc.Processes {
		byPID[p.Pid] = p
	}
	px, hp := byPID[int32(proxy.Process.Pid)], byPID[int32(helper.Process.Pid)]
	if px == nil || hp == nil || len(byPID) != 2 {
		t.Fatalf("processes %v, want envoy %d and pilot-agent %d", sc.Processes, proxy.Process.Pid, helper.Process.Pid)
	}
	if px.Role != "proxy" || px.Comm != "envoy" || px.Usage == nil || px.Usage.CpuMillicores <= 0 || px.Usage.MemoryRssBytes < burnTouch {
		t.Errorf("proxy %v", px)
	}
	if hp.Role != "helper" || hp.Comm != "pilot-agent" || hp.Usage == nil || hp.Usage.MemoryRssBytes == 0 {
		t.Errorf("helper %v", hp)
	}
	// The burner spins on one thread; the container's figure covers it and the sleeper.
	if px.Usage != nil && u != nil && u.CpuMillicores < 0.5*px.Usage.CpuMillicores {
		t.Errorf("container CPU %.1f m below the proxy's own %.1f m", u.CpuMillicores, px.Usage.CpuMillicores)
	}
	if resp.Agent == nil || resp.Agent.MemoryRssBytes == 0 || resp.Node == nil || resp.Node.CpuCores == 0 || resp.Node.CpuMillicores <= 0 {
		t.Errorf("agent %v node %v", resp.Agent, resp.Node)
	}
}

// TestDetectNamespaceRootsReal runs a process born into a private cgroup namespace rooted
// at a cgroup of our making, the way a container runtime starts the agent on a v2 node,
// and checks it finds that root and turns a sibling container's "/.." path into the
// host path.
func TestDetectNamespaceRootsReal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root (it creates cgroups and namespaces)")
	}
	_, v2 := cgroupHierarchies(t)
	if v2 == "" {
		t.Fatal("no cgroup v2 hierarchy to root a cgroup namespace in")
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	top := "/meshnstest" + hex.EncodeToString(rnd[:])
	agentCg, siblingCg := top+"/pod-a/agent", top+"/pod-b/sidecar"
	for _, d := range []string{agentCg, siblingCg} {
		if err := os.MkdirAll(filepath.Join(v2, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, d := range []string{agentCg, filepath.Dir(agentCg), siblingCg, filepath.Dir(siblingCg), top} {
			if err := os.Remove(filepath.Join(v2, d)); err != nil && !os.IsNotExist(err) {
				t.Errorf("rmdir %s: %v", d, err)
			}
		}
	})
	sibling := exec.Command("sleep", "120")
	if err := sibling.Start(); err != nil {
		t.Fatal(err)
	}
	spid := sibling.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(spid, syscall.SIGKILL)
		_ = sibling.Wait()
	})
	if err := os.WriteFile(filepath.Join(v2, siblingCg, "cgroup.procs"), []byte(strconv.Itoa(spid)), 0o644); err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(filepath.Join(v2, agentCg))
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(exe, "-test.run=^$", v2, strconv.Itoa(spid))
	child.Env = append(os.Environ(), roleEnv+"=nsdetect")
	child.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Cloneflags: syscall.CLONE_NEWCGROUP}
	out, err := child.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	t.Logf("child: %s", out)
	f := strings.Fields(string(out))
	if len(f) != 3 || f[0] != agentCg || !strings.HasPrefix(f[1], "/..") || f[2] != siblingCg {
		t.Errorf("child saw root, sibling, resolved = %q; want %s, a /.. path, %s", out, agentCg, siblingCg)
	}
}
