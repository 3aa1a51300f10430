package discovery

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// Pods matching the fixture tree in testdata/proc.
func fixturePods() []*corev1.Pod {
	cid := func(c string) string { return "containerd://" + hexID(c) }
	return []*corev1.Pod{
		newPod("shop", "web", "aaaaaaaa-0000-4000-8000-000000000001", "n1",
			annotate("sidecar.istio.io/status", istioStatus), initContainer("istio-init", istioInitArgs...),
			container("app", cid("2"), 80), container("istio-proxy", cid("1"), 15090)),
		newPod("shop", "native", "aaaaaaaa-0000-4000-8000-000000000002", "n1",
			annotate("sidecar.istio.io/status", istioStatus), nativeSidecar("istio-proxy", cid("3")), runAs("istio-proxy", 1337),
			container("app", "containerd://"+hexID("8"), 8080)),
		newPod("books", "reviews", "aaaaaaaa-0000-4000-8000-000000000003", "n1",
			annotate("linkerd.io/proxy-version", "stable-2.14.10"), container("linkerd-proxy", cid("4")), container("app", "", 9080)),
		newPod("books", "delay", "aaaaaaaa-0000-4000-8000-000000000004", "n1",
			container("app", "", 8000), container("delay-proxy", "cri-o://"+hexID("6"))),
		// Meshed, but its sidecar has no process on this node (stale status).
		newPod("books", "stale", "aaaaaaaa-0000-4000-8000-000000000005", "n1",
			annotate("sidecar.istio.io/status", istioStatus), container("istio-proxy", cid("5"))),
		// Meshed, sidecar not started yet.
		newPod("books", "pending", "aaaaaaaa-0000-4000-8000-000000000006", "n1",
			annotate("sidecar.istio.io/status", istioStatus), container("istio-proxy", "")),
		newPod("shop", "plain", "aaaaaaaa-0000-4000-8000-000000000007", "n1", container("app", cid("2"))),
		// Another node's pod: the fake ignores field selectors, so this checks our filter.
		newPod("shop", "elsewhere", "aaaaaaaa-0000-4000-8000-000000000008", "n2",
			annotate("sidecar.istio.io/status", istioStatus), container("istio-proxy", cid("1"))),
	}
}

func startDiscoverer(t *testing.T, pods []*corev1.Pod) (*Discoverer, *fake.Clientset) {
	t.Helper()
	client := fake.NewClientset()
	for _, p := range pods {
		if _, err := client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	d := New(client, "n1", Options{ProcRoot: "testdata/proc", SidecarContainers: map[string]Mesh{"delay-proxy": MeshIstio}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return d, client
}

func podNames(d *Discoverer) []string {
	var n []string
	for _, p := range d.Pods() {
		n = append(n, p.Namespace+"/"+p.Name)
	}
	return n
}

func TestSnapshotFixture(t *testing.T) {
	d, _ := startDiscoverer(t, fixturePods())
	snap, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Sidecar{}
	for _, s := range snap.Sidecars {
		got[s.Pod.String()] = s
	}
	if len(got) != 4 {
		t.Errorf("sidecars for %v, want shop/web, shop/native, books/reviews, books/delay", keys(got))
	}

	web := got["shop/web"]
	if web.Mesh != MeshIstio || web.Container != "istio-proxy" || web.Native || web.ContainerID != hexID("1") || web.Runtime != "containerd" {
		t.Errorf("web: %+v", web)
	}
	if !reflect.DeepEqual(pidsRoles(web), map[int]Role{100: RoleHelper, 101: RoleProxy}) || web.ProxyUID != 1337 {
		t.Errorf("web processes %v uid %d", pidsRoles(web), web.ProxyUID)
	}
	if !reflect.DeepEqual(web.CapturePorts, []uint32{15006, 15001}) || len(web.AppPorts) != 1 || web.AppPorts[0].Port != 80 {
		t.Errorf("web ports capture=%v app=%v", web.CapturePorts, web.AppPorts)
	}
	if web.CgroupPath() != "/meshsim1/kubepods/burstable/podaaaaaaaa-0000-4000-8000-000000000001/"+hexID("1") {
		t.Errorf("web cgroup %q", web.CgroupPath())
	}

	nat := got["shop/native"]
	if !nat.Native || nat.Kind != KindInit || nat.ContainerID != hexID("3") || nat.ProxyUID != 1337 {
		t.Errorf("native: %+v", nat)
	}
	if !reflect.DeepEqual(pidsRoles(nat), map[int]Role{200: RoleProxy, 201: RoleProxy, 202: RoleProxy}) {
		t.Errorf("native processes %v", pidsRoles(nat))
	}

	lk := got["books/reviews"]
	if lk.Mesh != MeshLinkerd || lk.ProxyUID != 2102 || !reflect.DeepEqual(lk.CapturePorts, []uint32{4143, 4140}) ||
		!reflect.DeepEqual(pidsRoles(lk), map[int]Role{300: RoleProxy, 301: RoleHelper}) {
		t.Errorf("linkerd: %+v", lk)
	}

	dl := got["books/delay"]
	if dl.Runtime != "cri-o" || !reflect.DeepEqual(pidsRoles(dl), map[int]Role{400: RoleHelper, 401: RoleProxy}) || dl.ProxyUID != 5678 {
		t.Errorf("override: %+v", dl)
	}

	errs := map[string]error{}
	for _, e := range snap.Errors {
		errs[e.Pod.String()] = e.Err
	}
	if len(errs) != 2 || !errors.Is(errs["books/stale"], ErrNotRunning) || !errors.Is(errs["books/pending"], ErrNotRunning) {
		t.Errorf("errors %v", errs)
	}

	api := web.ToAPI()
	if api.Pod.Uid != "aaaaaaaa-0000-4000-8000-000000000001" || api.Mesh != "istio" || api.ProxyUid != 1337 ||
		len(api.Processes) != 2 || api.Processes[1].Role != "proxy" || api.Processes[1].Pid != 101 || api.CgroupPath != web.CgroupPath() {
		t.Errorf("api %v", api)
	}
}

func TestLookup(t *testing.T) {
	d, _ := startDiscoverer(t, fixturePods())
	if s, err := d.Lookup("shop", "web"); err != nil || s.ContainerID != hexID("1") || len(s.Processes) != 2 {
		t.Errorf("web: %+v, %v", s, err)
	}
	for _, tt := range []struct {
		ns, name string
		want     error
	}{
		{"shop", "plain", ErrNoSidecar},
		{"shop", "missing", ErrPodNotFound},
		{"shop", "elsewhere", ErrPodNotFound},
		{"books", "stale", ErrNotRunning},
	} {
		if _, err := d.Lookup(tt.ns, tt.name); !errors.Is(err, tt.want) {
			t.Errorf("%s/%s: err %v, want %v", tt.ns, tt.name, err, tt.want)
		}
	}
}

func TestWatchKeepsNodeView(t *testing.T) {
	d, client := startDiscoverer(t, fixturePods()[:1])
	ctx := context.Background()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; pods %v", what, podNames(d))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if n := podNames(d); !reflect.DeepEqual(n, []string{"shop/web"}) {
		t.Fatalf("initial pods %v", n)
	}

	// Added: one pod on this node, one on another.
	all := fixturePods()
	for _, p := range []*corev1.Pod{all[2], all[7]} {
		if _, err := client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("reviews added", func() bool { return len(podNames(d)) == 2 })
	if n := podNames(d); !reflect.DeepEqual(n, []string{"books/reviews", "shop/web"}) {
		t.Errorf("after add %v", n)
	}

	// Updated: the web pod loses its sidecar status (restarted container not yet running).
	web := all[0].DeepCopy()
	web.Status.ContainerStatuses[1].ContainerID = ""
	if _, err := client.CoreV1().Pods("shop").UpdateStatus(ctx, web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("web update", func() bool {
		_, err := d.Lookup("shop", "web")
		return errors.Is(err, ErrNotRunning)
	})

	// Deleted.
	if err := client.CoreV1().Pods("books").Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("reviews deleted", func() bool { return len(podNames(d)) == 1 })
	snap, err := d.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Sidecars) != 0 || len(snap.Errors) != 1 || snap.Errors[0].Pod.Name != "web" {
		t.Errorf("snapshot after updates: %+v", snap)
	}
}

func pidsRoles(s Sidecar) map[int]Role {
	m := map[int]Role{}
	for _, p := range s.Processes {
		m[p.PID] = p.Role
	}
	return m
}

func keys(m map[string]Sidecar) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}
