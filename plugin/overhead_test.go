package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
)

// snapshotServer is an agent that answers Snapshot with fixed figures and remembers the
// requests it got.
type snapshotServer struct {
	agentapi.UnimplementedAgentServer
	resp *agentapi.SnapshotResponse
	err  error

	mu   sync.Mutex
	reqs []*agentapi.SnapshotRequest
}

func (s *snapshotServer) Snapshot(_ context.Context, req *agentapi.SnapshotRequest) (*agentapi.SnapshotResponse, error) {
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	s.mu.Unlock()
	return s.resp, s.err
}

func (s *snapshotServer) requests() []*agentapi.SnapshotRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*agentapi.SnapshotRequest(nil), s.reqs...)
}

const mi = 1 << 20

func sidecar(ns, pod string, cpu float64, mem uint64) *agentapi.Sidecar {
	return &agentapi.Sidecar{
		Pod: &agentapi.PodRef{Namespace: ns, Name: pod, Uid: "uid-" + pod}, Container: "istio-proxy", Mesh: "istio",
		Usage: &agentapi.Usage{CpuMillicores: cpu, MemoryWorkingSetBytes: mem, MemoryRssBytes: mem + 5*mi, MemoryPssBytes: mem - 5*mi,
			CpuThrottled: durationpb.New(3 * time.Millisecond)},
	}
}

// overheadEnv is four nodes: two with sidecars, one with none, and one whose agent fails.
// The snapshot servers are returned by node name.
func overheadEnv(t *testing.T) (agentReach, map[string]*snapshotServer) {
	t.Helper()
	objs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: manifests.DefaultNamespace}},
		linuxDaemonSet(),
		node("node-a"), node("node-b"), node("node-c"), node("node-d"),
		agentPod("mesh-agent-aaaaa", "node-a", true, ""),
		agentPod("mesh-agent-bbbbb", "node-b", true, ""),
		agentPod("mesh-agent-ccccc", "node-c", true, ""),
		agentPod("mesh-agent-ddddd", "node-d", true, ""),
		// The workloads, for -l.
		meshedPod("demo", "web-a", "node-a", webLabels),
		meshedPod("demo", "cart-a", "node-a", map[string]string{"app": "cart"}),
		meshedPod("demo", "web-b", "node-b", webLabels),
	}
	env := newFakeEnv(t, objs)
	window := durationpb.New(2 * time.Second)
	servers := map[string]*snapshotServer{
		"node-a": {resp: &agentapi.SnapshotResponse{NodeName: "node-a", Window: window,
			Node:     &agentapi.NodeUsage{CpuCores: 4, MemoryTotalBytes: 8 << 30, CpuMillicores: 900},
			Agent:    &agentapi.Usage{CpuMillicores: 3, MemoryWorkingSetBytes: 30 * mi},
			Sidecars: []*agentapi.Sidecar{sidecar("demo", "web-a", 30, 40*mi), sidecar("demo", "cart-a", 25, 30*mi)},
			Errors:   []*agentapi.PodError{{Pod: &agentapi.PodRef{Namespace: "demo", Name: "gone-a"}, Error: "cgroup vanished"}},
		}},
		"node-b": {resp: &agentapi.SnapshotResponse{NodeName: "node-b", Window: window,
			Node:     &agentapi.NodeUsage{CpuCores: 2, MemoryTotalBytes: 4 << 30, CpuMillicores: 500},
			Agent:    &agentapi.Usage{CpuMillicores: 2, MemoryWorkingSetBytes: 25 * mi},
			Sidecars: []*agentapi.Sidecar{sidecar("demo", "web-b", 80, 60*mi)},
		}},
		"node-c": {resp: &agentapi.SnapshotResponse{NodeName: "node-c", Window: window,
			Node:  &agentapi.NodeUsage{CpuCores: 2, MemoryTotalBytes: 4 << 30, CpuMillicores: 100},
			Agent: &agentapi.Usage{CpuMillicores: 1, MemoryWorkingSetBytes: 20 * mi},
		}},
		"node-d": {err: status.Error(codes.Internal, "reading cgroups: permission denied")},
	}
	dials := map[string]func(context.Context) (net.Conn, error){}
	for n, s := range servers {
		dials["mesh-agent-"+strings.Repeat(n[len(n)-1:], 5)] = startAgent(t, s)
	}
	reach := agentReach{
		newCluster: env.newCluster,
		newDial: func(*cluster) (agents.DialFunc, error) {
			return func(ctx context.Context, pod *corev1.Pod) (net.Conn, error) {
				d, ok := dials[pod.Name]
				if !ok {
					return nil, errors.New("no such agent " + pod.Name)
				}
				return d(ctx)
			}, nil
		},
	}
	return reach, servers
}

func overheadOptions(reach agentReach) (*OverheadOptions, func() (string, string)) {
	streams, out, errOut := testStreams()
	o := &OverheadOptions{
		configFlags:    genericclioptions.NewConfigFlags(false),
		IOStreams:      streams,
		Window:         defaultWindow,
		Timeout:        5 * time.Second,
		AgentNamespace: manifests.DefaultNamespace,
		reach:          reach,
	}
	return o, func() (string, string) { return out.String(), errOut.String() }
}

// cells splits a table row on runs of two or more spaces, as tabwriter pads them.
func cells(line string) []string {
	return regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
}

func tableRows(out string) map[string][]string {
	rows := map[string][]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := cells(l)
		rows[f[0]] = f
	}
	return rows
}

func TestOverheadNodes(t *testing.T) {
	reach, _ := overheadEnv(t)
	o, output := overheadOptions(reach)
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	err := o.Run(context.Background())
	if err == nil || err.Error() != "1 of 4 nodes did not report: node-d; see `kubectl mesh agent status`" {
		t.Errorf("error %v", err)
	}
	out, _ := output()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 7 || lines[0] != "NODE    MESH   SIDECARS  CPU   % OF NODE CPU  MEMORY  % OF NODE MEMORY" {
		t.Fatalf("table:\n%s", out)
	}
	want := map[int]string{
		1: "node-a|istio|2|55m|1.4%|70Mi|0.9%",
		2: "node-b|istio|1|80m|4.0%|60Mi|1.5%",
		3: "node-c|-|0|0m|0%|0Mi|0%",
		4: "node-d|-|-|-|-|-|agent error (Internal): reading cgroups: permission denied",
		5: "TOTAL|istio|3|135m|1.7%|130Mi|0.8%",
	}
	for i, w := range want {
		if got := strings.Join(cells(lines[i]), "|"); got != w {
			t.Errorf("row %d: %s, want %s", i, got, w)
		}
	}
	if lines[6] != "warning: node node-a: pod demo/gone-a: cgroup vanished" {
		t.Errorf("warning line %q", lines[6])
	}
}

func TestOverheadWide(t *testing.T) {
	reach, _ := overheadEnv(t)
	o, output := overheadOptions(reach)
	o.Output = outputWide
	o.Nodes = []string{"node-b", "node-a"}
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatalf("only answering nodes: %v", err)
	}
	out, _ := output()
	rows := tableRows(out)
	if len(rows) != 5 || rows["node-c"] != nil {
		t.Fatalf("table:\n%s", out)
	}
	if got := strings.Join(rows["node-a"][7:], "|"); got != "900m|3m|30Mi|2s" {
		t.Errorf("wide columns of node-a: %s", got)
	}
	if got := strings.Join(rows["TOTAL"][1:], "|"); got != "istio|3|135m|2.2%|130Mi|1.1%|1400m|5m|55Mi|-" {
		t.Errorf("TOTAL: %s", got)
	}
}

func TestOverheadUnknownNode(t *testing.T) {
	reach, _ := overheadEnv(t)
	o, _ := overheadOptions(reach)
	o.Nodes = []string{"node-z"}
	_ = o.Validate()
	if err := o.Run(context.Background()); err == nil || !strings.Contains(err.Error(), `node "node-z" not found among the agent's nodes`) {
		t.Errorf("error %v", err)
	}
}

func TestOverheadPods(t *testing.T) {
	reach, servers := overheadEnv(t)
	o, output := overheadOptions(reach)
	o.Pods = true
	o.namespace = "demo"
	o.Window = 500 * time.Millisecond
	_ = o.Validate()
	if err := o.Run(context.Background()); err == nil {
		t.Error("a node did not answer, exit status 0")
	}
	out, _ := output()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := []string{
		"NAMESPACE|POD|NODE|MESH|CPU|MEMORY",
		"demo|cart-a|node-a|istio|25m|30Mi",
		"demo|web-a|node-a|istio|30m|40Mi",
		"demo|web-b|node-b|istio|80m|60Mi",
		"-|-|node-d|-|-|agent error (Internal): reading cgroups: permission denied",
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", out)
	}
	for i, w := range want {
		if got := strings.Join(cells(lines[i]), "|"); got != w {
			t.Errorf("row %d: %s, want %s", i, got, w)
		}
	}
	req := servers["node-a"].requests()
	if len(req) != 1 || strings.Join(req[0].GetNamespaces(), ",") != "demo" || req[0].GetWindow().AsDuration() != 500*time.Millisecond {
		t.Errorf("snapshot requests %v", req)
	}
}

func TestOverheadSelector(t *testing.T) {
	reach, _ := overheadEnv(t)
	o, output := overheadOptions(reach)
	o.Selector = "app=web"
	o.Pods = true
	o.Output = outputWide
	_ = o.Validate()
	_ = o.Run(context.Background())
	out, _ := output()
	if strings.Contains(out, "cart-a") || !strings.Contains(out, "web-a") || !strings.Contains(out, "web-b") {
		t.Errorf("-l app=web:\n%s", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 || strings.Join(cells(lines[1]), "|") != "demo|web-a|node-a|istio|30m|40Mi|istio-proxy|no|3ms|45Mi|35Mi" {
		t.Errorf("wide pod columns:\n%s", out)
	}

	o, output = overheadOptions(reach)
	o.Selector = "app=web"
	_ = o.Validate()
	_ = o.Run(context.Background())
	out, _ = output()
	rows := tableRows(out)
	if got := strings.Join(rows["node-a"][1:4], "|"); got != "istio|1|30m" {
		t.Errorf("node-a with -l app=web: %s\n%s", got, out)
	}
	if got := strings.Join(rows["TOTAL"][1:4], "|"); got != "istio|2|110m" {
		t.Errorf("TOTAL with -l app=web: %s", got)
	}
}

func TestOverheadSort(t *testing.T) {
	for _, c := range []struct {
		by    string
		nodes string
		pods  string
	}{
		{"cpu", "node-b,node-a,node-c,node-d", "web-b,web-a,cart-a"},
		{"memory", "node-a,node-b,node-c,node-d", "web-b,web-a,cart-a"},
		{"name", "node-a,node-b,node-c,node-d", "cart-a,web-a,web-b"},
	} {
		reach, _ := overheadEnv(t)
		o, output := overheadOptions(reach)
		o.SortBy = c.by
		o.Output = outputJSON
		if err := o.Validate(); err != nil {
			t.Fatal(err)
		}
		_ = o.Run(context.Background())
		out, _ := output()
		var r OverheadReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var nodes, pods []string
		for _, n := range r.Nodes {
			nodes = append(nodes, n.Node)
		}
		for _, p := range r.Pods {
			pods = append(pods, p.Pod)
		}
		if strings.Join(nodes, ",") != c.nodes || strings.Join(pods, ",") != c.pods {
			t.Errorf("--sort-by %s: nodes %v pods %v", c.by, nodes, pods)
		}
	}
}

func TestOverheadJSON(t *testing.T) {
	reach, _ := overheadEnv(t)
	o, output := overheadOptions(reach)
	o.Output = outputJSON
	_ = o.Validate()
	if err := o.Run(context.Background()); err == nil {
		t.Error("a node did not answer, exit status 0")
	}
	out, _ := output()
	var r OverheadReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(r.Nodes) != 4 || len(r.Pods) != 3 {
		t.Fatalf("%+v", r)
	}
	a := r.Nodes[0]
	if a.Node != "node-a" || a.Sidecars != 2 || a.CPUMillicores != 55 || a.MemoryWorkingSet != 70*mi || a.NodeCPUCores != 4 ||
		a.NodeMemoryBytes != 8<<30 || a.AgentCPUMillicores != 3 || a.Window != "2s" || len(a.Warnings) != 1 || strings.Join(a.Meshes, ",") != "istio" {
		t.Errorf("node-a %+v", a)
	}
	if d := r.Nodes[3]; d.Node != "node-d" || d.Error == "" || d.Sidecars != 0 {
		t.Errorf("node-d %+v", d)
	}
	if tot := r.Total; tot.Node != "TOTAL" || tot.Sidecars != 3 || tot.CPUMillicores != 135 || tot.NodeCPUCores != 8 {
		t.Errorf("total %+v", tot)
	}
	if p := r.Pods[0]; p.Namespace != "demo" || p.Pod != "cart-a" || p.Node != "node-a" || p.Container != "istio-proxy" ||
		p.CPUThrottled != "3ms" || p.MemoryRSS != 35*mi || p.MemoryPSS != 25*mi {
		t.Errorf("pod %+v", p)
	}
	// The field names are the stable interface for scripts.
	var raw map[string]any
	_ = json.Unmarshal([]byte(out), &raw)
	for _, key := range []string{"nodes", "total", "pods"} {
		if _, ok := raw[key]; !ok {
			t.Errorf("json lacks %q", key)
		}
	}
	for _, key := range []string{`"cpuMillicores"`, `"memoryWorkingSetBytes"`, `"nodeCPUCores"`, `"nodeMemoryBytes"`, `"sidecars"`, `"error"`, `"warnings"`, `"nativeSidecar"`} {
		if !strings.Contains(out, key) {
			t.Errorf("json lacks %s", key)
		}
	}
}

func TestOverheadNoMeshedPods(t *testing.T) {
	reach, _ := overheadEnv(t)
	o, output := overheadOptions(reach)
	o.Pods = true
	o.namespace = "empty"
	o.Nodes = []string{"node-c"}
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, errOut := output(); !strings.Contains(errOut, "No meshed pods found in namespace empty.") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestOverheadValidate(t *testing.T) {
	ns := "demo"
	for _, c := range []struct {
		set  func(*OverheadOptions)
		want string
	}{
		{func(o *OverheadOptions) { o.Window = 50 * time.Millisecond }, "invalid --window 50ms: must be between 100ms and 1m0s"},
		{func(o *OverheadOptions) { o.Window = 2 * time.Minute }, "invalid --window 2m0s"},
		{func(o *OverheadOptions) { o.AllNamespaces = true; o.configFlags.Namespace = &ns }, "-A and -n cannot be used together"},
		{func(o *OverheadOptions) { o.SortBy = "bogus" }, `invalid --sort-by "bogus": must be one of cpu, memory, name`},
		{func(o *OverheadOptions) { o.Output = "table" }, `invalid --output "table"`},
		{func(o *OverheadOptions) { o.Selector = "app in (" }, "invalid -l"},
		{func(o *OverheadOptions) { o.Timeout = 0 }, "invalid --timeout"},
		{func(o *OverheadOptions) { o.AgentNamespace = "Bad_NS" }, "invalid --agent-namespace"},
	} {
		o, _ := overheadOptions(agentReach{})
		c.set(o)
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("error %v, want %q", err, c.want)
		}
	}
	o, _ := overheadOptions(agentReach{})
	o.AllNamespaces = true
	if err := o.Validate(); err != nil {
		t.Errorf("-A alone: %v", err)
	}
}

// The flags reach the options through cobra, and the errors through main's exit status.
func TestOverheadFlagsCLI(t *testing.T) {
	for _, args := range [][]string{
		{"overhead", "--window", "90s"},
		{"overhead", "-A", "-n", "demo"},
		{"overhead", "--sort-by", "bogus"},
	} {
		if code, _, errOut := runCLI(t, args...); code != exitFailure || !strings.HasPrefix(errOut, "error: ") {
			t.Errorf("%v: exit %d stderr %q", args, code, errOut)
		}
	}
}
