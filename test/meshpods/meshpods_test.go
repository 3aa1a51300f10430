package meshpods

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

// TestMeshedPods deploys an Istio-shaped workload with a regular and one with a native
// sidecar on the real node, and checks for both that traffic to the pod IP goes through the
// nginx sidecar only once interception is applied, that loopback inside the pod reaches the app
// directly, that the sidecar runs as the proxy UID, and that the container IDs in the pod
// status name the containers' cgroups under the cluster's cgroup root.
func TestMeshedPods(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	began := time.Now()
	c := simcluster.New(t, simcluster.Options{RealNode: true})
	t.Logf("cluster up after %s", time.Since(began).Round(time.Millisecond))
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}

	variants := []Options{
		// The regular variant starts without interception, to show that the rules are what
		// sends pod-IP traffic through the sidecar.
		{Name: "web", NoInterception: true, SidecarResources: true},
		{Name: "web-native", NativeSidecar: true, InboundPorts: []int{AppPort}},
		{Name: "web-delay", Proxy: Proxy{Kind: ProxyDelay, Delay: time.Millisecond}},
	}
	workloads := make([]*Workload, len(variants))
	errs := make([]error, len(variants))
	var wg sync.WaitGroup
	deployBegan := time.Now()
	for i, o := range variants {
		o.Log = testLog{t}
		wg.Add(1)
		go func() {
			defer wg.Done()
			workloads[i], errs[i] = Deploy(ctx, c, o)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("deploy %s: %v", variants[i].Name, err)
		}
	}
	t.Logf("workloads ready after %s", time.Since(deployBegan).Round(time.Millisecond))

	host := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i, w := range workloads {
		pods := w.Pods()
		if len(pods) != 1 {
			t.Fatalf("%s: %d pods", w.Name(), len(pods))
		}
		p := pods[0]
		t.Run(w.Name(), func(t *testing.T) {
			podURL := fmt.Sprintf("http://%s/", net.JoinHostPort(p.IP, strconv.Itoa(AppPort)))
			if variants[i].NoInterception {
				if applied, err := p.InterceptionApplied(ctx); err != nil || applied {
					t.Fatalf("interception before Intercept: %v, %v", applied, err)
				}
				if h := get(t, host, podURL); h.Get(SidecarHeader) != "" {
					t.Errorf("without interception the pod IP answered through the sidecar (%s: %q)", SidecarHeader, h.Get(SidecarHeader))
				}
				if err := w.Intercept(ctx); err != nil {
					t.Fatal(err)
				}
			}
			checkPod(ctx, t, c, cs, p, variants[i])
			t.Logf("pod %s ip %s netns %s (pause %d); sidecar %s in %s", p.Name, p.IP, p.NetNS, p.SandboxPID, p.Sidecar.ID[:12], p.Sidecar.Cgroup)
			if err := p.Intercept(ctx); err != nil {
				t.Fatalf("second Intercept: %v", err)
			}
			rules, err := p.NATRules(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(rules, "-j ISTIO_INBOUND"); n != 1 {
				t.Errorf("second Intercept duplicated the rules (%d jumps to ISTIO_INBOUND):\n%s", n, rules)
			}
			if variants[i].Proxy.Kind == ProxyDelay {
				checkDelayProxy(ctx, t, host, p, podURL, variants[i].Proxy)
				return
			}
			if h := get(t, host, podURL); h.Get(SidecarHeader) != "istio-proxy" {
				t.Errorf("host -> %s: %s = %q, want istio-proxy", podURL, SidecarHeader, h.Get(SidecarHeader))
			}
			inPod := p.HTTPClient()
			if h := get(t, inPod, fmt.Sprintf("http://127.0.0.1:%d/", AppPort)); h.Get(SidecarHeader) != "" {
				t.Errorf("pod -> 127.0.0.1:%d went through the sidecar (%s: %q)", AppPort, SidecarHeader, h.Get(SidecarHeader))
			}
			// The capture port itself, from inside: the sidecar, proving the loopback path to
			// it works and that the header is the sidecar's.
			if h := get(t, inPod, fmt.Sprintf("http://127.0.0.1:%d/", InboundCapturePort)); h.Get(SidecarHeader) != "istio-proxy" {
				t.Errorf("pod -> 127.0.0.1:%d: %s = %q", InboundCapturePort, SidecarHeader, h.Get(SidecarHeader))
			}
			checkSidecarLog(ctx, t, cs, p)
		})
	}

	if t.Failed() {
		return
	}
	// Delete waits for the pods to go; the sandbox goes with them.
	gone := workloads[1].Pods()[0]
	if err := workloads[1].Delete(ctx); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if err := poll(ctx, "sandbox of a deleted pod gone", func(context.Context) error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", gone.SandboxPID)); err == nil {
			return fmt.Errorf("pause %d of %s still running", gone.SandboxPID, gone.Name)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	p := workloads[0].Pods()[0]
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.SandboxPID)); err == nil {
		t.Errorf("pause process %d of %s still running after Stop", p.SandboxPID, p.Name)
	}
	if _, err := os.Stat(filepath.Join(cgroupMount(), c.CgroupRoot())); err == nil {
		t.Errorf("cgroup root %s left after Stop", c.CgroupRoot())
	}
	t.Logf("total %s", time.Since(began).Round(time.Millisecond))
}

type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func get(t *testing.T, c *http.Client, url string) http.Header {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != 200 || string(body) != AppBody {
		t.Fatalf("GET %s: %d %q", url, resp.StatusCode, body)
	}
	return resp.Header
}

// checkPod compares what Deploy found with the API object and with containerd's own view,
// and checks the processes' identities and cgroups in procfs.
func checkPod(ctx context.Context, t *testing.T, c *simcluster.Cluster, cs kubernetes.Interface, p *Pod, o Options) {
	kp, err := cs.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if kp.Spec.NodeName != c.RealNodeName() {
		t.Errorf("pod on %q, want %q", kp.Spec.NodeName, c.RealNodeName())
	}
	if kp.Labels["security.istio.io/tlsMode"] != "istio" || kp.Annotations["kubectl.kubernetes.io/default-container"] != AppContainer {
		t.Errorf("Istio metadata missing: labels %v annotations %v", kp.Labels, kp.Annotations)
	}
	wantStatus := `"containers":["istio-proxy"]`
	if o.NativeSidecar {
		wantStatus = `"initContainers":["istio-proxy"]`
		if len(kp.Spec.InitContainers) != 1 || kp.Spec.InitContainers[0].RestartPolicy == nil ||
			*kp.Spec.InitContainers[0].RestartPolicy != corev1.ContainerRestartPolicyAlways || len(kp.Spec.Containers) != 1 {
			t.Errorf("native sidecar: init containers %+v, containers %d", kp.Spec.InitContainers, len(kp.Spec.Containers))
		}
	}
	if !strings.Contains(kp.Annotations["sidecar.istio.io/status"], wantStatus) {
		t.Errorf("sidecar.istio.io/status %q lacks %s", kp.Annotations["sidecar.istio.io/status"], wantStatus)
	}
	if p.NativeSidecar != o.NativeSidecar {
		t.Errorf("Pod.NativeSidecar %v", p.NativeSidecar)
	}
	wantQoS := corev1.PodQOSBestEffort
	if o.SidecarResources {
		wantQoS = corev1.PodQOSBurstable
	}
	if kp.Status.QOSClass != wantQoS {
		t.Errorf("QoS %s, want %s", kp.Status.QOSClass, wantQoS)
	}

	// containerd's task list, independent of the cgroup walk Deploy did: each container's init
	// process, its UID, and the cgroup procfs puts it in.
	tasks := ctrTasks(t, c.ContainerdSocket())
	qos := map[corev1.PodQOSClass]string{corev1.PodQOSBestEffort: "besteffort", corev1.PodQOSBurstable: "burstable"}[kp.Status.QOSClass]
	for _, want := range []struct {
		ct  Container
		uid int
	}{{p.Sidecar, ProxyUID}, {p.App, 0}} {
		pid, ok := tasks[want.ct.ID]
		if !ok {
			t.Errorf("%s: container %s not RUNNING in containerd", want.ct.Name, want.ct.ID)
			continue
		}
		if uids := procUIDs(t, pid); uids != [4]int{want.uid, want.uid, want.uid, want.uid} {
			t.Errorf("%s: pid %d runs as uids %v, want %d", want.ct.Name, pid, uids, want.uid)
		}
		cgPath := filepath.Join(c.CgroupRoot(), "kubepods", qos, "pod"+string(kp.UID), want.ct.ID)
		if cgPath != want.ct.Cgroup {
			t.Errorf("%s: Deploy found cgroup %s, want %s", want.ct.Name, want.ct.Cgroup, cgPath)
		}
		if !procInCgroup(t, pid, cgPath) {
			t.Errorf("%s: pid %d is not in cgroup %s", want.ct.Name, pid, cgPath)
		}
		pids, err := p.PIDs(want.ct)
		if err != nil {
			t.Fatal(err)
		}
		// nginx: a master and one worker, both in the container's cgroup; the delay proxy
		// is one process.
		wantN := 2
		if want.ct.Name == SidecarContainer && o.Proxy.Kind == ProxyDelay {
			wantN = 1
		}
		if len(pids) != wantN {
			t.Errorf("%s: processes %v, want %d", want.ct.Name, pids, wantN)
		}
		for _, q := range pids {
			u := procUIDs(t, q)[0]
			if want.uid == ProxyUID && u != ProxyUID {
				t.Errorf("sidecar process %d runs as uid %d", q, u)
			}
			if want.uid == 0 && q != pid && u != 65534 {
				t.Errorf("app worker %d runs as uid %d, want nobody", q, u)
			}
		}
	}
	if pid, ok := tasks[p.SandboxID]; !ok || pid != p.SandboxPID {
		t.Errorf("sandbox %s: containerd says pid %d (%v), Deploy found %d", p.SandboxID, pid, ok, p.SandboxPID)
	}

	applied, err := p.InterceptionApplied(ctx)
	if err != nil || !applied {
		t.Fatalf("interception applied: %v, %v", applied, err)
	}
	rules, _ := p.NATRules(ctx)
	for _, r := range []string{
		fmt.Sprintf("-A ISTIO_OUTPUT -m owner --uid-owner %d -j RETURN", ProxyUID),
		"-A ISTIO_OUTPUT -o lo -j RETURN",
		"-A OUTPUT -p tcp -j ISTIO_OUTPUT",
	} {
		if !strings.Contains(rules, r+"\n") {
			t.Errorf("rule %q missing from the pod's nat table:\n%s", r, rules)
		}
	}
	wantInbound := "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"
	if o.InboundPorts != nil {
		wantInbound = fmt.Sprintf("-A ISTIO_INBOUND -p tcp -m tcp --dport %d -j ISTIO_IN_REDIRECT", AppPort)
	}
	if !strings.Contains(rules, wantInbound+"\n") {
		t.Errorf("rule %q missing:\n%s", wantInbound, rules)
	}
	// Nothing on the host itself.
	if out, err := exec.CommandContext(ctx, "iptables", "-w", "-t", "nat", "-S").CombinedOutput(); err != nil || strings.Contains(string(out), "ISTIO") {
		t.Errorf("host nat table has ISTIO rules (%v):\n%s", err, out)
	}
}

// ctrTasks maps the running tasks of containerd's k8s.io namespace to their PIDs.
func ctrTasks(t *testing.T, sock string) map[string]int {
	out, err := exec.Command("ctr", "-a", sock, "-n", "k8s.io", "tasks", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr tasks ls: %v: %s", err, out)
	}
	tasks := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^([0-9a-f]{64})\s+(\d+)\s+RUNNING`).FindAllStringSubmatch(string(out), -1) {
		pid, _ := strconv.Atoi(m[2])
		tasks[m[1]] = pid
	}
	return tasks
}

// procUIDs returns the real, effective, saved and filesystem UIDs of a process.
func procUIDs(t *testing.T, pid int) [4]int {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			var u [4]int
			if _, err := fmt.Sscan(rest, &u[0], &u[1], &u[2], &u[3]); err != nil {
				t.Fatal(err)
			}
			return u
		}
	}
	t.Fatalf("no Uid line in /proc/%d/status", pid)
	return [4]int{}
}

// procInCgroup reports whether /proc/<pid>/cgroup puts the process at path in some hierarchy.
func procInCgroup(t *testing.T, pid int, path string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		// hierarchy-ID:controllers:path
		if f := strings.SplitN(line, ":", 3); len(f) == 3 && f[2] == path {
			return true
		}
	}
	return false
}

// checkDelayProxy shows that requests to the pod IP, and not those to loopback inside the pod,
// pass through the known-delay proxy, which holds each for at least its delay. The proxy logs
// a request after writing its response, so the log is polled.
func checkDelayProxy(ctx context.Context, t *testing.T, host *http.Client, p *Pod, podURL string, px Proxy) {
	before, err := p.DelayLog()
	if err != nil {
		t.Fatal(err)
	}
	waitRecords := func(n int) []DelayRecord {
		t.Helper()
		var recs []DelayRecord
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := poll(wctx, fmt.Sprintf("%d delay log records", n), func(context.Context) error {
			var err error
			if recs, err = p.DelayLog(); err != nil || len(recs) >= n {
				return err
			}
			return fmt.Errorf("%d records", len(recs))
		}); err != nil {
			t.Fatal(err)
		}
		return recs
	}
	get(t, host, podURL)
	waitRecords(len(before) + 1)
	// Loopback requests between two pod-IP ones: a record of theirs would show up no later
	// than the second pod-IP request's.
	inPod := p.HTTPClient()
	for range 3 {
		get(t, inPod, fmt.Sprintf("http://127.0.0.1:%d/", AppPort))
	}
	get(t, host, podURL)
	after := waitRecords(len(before) + 2)
	if len(after) != len(before)+2 {
		t.Fatalf("delay log grew from %d to %d records, want 2 more (the pod-IP requests only)", len(before), len(after))
	}
	for _, r := range after[len(before):] {
		if r.ResidencyLow() < px.Delay || r.Upstream <= 0 {
			t.Errorf("delay proxy record %+v: residency at least %s, want >= %s", r, r.ResidencyLow(), px.Delay)
		}
		t.Logf("delay proxy: total %s, upstream %s, residency %s to %s", r.Total, r.Upstream, r.ResidencyLow(), r.Residency())
	}
}

// checkSidecarLog waits for the sidecar's access log (flushed every second) to show the
// request the host sent through it.
func checkSidecarLog(ctx context.Context, t *testing.T, cs kubernetes.Interface, p *Pod) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err := poll(ctx, "sidecar access log", func(ctx context.Context) error {
		b, err := cs.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: SidecarContainer}).DoRaw(ctx)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), `"GET / HTTP/1.1" 200`) {
			return fmt.Errorf("log so far: %q", b)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
