package server

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/agent/metrics"
	"github.com/kubectl-mesh/kubectl-mesh/agent/usage"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

func hexID(c string) string { return strings.Repeat(c, 64) }

const istioStatus = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"imagePullSecrets":null,"revision":"default"}`

// meshedPod is shaped the way Istio injects a pod: the annotation, the app container
// and the istio-proxy container with its containerd status ID.
func meshedPod(ns, name, uid, node, proxyID string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid),
			Annotations: map[string]string{"sidecar.istio.io/status": istioStatus}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{
			{Name: "app", Image: "nginx", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}},
			{Name: "istio-proxy", Image: "proxy"},
		}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{
			{Name: "app"},
			{Name: "istio-proxy", ContainerID: "containerd://" + proxyID, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}},
		}},
	}
	return p
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// copyTree copies the regular files below src (the fixture trees hold nothing else that
// matters; procfs's "self" link is a placeholder file there).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		b, err := io.ReadAll(in)
		if err != nil {
			return err
		}
		writeFile(t, filepath.Join(dst, rel), string(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

const (
	webPodUID = "aaaaaaaa-0000-4000-8000-000000000001"
	webCgroup = "/meshsim1/kubepods/burstable/pod" + webPodUID
	// Working set = usage − total_inactive_file, as cAdvisor computes it on v1.
	fixtureUsage    = 73400320
	fixtureInactive = 12582912
	fixtureRSS      = 36864 << 10
	fixturePSS      = 30720 << 10
)

// fixture builds a procfs from discovery's fixture tree, with usage figures added for
// shop/web's two processes (pilot-agent 100, envoy 101), the node files and a stand-in
// for the agent's own process (4242); and a v1 cgroup root with shop/web's container.
// The other fixture sidecars have processes without stat files, as if they had exited
// between discovery and sampling.
func fixture(t *testing.T) (procRoot, cgroupRoot string) {
	t.Helper()
	procRoot, cgroupRoot = t.TempDir(), t.TempDir()
	copyTree(t, "../discovery/testdata/proc", procRoot)
	copyTree(t, "../usage/testdata/proc/4242", filepath.Join(procRoot, "4242"))
	for _, f := range []string{"stat", "meminfo"} {
		b, err := os.ReadFile(filepath.Join("../usage/testdata/proc", f))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(procRoot, f), string(b))
	}
	rollup, err := os.ReadFile("../usage/testdata/proc/4242/smaps_rollup")
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range []string{"100", "101"} {
		writeFile(t, filepath.Join(procRoot, pid, "stat"),
			pid+" (x) S 1 "+pid+" "+pid+" 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 123456 100000 200 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n")
		writeFile(t, filepath.Join(procRoot, pid, "smaps_rollup"), string(rollup))
		writeFile(t, filepath.Join(procRoot, pid, "task", pid, "schedstat"), "5000000 0 10\n")
	}
	dir := webCgroup + "/" + hexID("1")
	writeFile(t, filepath.Join(cgroupRoot, "cpuacct", dir, "cpuacct.usage"), "123456789012\n")
	writeFile(t, filepath.Join(cgroupRoot, "cpu", dir, "cpu.stat"), "nr_periods 1200\nnr_throttled 340\nthrottled_time 8500000000\n")
	writeFile(t, filepath.Join(cgroupRoot, "memory", dir, "memory.usage_in_bytes"), "73400320\n")
	writeFile(t, filepath.Join(cgroupRoot, "memory", dir, "memory.stat"), "total_inactive_file 12582912\ninactive_file 10485760\n")
	// books/reviews sits in the v2 hierarchy of this hybrid layout: its cgroup reads but
	// its processes do not.
	v2dir := filepath.Join(cgroupRoot, "unified", "kubepods/besteffort/podaaaaaaaa-0000-4000-8000-000000000003", hexID("4"))
	writeFile(t, filepath.Join(cgroupRoot, "unified", "cgroup.controllers"), "cpu memory\n")
	writeFile(t, filepath.Join(v2dir, "cpu.stat"), "usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\n")
	writeFile(t, filepath.Join(v2dir, "memory.current"), "1048576\n")
	writeFile(t, filepath.Join(v2dir, "memory.stat"), "inactive_file 4096\n")
	return procRoot, cgroupRoot
}

func fixturePods() []*corev1.Pod {
	web := meshedPod("shop", "web", webPodUID, "n1", hexID("1"))
	native := meshedPod("shop", "native", "aaaaaaaa-0000-4000-8000-000000000002", "n1", hexID("3"))
	reviews := meshedPod("books", "reviews", "aaaaaaaa-0000-4000-8000-000000000003", "n1", hexID("4"))
	reviews.Spec.Containers[1].Name, reviews.Status.ContainerStatuses[1].Name = "linkerd-proxy", "linkerd-proxy"
	reviews.Annotations = map[string]string{"linkerd.io/proxy-version": "stable-2.14.10"}
	// Meshed, but its sidecar has no process on this node.
	stale := meshedPod("books", "stale", "aaaaaaaa-0000-4000-8000-000000000005", "n1", hexID("5"))
	elsewhere := meshedPod("shop", "elsewhere", "aaaaaaaa-0000-4000-8000-000000000008", "n2", hexID("1"))
	return []*corev1.Pod{web, native, reviews, stale, elsewhere}
}

func startFixtureAgent(t *testing.T) *Agent {
	t.Helper()
	procRoot, cgroupRoot := fixture(t)
	client := fake.NewClientset()
	for _, p := range fixturePods() {
		if _, err := client.CoreV1().Pods(p.Namespace).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	d := discovery.New(client, "n1", discovery.Options{ProcRoot: procRoot})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sampler, err := usage.NewSampler(cgroupRoot, procRoot)
	if err != nil {
		t.Fatal(err)
	}
	sampler.SelfPID = 4242
	return New(Facts{NodeName: "n1"}, SyncedDiscovery(d), sampler)
}

func TestSnapshotFixture(t *testing.T) {
	c := dial(t, startFixtureAgent(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Snapshot(ctx, &agentapi.SnapshotRequest{Window: durationpb.New(150 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.NodeName != "n1" || resp.Window.AsDuration() < 150*time.Millisecond || time.Since(resp.Time.AsTime()) > time.Minute {
		t.Errorf("header: node %q window %v time %v", resp.NodeName, resp.Window.AsDuration(), resp.Time.AsTime())
	}
	sc := map[string]*agentapi.Sidecar{}
	for _, s := range resp.Sidecars {
		sc[s.Pod.Namespace+"/"+s.Pod.Name] = s
	}
	if len(sc) != 3 || sc["shop/web"] == nil || sc["shop/native"] == nil || sc["books/reviews"] == nil {
		t.Fatalf("sidecars %v", resp.Sidecars)
	}
	web := sc["shop/web"]
	if web.Mesh != "istio" || web.Container != "istio-proxy" || web.ContainerId != hexID("1") || web.ProxyUid != 1337 ||
		web.CgroupPath != webCgroup+"/"+hexID("1") {
		t.Errorf("web identity %v", web)
	}
	u := web.Usage
	if u == nil {
		t.Fatalf("web has no usage")
	}
	// The fixture's counters do not move, so the rate is exactly 0 and the gauges exact.
	if u.CpuMillicores != 0 || u.MemoryWorkingSetBytes != fixtureUsage-fixtureInactive ||
		u.MemoryRssBytes != 2*fixtureRSS || u.MemoryPssBytes != 2*fixturePSS {
		t.Errorf("web usage %v", u)
	}
	roles := map[int32]string{}
	for _, p := range web.Processes {
		roles[p.Pid] = p.Role
		if p.Usage == nil || p.Usage.MemoryRssBytes != fixtureRSS || p.Usage.MemoryPssBytes != fixturePSS || p.Usage.MemoryWorkingSetBytes != 0 {
			t.Errorf("process %d usage %v", p.Pid, p.Usage)
		}
	}
	if len(roles) != 2 || roles[100] != "helper" || roles[101] != "proxy" {
		t.Errorf("web roles %v", roles)
	}

	// Reviews' cgroup reads but its processes do not: cgroup figures without a partial
	// RSS/PSS sum, and an error saying so.
	if u := sc["books/reviews"].Usage; u == nil || u.MemoryWorkingSetBytes != 1048576-4096 || u.MemoryRssBytes != 0 || u.MemoryPssBytes != 0 {
		t.Errorf("reviews usage %v", u)
	}
	// Native resolved to processes but neither its cgroup nor its processes can be read:
	// listed, without usage, with an error saying why.
	if sc["shop/native"].Usage != nil {
		t.Errorf("native has usage %v though its cgroup is missing", sc["shop/native"].Usage)
	}
	for _, k := range []string{"shop/native", "books/reviews"} {
		for _, p := range sc[k].Processes {
			if p.Usage != nil || p.Role == "" {
				t.Errorf("%s process %v", k, p)
			}
		}
	}
	errs := map[string]string{}
	for _, e := range resp.Errors {
		errs[e.Pod.Namespace+"/"+e.Pod.Name] += e.Error + "\n"
	}
	if len(errs) != 3 || !strings.Contains(errs["books/stale"], "not running") ||
		!strings.Contains(errs["shop/native"], "container cgroup") || !strings.Contains(errs["shop/native"], "process 200") ||
		!strings.Contains(errs["books/reviews"], "measure sidecar linkerd-proxy") || !strings.Contains(errs["books/reviews"], "process 300") ||
		!strings.Contains(errs["books/reviews"], "RSS and PSS left at 0") || strings.Contains(errs["books/reviews"], "container cgroup") ||
		errs["shop/web"] != "" {
		t.Errorf("errors %q", errs)
	}
	if resp.Node == nil || resp.Node.CpuCores != 2 || resp.Node.MemoryTotalBytes == 0 || resp.Node.CpuMillicores != 0 {
		t.Errorf("node %v", resp.Node)
	}
	if resp.Agent == nil || resp.Agent.MemoryRssBytes != fixtureRSS || resp.Agent.MemoryPssBytes != fixturePSS {
		t.Errorf("agent %v", resp.Agent)
	}

	// The namespace filter applies to sidecars and errors alike.
	resp, err = c.Snapshot(ctx, &agentapi.SnapshotRequest{Window: durationpb.New(100 * time.Millisecond), Namespaces: []string{"books"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Sidecars) != 1 || resp.Sidecars[0].Pod.Name != "reviews" || len(resp.Errors) != 2 {
		t.Errorf("books only: sidecars %v errors %v", resp.Sidecars, resp.Errors)
	}
}

func TestSnapshotWindowBounds(t *testing.T) {
	a := startFixtureAgent(t)
	c := dial(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, w := range []*durationpb.Duration{
		durationpb.New(99 * time.Millisecond), durationpb.New(61 * time.Second), durationpb.New(-time.Second),
		{Seconds: 1, Nanos: -5},
	} {
		_, err := c.Snapshot(ctx, &agentapi.SnapshotRequest{Window: w})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "window") {
			t.Errorf("window %v: %v, want InvalidArgument", w, err)
		}
	}
	// No window means the default of one second.
	start := time.Now()
	resp, err := c.Snapshot(ctx, &agentapi.SnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Window.AsDuration() < DefaultWindow || time.Since(start) < DefaultWindow {
		t.Errorf("default window %v after %v", resp.Window.AsDuration(), time.Since(start))
	}

	// Cancelling ends the window at once with Canceled.
	cctx, ccancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, ccancel)
	start = time.Now()
	_, err = a.Snapshot(cctx, &agentapi.SnapshotRequest{Window: durationpb.New(MaxWindow)})
	if status.Code(err) != codes.Canceled || time.Since(start) > 10*time.Second {
		t.Errorf("cancelled after %v: %v, want Canceled", time.Since(start), err)
	}
}

func TestSnapshotWithoutDiscovery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sampler, err := usage.NewSampler("", "")
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t, New(Facts{NodeName: "n1"}, NoDiscovery(errors.New("neither --kubeconfig nor $KUBECONFIG is set")), sampler))
	_, err = c.Snapshot(ctx, &agentapi.SnapshotRequest{})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "no Kubernetes API access") ||
		!strings.Contains(status.Convert(err).Message(), "KUBECONFIG") {
		t.Errorf("no API: %v", err)
	}
	if _, err := c.Info(ctx, &agentapi.InfoRequest{}); err != nil {
		t.Errorf("Info without API access: %v", err)
	}

	// A watch whose first list never answers: Snapshot says Unavailable, not a hang.
	client := fake.NewClientset()
	release := make(chan struct{})
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-release
		return true, &corev1.PodList{}, nil
	})
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	// Released before the watch's context ends, so the informer's blocked list returns.
	defer close(release)
	disc := StartDiscovery(wctx, discovery.New(client, "n1", discovery.Options{}), slog.New(slog.DiscardHandler))
	c = dial(t, New(Facts{NodeName: "n1"}, disc, sampler))
	_, err = c.Snapshot(ctx, &agentapi.SnapshotRequest{Window: durationpb.New(100 * time.Millisecond)})
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "pod watch not synced yet") {
		t.Errorf("unsynced: %v", err)
	}
}

func TestScraperFigures(t *testing.T) {
	a := startFixtureAgent(t)
	s := NewScraper(a.disc, a.measurer.(*usage.Sampler), nil, slog.New(slog.DiscardHandler))
	first := s.Figures()
	if !first.DiscoveryReady || first.Meshes["istio"] != 2 || first.Meshes["linkerd"] != 1 || len(first.Sidecars) != 3 {
		t.Fatalf("first scrape %+v", first)
	}
	var web metrics.SidecarFigures
	for _, f := range first.Sidecars {
		switch {
		case f.Pod == "web":
			web = f
		case f.Pod == "reviews":
			if !f.HasMemory || f.WorkingSet != 1048576-4096 || f.HasCPU {
				t.Errorf("first reviews %+v", f)
			}
		case f.HasMemory || f.HasCPU:
			t.Errorf("unmeasurable sidecar has figures: %+v", f)
		}
	}
	// A first scrape has no previous sample, so memory but no CPU rate.
	if web.Namespace != "shop" || web.Mesh != "istio" || !web.HasMemory || web.WorkingSet != fixtureUsage-fixtureInactive || web.HasCPU {
		t.Errorf("first web %+v", web)
	}
	if !first.HasAgentRSS || first.AgentRSS != fixtureRSS || first.HasAgentCPU {
		t.Errorf("first agent %+v", first)
	}
	if again := s.Figures(); again.HasAgentCPU {
		t.Errorf("scrape within %v recomputed: %+v", MinScrapeInterval, again)
	}
	s.at = s.at.Add(-MinScrapeInterval) // as if a scrape interval had passed
	second := s.Figures()
	for _, f := range second.Sidecars {
		if f.Pod == "web" && (!f.HasCPU || f.CPUMillicores != 0) {
			t.Errorf("second web %+v", f)
		}
	}
	if !second.HasAgentCPU {
		t.Errorf("second agent %+v", second)
	}

	none := NewScraper(NoDiscovery(errors.New("no API")), a.measurer.(*usage.Sampler), nil, slog.New(slog.DiscardHandler)).Figures()
	if none.DiscoveryReady || len(none.Sidecars) != 0 || !none.HasAgentRSS {
		t.Errorf("without discovery %+v", none)
	}
}
