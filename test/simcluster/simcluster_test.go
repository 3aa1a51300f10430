package simcluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// TestClusterUpDown brings up a real node and two kwok nodes, rolls out an agent DaemonSet,
// reaches the agent on the real node and on fake nodes through the apiserver's port-forward,
// and checks that Stop leaves nothing behind.
func TestClusterUpDown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	began := time.Now()
	c := New(t, Options{KwokNodes: 2, RealNode: true})
	t.Logf("cluster up after %s", time.Since(began).Round(time.Millisecond))
	st := *c.state

	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 3 {
		t.Fatalf("want 3 nodes, got %d", len(nodes.Items))
	}
	for _, n := range nodes.Items {
		if !nodeReady(&n) {
			t.Errorf("node %s not Ready", n.Name)
		}
	}
	if c.RealNodeName() == "" || len(c.KwokNodeNames()) != 2 {
		t.Fatalf("nodes: real %q, kwok %v", c.RealNodeName(), c.KwokNodeNames())
	}

	const ns = "simtest"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app.kubernetes.io/name": "mesh-agent"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "mesh-agent", Namespace: ns, Labels: labels},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Tolerations:                   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{{
						Name:            "agent",
						Image:           AgentImage,
						ImagePullPolicy: corev1.PullNever,
						Command:         []string{"/mesh-agent", "--listen", "127.0.0.1:9460"},
						Env: []corev1.EnvVar{{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
						Ports: []corev1.ContainerPort{{Name: "grpc", ContainerPort: 9460}},
					}},
				},
			},
		},
	}
	if _, err := cs.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	podOn := map[string]string{} // node -> pod
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer rcancel()
	if err := waitFor(rctx, "3/3 agent pods Running", nil, func(ctx context.Context) error {
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=mesh-agent"})
		if err != nil {
			return err
		}
		running := map[string]string{}
		var states []string
		for _, p := range pods.Items {
			states = append(states, fmt.Sprintf("%s@%s:%s", p.Name, p.Spec.NodeName, p.Status.Phase))
			if p.Status.Phase == corev1.PodRunning {
				running[p.Spec.NodeName] = p.Name
			}
		}
		if len(running) != 3 {
			return fmt.Errorf("pods %v", states)
		}
		podOn = running
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("DaemonSet 3/3 Running after %s", time.Since(began).Round(time.Millisecond))

	real, err := cs.CoreV1().Pods(ns).Get(ctx, podOn[c.RealNodeName()], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The real node's pod must really run in containerd, in the cluster's pod network.
	cid := strings.TrimPrefix(real.Status.ContainerStatuses[0].ContainerID, "containerd://")
	out, err := exec.Command("ctr", "-a", st.ContainerdSocket, "-n", "k8s.io", "tasks", "ls").CombinedOutput()
	if err != nil || !regexp.MustCompile(regexp.QuoteMeta(cid)+`\s+\d+\s+RUNNING`).Match(out) {
		t.Fatalf("container %s not RUNNING in containerd (%v):\n%s", cid, err, out)
	}
	if !strings.HasPrefix(real.Status.PodIP, strings.TrimSuffix(st.PodCIDR, "0/24")) {
		t.Errorf("real pod IP %q not in %s", real.Status.PodIP, st.PodCIDR)
	}

	// In-cluster access to the apiserver through the kubernetes Service, from the pod's network
	// namespace (the stand-in for kube-proxy).
	pid := regexp.MustCompile(regexp.QuoteMeta(cid) + `\s+(\d+)\s+RUNNING`).FindSubmatch(out)[1]
	if err := tlsFromNetns(string(pid), net.JoinHostPort(st.serviceIP(), "443"), c.pki.path("ca.crt")); err != nil {
		t.Errorf("pod to kubernetes.default: %v", err)
	}

	cfg := c.RESTConfig()
	for _, node := range append([]string{c.RealNodeName()}, c.KwokNodeNames()...) {
		if err := healthThroughForward(ctx, cfg, cs, ns, podOn[node]); err != nil {
			t.Errorf("agent on %s via port-forward to %s: %v", node, podOn[node], err)
		} else {
			t.Logf("agent on %s SERVING through pods/portforward", node)
		}
	}

	// kubectl, the way users and the demo reach pods, to a fake node's agent.
	kwok1 := c.KwokNodeNames()[1]
	if err := healthThroughKubectl(ctx, c.Kubeconfig(), ns, podOn[kwok1]); err != nil {
		t.Errorf("kubectl port-forward to %s: %v", podOn[kwok1], err)
	}

	// A dead agent on a fake node: the pod stays, its agent stops answering, and comes back.
	kwok0 := c.KwokNodeNames()[0]
	if err := c.StopKwokAgent(kwok0); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	if err := healthThroughForward(sctx, cfg, cs, ns, podOn[kwok0]); err == nil {
		t.Errorf("agent of %s still answers after StopKwokAgent", kwok0)
	}
	scancel()
	if err := c.StartKwokAgent(kwok0); err != nil {
		t.Fatal(err)
	}
	if err := healthThroughForward(ctx, cfg, cs, ns, podOn[kwok0]); err != nil {
		t.Errorf("agent of %s after StartKwokAgent: %v", kwok0, err)
	}

	stopBegan := time.Now()
	if err := c.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	t.Logf("teardown took %s", time.Since(stopBegan).Round(time.Millisecond))
	assertNothingLeft(t, &st, c.state.Procs)
	t.Logf("total %s", time.Since(began).Round(time.Millisecond))
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// healthThroughForward opens a client-go port-forward to the pod's port 9460 and runs a gRPC
// health check through it.
func healthThroughForward(ctx context.Context, cfg *rest.Config, cs kubernetes.Interface, ns, pod string) error {
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return err
	}
	url := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, url)
	stop, ready := make(chan struct{}), make(chan struct{})
	defer close(stop)
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:9460"}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errc:
		return fmt.Errorf("port-forward: %v", err)
	case <-ctx.Done():
		return ctx.Err()
	}
	ports, err := fw.GetPorts()
	if err != nil {
		return err
	}
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return grpcHealth(hctx, fmt.Sprintf("127.0.0.1:%d", ports[0].Local))
}

func healthThroughKubectl(ctx context.Context, kubeconfig, ns, pod string) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "kubectl", "--kubeconfig", kubeconfig, "-n", ns, "port-forward", "--address", "127.0.0.1", "pod/"+pod, ":9460")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(stdout)
	re := regexp.MustCompile(`Forwarding from 127\.0\.0\.1:(\d+) -> 9460`)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			return grpcHealth(cctx, "127.0.0.1:"+m[1])
		}
	}
	return fmt.Errorf("kubectl port-forward printed no forwarding line: %s", stderr.String())
}

// assertNothingLeft checks the host for every kind of thing a cluster creates.
func assertNothingLeft(t *testing.T, st *state, procs []procRecord) {
	t.Helper()
	for _, r := range procs {
		if r.alive() {
			t.Errorf("process %s (pid %d) still running", r.Name, r.PID)
		}
		if syscall.Kill(-r.PID, 0) == nil {
			t.Errorf("process group of %s (%d) still has members", r.Name, r.PID)
		}
	}
	if pids := pidsWithArg(st.ContainerdSocket); st.ContainerdSocket != "" && len(pids) > 0 {
		t.Errorf("containerd shims still running: %v", pids)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", st.Bridge)); err == nil {
		t.Errorf("bridge %s still exists", st.Bridge)
	}
	if ms := mountsUnder(st.Dir); len(ms) > 0 {
		t.Errorf("mounts left under %s: %v", st.Dir, ms)
	}
	for _, h := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(h, st.CgroupRoot)); err == nil {
			t.Errorf("cgroup %s left", filepath.Join(h, st.CgroupRoot))
		}
	}
	if _, err := os.Stat(st.Dir); err == nil {
		t.Errorf("state dir %s left", st.Dir)
	}
	if len(st.NATRule) > 0 {
		if exec.Command("iptables", append([]string{"-w", "-t", "nat", "-C", "PREROUTING"}, st.NATRule...)...).Run() == nil {
			t.Errorf("iptables rule left: %v", st.NATRule)
		}
	}
	// Another cluster (the demo, a parallel test) may have started to use them meanwhile.
	for _, d := range st.CreatedDirs {
		if _, err := os.Stat(d); err == nil && !otherClusterRunning(st) {
			t.Errorf("host directory %s was created by the cluster and is still there", d)
		}
	}
	results, _ := os.ReadDir("/var/lib/cni/results")
	for _, e := range results {
		if strings.HasPrefix(e.Name(), st.Bridge+"-") {
			t.Errorf("CNI result cache %s left", e.Name())
		}
	}
	if out, _ := exec.Command("ip", "-o", "link", "show", "type", "veth").Output(); strings.Contains(string(out), "master "+st.Bridge) {
		t.Errorf("veths on %s left:\n%s", st.Bridge, out)
	}
}

func otherClusterRunning(st *state) bool {
	for slot := 0; slot < maxSlots; slot++ {
		if slot == st.Slot {
			continue
		}
		if _, err := os.Stat(slotLock(slot)); err != nil {
			continue
		}
		lock, ok, err := tryFlock(slotLock(slot))
		if err == nil && !ok {
			return true
		}
		if ok {
			lock.Close()
		}
	}
	return false
}

// tlsFromNetns completes a TLS handshake with addr, verifying the apiserver certificate against
// the cluster CA, from inside the network namespace of process pid.
func tlsFromNetns(pid, addr, caPath string) error {
	ca, err := os.ReadFile(caPath)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	target, err := os.Open(filepath.Join("/proc", pid, "ns", "net"))
	if err != nil {
		return err
	}
	defer target.Close()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	defer self.Close()
	errc := make(chan error, 1)
	go func() {
		// The socket is created by this thread, in the namespace it is switched to. If switching
		// back fails the thread stays locked and dies with the goroutine instead of being reused.
		runtime.LockOSThread()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{RootCAs: pool, ServerName: "kubernetes.default.svc"})
		if err == nil {
			conn.Close()
		}
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
