package meshpods

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

// TestFakeMeshedPods stands a meshed pod up on a kwok node: its status names containers whose
// cgroups hold the real app and sidecar processes, traffic to its pod IP goes through the
// sidecar, loopback inside it does not, and Stop removes it all.
func TestFakeMeshedPods(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	c := simcluster.New(t, simcluster.Options{KwokNodes: 1, NoKwokAgents: true})
	node := c.KwokNodeNames()[0]
	w, err := DeployFake(ctx, c, node, Options{Name: "fake", Log: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fake meshed pod ready %s after start", time.Since(began).Round(time.Millisecond))
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	p := w.Pods()[0]
	kp, err := cs.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if kp.Spec.NodeName != node {
		t.Errorf("pod on %s", kp.Spec.NodeName)
	}
	statusIDs := map[string]string{}
	for _, st := range kp.Status.ContainerStatuses {
		statusIDs[st.Name] = st.ContainerID
	}
	var pids []int
	for _, want := range []struct {
		ct  Container
		uid int
	}{{p.App, 0}, {p.Sidecar, ProxyUID}} {
		if got := statusIDs[want.ct.Name]; got != "containerd://"+want.ct.ID {
			t.Errorf("%s: status container ID %q, want containerd://%s", want.ct.Name, got, want.ct.ID)
		}
		cg := filepath.Join(c.CgroupRoot(), node, "kubepods", "besteffort", "pod"+p.UID, want.ct.ID)
		if want.ct.Cgroup != cg {
			t.Errorf("%s: cgroup %s, want %s", want.ct.Name, want.ct.Cgroup, cg)
		}
		ps, err := p.PIDs(want.ct)
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != 2 {
			t.Errorf("%s: processes %v, want nginx master and worker", want.ct.Name, ps)
		}
		for _, pid := range ps {
			if !procInCgroup(t, pid, cg) {
				t.Errorf("%s: pid %d not in %s", want.ct.Name, pid, cg)
			}
			if !sameFile(p.NetNS, fmt.Sprintf("/proc/%d/ns/net", pid)) {
				t.Errorf("%s: pid %d not in the pod's network namespace", want.ct.Name, pid)
			}
		}
		if u := procUIDs(t, ps[0]); want.uid == ProxyUID && u != [4]int{ProxyUID, ProxyUID, ProxyUID, ProxyUID} {
			t.Errorf("sidecar runs as %v", u)
		}
		pids = append(pids, ps...)
	}
	if applied, err := p.InterceptionApplied(ctx); err != nil || !applied {
		t.Fatalf("interception: %v, %v", applied, err)
	}
	host := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	podURL := fmt.Sprintf("http://%s/", net.JoinHostPort(p.IP, strconv.Itoa(AppPort)))
	if h := get(t, host, podURL); h.Get(SidecarHeader) != "istio-proxy" {
		t.Errorf("host -> %s: %s = %q", podURL, SidecarHeader, h.Get(SidecarHeader))
	}
	if h := get(t, p.HTTPClient(), fmt.Sprintf("http://127.0.0.1:%d/", AppPort)); h.Get(SidecarHeader) != "" {
		t.Errorf("pod loopback went through the sidecar")
	}

	// Delete kills the stand-ins of its own pods, and Stop everything else.
	w2, err := DeployFake(ctx, c, node, Options{Name: "fake2", Log: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	p2 := w2.Pods()[0]
	var pids2 []int
	for _, ct := range []Container{p2.App, p2.Sidecar} {
		ps, err := p2.PIDs(ct)
		if err != nil || len(ps) == 0 {
			t.Fatalf("%s of %s: pids %v, %v", ct.Name, p2.Name, ps, err)
		}
		pids2 = append(pids2, ps...)
	}
	if err := w2.Delete(ctx); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	waitGone(ctx, t, append(pids2, p2.SandboxPID))
	if _, err := p.PIDs(p.Sidecar); err != nil {
		t.Fatalf("deleting fake2 touched fake: %v", err)
	}

	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	waitGone(ctx, t, append(pids, p.SandboxPID))
	for _, h := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(h, c.CgroupRoot())); err == nil {
			t.Errorf("cgroup %s left after Stop", filepath.Join(h, c.CgroupRoot()))
		}
	}
	t.Logf("total %s", time.Since(began).Round(time.Millisecond))
}

// waitGone waits until the processes have exited. SIGKILLed processes linger as zombies until
// reaped (nginx's worker by init), which counts as gone.
func waitGone(ctx context.Context, t *testing.T, pids []int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := poll(ctx, "stand-in processes gone", func(context.Context) error {
		for _, pid := range pids {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(b), ") Z ") {
				return fmt.Errorf("process %d still running: %s", pid, b)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
