package meshpods

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

// Pod is a running meshed pod on the real node, with what the node knows about it.
type Pod struct {
	Namespace, Name, UID string
	IP                   string
	Node                 string
	QOSClass             corev1.PodQOSClass
	// NativeSidecar: the sidecar is an init container with restartPolicy Always.
	NativeSidecar bool
	App, Sidecar  Container
	// SandboxID is the pod sandbox's container ID; SandboxPID its pause process, which holds
	// the pod's namespaces.
	SandboxID  string
	SandboxPID int
	// NetNS is the pod's network namespace, as a path for setns or nsenter --net.
	NetNS string
	// InboundPorts are the intercepted ports; nil means all but the sidecar's own.
	InboundPorts []int
	// DelayLogFile is the known-delay proxy's log inside the sidecar (ProxyDelay only).
	DelayLogFile string

	cgroupRoot string
}

// Container is one container of a pod as the node sees it.
type Container struct {
	Name string
	// ID is the 64-hex containerd ID (the pod status says containerd://<ID>).
	ID string
	// Cgroup is the container's cgroup path relative to a hierarchy's root, as
	// /proc/<pid>/cgroup shows it: <cgroup root>/kubepods[/<qos>]/pod<uid>/<ID>.
	Cgroup string
}

// newPod reads a ready pod's containers, cgroups and network namespace from the node.
func newPod(c *simcluster.Cluster, kp *corev1.Pod) (*Pod, error) {
	p := &Pod{
		Namespace: kp.Namespace, Name: kp.Name, UID: string(kp.UID), IP: kp.Status.PodIP,
		Node: kp.Spec.NodeName, QOSClass: kp.Status.QOSClass, cgroupRoot: c.CgroupRoot(),
	}
	if ann := kp.Annotations["traffic.sidecar.istio.io/includeInboundPorts"]; ann != "*" {
		for _, f := range strings.Split(ann, ",") {
			port, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return nil, fmt.Errorf("meshpods: pod %s: includeInboundPorts %q: %w", kp.Name, ann, err)
			}
			p.InboundPorts = append(p.InboundPorts, port)
		}
	}
	for _, cs := range kp.Status.InitContainerStatuses {
		if cs.Name == SidecarContainer {
			p.NativeSidecar = true
		}
	}
	podDir := ""
	for _, qos := range []string{"besteffort", "burstable", ""} {
		d := filepath.Join(p.cgroupRoot, "kubepods", qos, "pod"+p.UID)
		if _, err := os.Stat(filepath.Join(cgroupMount(), d)); err == nil {
			podDir = d
			break
		}
	}
	if podDir == "" {
		return nil, fmt.Errorf("meshpods: pod %s: no cgroup pod%s under %s in %s", kp.Name, p.UID, filepath.Join(p.cgroupRoot, "kubepods"), cgroupMount())
	}
	ids := map[string]bool{}
	for _, cs := range append(slices.Clone(kp.Status.InitContainerStatuses), kp.Status.ContainerStatuses...) {
		id, ok := strings.CutPrefix(cs.ContainerID, "containerd://")
		if !ok {
			return nil, fmt.Errorf("meshpods: pod %s container %s: unexpected ID %q", kp.Name, cs.Name, cs.ContainerID)
		}
		ct := Container{Name: cs.Name, ID: id, Cgroup: filepath.Join(podDir, id)}
		ids[id] = true
		switch cs.Name {
		case AppContainer:
			p.App = ct
		case SidecarContainer:
			p.Sidecar = ct
		}
	}
	if p.App.ID == "" || p.Sidecar.ID == "" {
		return nil, fmt.Errorf("meshpods: pod %s lacks an %s or %s container status", kp.Name, AppContainer, SidecarContainer)
	}
	// The pod cgroup's other child is the sandbox, whose process is the pause binary.
	ents, err := os.ReadDir(filepath.Join(cgroupMount(), podDir))
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !e.IsDir() || ids[e.Name()] {
			continue
		}
		pids, err := cgroupPIDs(filepath.Join(podDir, e.Name()))
		if err == nil && len(pids) > 0 {
			p.SandboxID, p.SandboxPID = e.Name(), pids[0]
		}
	}
	if p.SandboxPID == 0 {
		return nil, fmt.Errorf("meshpods: pod %s: no running sandbox under %s", kp.Name, podDir)
	}
	p.NetNS = fmt.Sprintf("/proc/%d/ns/net", p.SandboxPID)
	// The containers must share the sandbox's namespace, or interception would miss them.
	for _, ct := range []Container{p.App, p.Sidecar} {
		pids, err := p.PIDs(ct)
		if err != nil {
			return nil, err
		}
		if len(pids) == 0 {
			return nil, fmt.Errorf("meshpods: pod %s container %s: no processes in %s", kp.Name, ct.Name, ct.Cgroup)
		}
		if !sameFile(p.NetNS, fmt.Sprintf("/proc/%d/ns/net", pids[0])) {
			return nil, fmt.Errorf("meshpods: pod %s container %s is not in the sandbox's network namespace", kp.Name, ct.Name)
		}
	}
	return p, nil
}

// PIDs lists the processes of a container now, from its cgroup.
func (p *Pod) PIDs(ct Container) ([]int, error) {
	return cgroupPIDs(ct.Cgroup)
}

// ReadSidecarFile reads a file inside the sidecar container (its root filesystem and volumes),
// e.g. the known-delay proxy's log.
func (p *Pod) ReadSidecarFile(path string) ([]byte, error) {
	pids, err := p.PIDs(p.Sidecar)
	if err != nil {
		return nil, err
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("meshpods: sidecar of %s has no processes", p.Name)
	}
	return os.ReadFile(filepath.Join(fmt.Sprintf("/proc/%d/root", pids[0]), path))
}

// DialContext opens a connection from inside the pod's network namespace, the way a process
// of the pod would (to 127.0.0.1:AppPort it goes around the sidecar). The socket is created
// on a thread switched into the namespace and stays in it; the thread switches back after.
func (p *Pod) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	target, err := os.Open(p.NetNS)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("setns %s: %w", p.NetNS, err)}
			return
		}
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		// A thread that cannot switch back stays locked and ends with the goroutine, so no
		// other goroutine ever runs in the pod's namespace by accident.
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{conn, err}
	}()
	r := <-done
	return r.conn, r.err
}

// HTTPClient returns a client whose connections start inside the pod's network namespace.
func (p *Pod) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: p.DialContext, DisableCompression: true, MaxIdleConnsPerHost: 16},
	}
}

// cgroupMount is the hierarchy whose tree the container cgroups are read from: a v1
// controller hierarchy every runc container joins (pids, else memory or cpu), else the v2
// unified tree.
func cgroupMount() string {
	best, rank := "", 0
	for _, m := range cgroupMounts() {
		r := 1
		if m.FSType == "cgroup2" {
			r = 2
		}
		for _, opt := range strings.Split(m.VFSOptions, ",") {
			switch opt {
			case "pids":
				r = 5
			case "memory":
				r = max(r, 4)
			case "cpu":
				r = max(r, 3)
			}
		}
		if r > rank {
			best, rank = m.Mountpoint, r
		}
	}
	return best
}

func cgroupMounts() []*mountinfo.Info {
	ms, _ := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.FSType != "cgroup" && m.FSType != "cgroup2", false
	})
	return ms
}

func cgroupPIDs(rel string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(cgroupMount(), rel, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids, nil
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// AppRequests is the number of requests the app's nginx has served, from its stub_status
// (the request that reads it included), asked inside the pod's network namespace so that
// neither the sidecar nor interception is involved.
func (p *Pod) AppRequests(ctx context.Context) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", AppPort, AppStatusPath), nil)
	if err != nil {
		return 0, err
	}
	resp, err := p.HTTPClient().Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	// "server accepts handled requests\n A H R\n": R is the third figure of the line after.
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if strings.Contains(l, "accepts handled requests") && i+1 < len(lines) {
			f := strings.Fields(lines[i+1])
			if len(f) == 3 {
				return strconv.ParseUint(f[2], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("meshpods: pod %s: unexpected stub_status %q", p.Name, b)
}
