package meshpods

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

// DeployFake puts a meshed workload on a kwok node. kwok plays the pods' kubelet, so the node
// stands in for the runtime: per pod a network namespace (held by a pause process, reachable
// from the host at the pod IP kwok gave the pod through a veth), the app and the nginx sidecar
// as host processes inside it, each in a cgroup named the way the kubelet's cgroupfs driver
// names it under <cluster cgroup root>/<node> (so .../<node>/kubepods/besteffort/pod<uid>/<id>),
// the pod status's containerStatuses carrying matching containerd:// IDs, and the same
// interception as on the real node. Only ProxyNginx is supported. The cluster's Stop kills the
// processes (they are in its cgroup tree), which frees the namespaces and their veths.
func DeployFake(ctx context.Context, c *simcluster.Cluster, node string, opts Options) (*Workload, error) {
	opts.defaults()
	if !slices.Contains(c.KwokNodeNames(), node) {
		return nil, fmt.Errorf("meshpods: %q is not a kwok node of the cluster", node)
	}
	if opts.Proxy.Kind != ProxyNginx {
		return nil, errors.New("meshpods: DeployFake runs the nginx sidecar only")
	}
	if _, err := os.Stat(nginxBin); err != nil {
		return nil, fmt.Errorf("meshpods: %s not found (Debian: apt-get install -y nginx): %w", nginxBin, err)
	}
	pause, err := c.GoBinary(ctx, "./test/simcluster/pause")
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return nil, err
	}
	w := &Workload{c: c, cs: cs, opts: opts}
	if err := w.createNamespaceAndService(ctx); err != nil {
		return nil, err
	}
	d := w.deployment()
	d.Spec.Template.Spec.NodeName = node
	d.Spec.Template.Spec.Tolerations = []corev1.Toleration{{Key: "kwok.x-k8s.io/node", Operator: corev1.TolerationOpExists}}
	if _, err := cs.AppsV1().Deployments(opts.Namespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("meshpods: create Deployment: %w", err)
	}
	var running []corev1.Pod
	err = poll(ctx, fmt.Sprintf("%d kwok pods of %s/%s Running", opts.Replicas, opts.Namespace, opts.Name), func(ctx context.Context) error {
		pods, err := cs.CoreV1().Pods(opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + opts.Name})
		if err != nil {
			return err
		}
		running = running[:0]
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && podReady(&p) && p.Status.PodIP != "" {
				running = append(running, p)
			}
		}
		if int32(len(running)) < opts.Replicas {
			return fmt.Errorf("%d of %d ready", len(running), len(pods.Items))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range running {
		p, err := w.startFakePod(ctx, &running[i], node, pause)
		if err != nil {
			return nil, err
		}
		w.pods = append(w.pods, p)
	}
	w.logf("%d stand-in pods on %s running", len(w.pods), node)
	return w, nil
}

func randomID() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startFakePod gives one kwok pod its namespace, processes, cgroups and container IDs.
func (w *Workload) startFakePod(ctx context.Context, kp *corev1.Pod, node, pauseBin string) (*Pod, error) {
	c := w.c
	// The kubelet's cgroupfs layout: Guaranteed pods directly under kubepods.
	qos := map[corev1.PodQOSClass]string{corev1.PodQOSBestEffort: "besteffort", corev1.PodQOSBurstable: "burstable"}[kp.Status.QOSClass]
	podDir := filepath.Join(c.CgroupRoot(), node, "kubepods", qos, "pod"+string(kp.UID))
	p := &Pod{
		Namespace: kp.Namespace, Name: kp.Name, UID: string(kp.UID), IP: kp.Status.PodIP, Node: node,
		QOSClass: kp.Status.QOSClass, NativeSidecar: w.opts.NativeSidecar, InboundPorts: w.opts.InboundPorts,
		SandboxID:  randomID(),
		App:        Container{Name: AppContainer, ID: randomID()},
		Sidecar:    Container{Name: SidecarContainer, ID: randomID()},
		cgroupRoot: c.CgroupRoot(),
	}
	p.App.Cgroup = filepath.Join(podDir, p.App.ID)
	p.Sidecar.Cgroup = filepath.Join(podDir, p.Sidecar.ID)
	sandboxCg := filepath.Join(podDir, p.SandboxID)
	for _, cg := range []string{sandboxCg, p.App.Cgroup, p.Sidecar.Cgroup} {
		if err := makeCgroup(cg); err != nil {
			return nil, err
		}
	}
	files := filepath.Join(c.Dir(), "fakepods", p.Namespace+"_"+p.Name)

	// The sandbox: pause in a new network namespace, moved into its cgroup (it never forks).
	sandbox := exec.Command(pauseBin)
	sandbox.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := sandbox.Start(); err != nil {
		return nil, fmt.Errorf("meshpods: start sandbox of %s: %w", p.Name, err)
	}
	go func() { _ = sandbox.Wait() }()
	p.SandboxPID = sandbox.Process.Pid
	p.NetNS = fmt.Sprintf("/proc/%d/ns/net", p.SandboxPID)
	if err := joinCgroup(sandboxCg, p.SandboxPID); err != nil {
		_ = sandbox.Process.Kill()
		return nil, err
	}
	if err := w.wireFakeNetns(ctx, p); err != nil {
		return nil, err
	}
	if err := w.startFakeContainer(ctx, p, p.App, filepath.Join(files, "app"), appConfig, 0); err != nil {
		return nil, err
	}
	if err := w.startFakeContainer(ctx, p, p.Sidecar, filepath.Join(files, "sidecar"), sidecarConfig, ProxyUID); err != nil {
		return nil, err
	}
	if err := waitListening(ctx, p, []int{AppPort, InboundCapturePort}); err != nil {
		for _, ct := range []string{"app", "sidecar"} {
			b, _ := os.ReadFile(filepath.Join(files, ct, "stderr.log"))
			err = fmt.Errorf("%w; %s stderr: %s", err, ct, strings.TrimSpace(string(b)))
		}
		return nil, err
	}
	if err := w.patchFakeStatus(ctx, kp, p); err != nil {
		return nil, err
	}
	if !w.opts.NoInterception {
		if err := p.Intercept(ctx); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// wireFakeNetns connects the pod's namespace to the host with a veth: the pod IP on the pod
// side, a host route to it with the node IP as source, and the node IP as the pod's gateway
// (the host answers ARP for its own addresses on any interface).
func (w *Workload) wireFakeNetns(ctx context.Context, p *Pod) error {
	nodeIP, err := bridgeIP(w.c.PodCIDR())
	if err != nil {
		return err
	}
	host := "mp" + p.UID[:8]
	peer := "mq" + p.UID[:8]
	ns := fmt.Sprint(p.SandboxPID)
	in := func(args ...string) []string { return append([]string{"nsenter", "--net=" + p.NetNS}, args...) }
	steps := [][]string{
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns},
		{"ip", "link", "set", host, "up"},
		in("ip", "link", "set", "lo", "up"),
		in("ip", "link", "set", peer, "name", "eth0"),
		in("ip", "addr", "add", p.IP+"/32", "dev", "eth0"),
		in("ip", "link", "set", "eth0", "up"),
		in("ip", "route", "add", nodeIP, "dev", "eth0", "scope", "link"),
		in("ip", "route", "add", "default", "via", nodeIP, "dev", "eth0"),
		{"ip", "route", "add", p.IP + "/32", "dev", host, "src", nodeIP},
	}
	for _, s := range steps {
		if out, err := exec.CommandContext(ctx, s[0], s[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("meshpods: %s: %w: %s", strings.Join(s, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// bridgeIP is the real node's IP: the first address of its pod subnet, which the cluster's
// bridge carries whether or not a real node runs.
func bridgeIP(podCIDR string) (string, error) {
	ip, _, err := net.ParseCIDR(podCIDR)
	if err != nil {
		return "", err
	}
	v4 := ip.To4()
	return net.IPv4(v4[0], v4[1], v4[2], v4[3]+1).String(), nil
}

// startFakeContainer runs the host's nginx with a container's configuration, rewritten to
// keep its files in dir, inside the pod's namespace, as uid, in the container's cgroup. A
// shell joins the cgroup first so that nginx's worker is forked inside it too.
func (w *Workload) startFakeContainer(ctx context.Context, p *Pod, ct Container, dir, config string, uid int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chown(dir, uid, uid); err != nil {
		return err
	}
	config = strings.ReplaceAll(config, "/tmp/", dir+"/")
	config = strings.ReplaceAll(config, "/dev/stdout", filepath.Join(dir, "access.log"))
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(config), 0o644); err != nil {
		return err
	}
	var join []string
	for _, h := range cgroupHierarchies() {
		join = append(join, filepath.Join(h, ct.Cgroup, "cgroup.procs"))
	}
	nsenter := []string{"nsenter", "--net=" + p.NetNS}
	if uid != 0 {
		nsenter = append(nsenter, fmt.Sprintf("--setuid=%d", uid), fmt.Sprintf("--setgid=%d", uid))
	}
	nsenter = append(nsenter, "--", nginxBin, "-c", conf, "-p", dir+"/")
	script := `for f in ` + shellQuote(join...) + `; do echo $$ > "$f" || exit 1; done; exec ` + shellQuote(nsenter...)
	logf, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("sh", "-c", script)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { _ = cmd.Wait() }()
	return nil
}

func shellQuote(args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// waitListening waits until the pod's namespace accepts connections on every port.
func waitListening(ctx context.Context, p *Pod, ports []int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return poll(ctx, "processes of "+p.Name+" listening", func(ctx context.Context) error {
		for _, port := range ports {
			conn, err := p.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				return err
			}
			conn.Close()
		}
		return nil
	})
}

// patchFakeStatus gives the kwok pod's container statuses the IDs of the stand-in
// containers. kwok's pod-ready stage has run (the pod is Running) and matches no more.
func (w *Workload) patchFakeStatus(ctx context.Context, kp *corev1.Pod, p *Pod) error {
	ids := map[string]string{AppContainer: p.App.ID, SidecarContainer: p.Sidecar.ID}
	return poll(ctx, "status of "+p.Name, func(ctx context.Context) error {
		cur, err := w.cs.CoreV1().Pods(kp.Namespace).Get(ctx, kp.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		set := func(sts []corev1.ContainerStatus) {
			for i := range sts {
				if id, ok := ids[sts[i].Name]; ok {
					sts[i].ContainerID = "containerd://" + id
					sts[i].ImageID = sts[i].Image
				}
			}
		}
		set(cur.Status.ContainerStatuses)
		set(cur.Status.InitContainerStatuses)
		_, err = w.cs.CoreV1().Pods(kp.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

// cgroupHierarchies are the mounted cgroup hierarchies (v1 controllers, named ones, v2).
func cgroupHierarchies() []string {
	var out []string
	for _, m := range cgroupMounts() {
		out = append(out, m.Mountpoint)
	}
	return out
}

// makeCgroup creates a cgroup in every hierarchy. A new v1 cpuset starts without CPUs or
// memory nodes and takes no tasks, so each new level copies its parent's.
func makeCgroup(rel string) error {
	for _, h := range cgroupHierarchies() {
		parts := strings.Split(strings.Trim(rel, "/"), "/")
		cur := h
		for _, part := range parts {
			parent := cur
			cur = filepath.Join(cur, part)
			if err := os.Mkdir(cur, 0o755); err != nil {
				if os.IsExist(err) {
					continue
				}
				return err
			}
			if filepath.Base(h) == "cpuset" {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					v, err := os.ReadFile(filepath.Join(parent, f))
					if err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(cur, f), v, 0o644); err != nil {
						return fmt.Errorf("%s: %w", filepath.Join(cur, f), err)
					}
				}
			}
		}
	}
	return nil
}

func joinCgroup(rel string, pid int) error {
	for _, h := range cgroupHierarchies() {
		if err := os.WriteFile(filepath.Join(h, rel, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0o644); err != nil {
			return fmt.Errorf("meshpods: join %s: %w", filepath.Join(h, rel), err)
		}
	}
	return nil
}
