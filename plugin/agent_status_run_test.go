package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/test/bufconn"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/version"
)

// infoServer is an in-process agent that answers Info like the real one.
type infoServer struct {
	agentapi.UnimplementedAgentServer
	node, version string
}

func (s *infoServer) Info(context.Context, *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	return &agentapi.InfoResponse{
		NodeName: s.node, AgentVersion: s.version, KernelRelease: "6.8.0", Btf: true,
		Capabilities: []string{"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"},
		CgroupLayout: agentapi.CgroupLayout_CGROUP_LAYOUT_V2, EbpfTier: agentapi.EbpfTier_EBPF_TIER_TP_BTF, HostPid: true,
	}, nil
}

// startAgent serves srv over an in-memory listener and returns a dialer to it.
func startAgent(t *testing.T, srv agentapi.AgentServer) func(context.Context) (net.Conn, error) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	agentapi.RegisterAgentServer(s, srv)
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.DialContext
}

func node(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
}

func agentPod(name, node string, ready bool, waiting string) *corev1.Pod {
	p := readyPod(name, ready)
	p.Labels = map[string]string{manifests.LabelName: manifests.AgentName}
	p.Spec.NodeName = node
	if waiting != "" {
		p.Status.Phase = corev1.PodPending
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "agent", State: corev1.ContainerState{
			Waiting: &corev1.ContainerStateWaiting{Reason: waiting, Message: "manifest unknown"}}}}
	} else {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "agent", Ready: ready, State: corev1.ContainerState{
			Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}}
	}
	return p
}

// linuxDaemonSet is the installed agent, which (like the manifests) skips non-Linux nodes.
func linuxDaemonSet() *appsv1.DaemonSet {
	ds := agentDaemonSet(1, 1, 3, 2, 3)
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"kubernetes.io/os": "linux"}
	return ds
}

// statusEnv is a three-node cluster: a healthy agent, one whose image cannot be pulled,
// and one that runs but does not answer.
func statusEnv(t *testing.T) (*fakeEnv, agentReach) {
	t.Helper()
	windows := node("node-w")
	windows.Labels["kubernetes.io/os"] = "windows"
	objs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: manifests.DefaultNamespace}},
		linuxDaemonSet(),
		node("node-a"), node("node-b"), node("node-c"), windows,
		agentPod("mesh-agent-aaaaa", "node-a", true, ""),
		agentPod("mesh-agent-bbbbb", "node-b", false, "ImagePullBackOff"),
		agentPod("mesh-agent-ccccc", "node-c", true, ""),
	}
	env := newFakeEnv(t, objs)
	dialA := startAgent(t, &infoServer{node: "node-a", version: version.Version})
	reach := agentReach{
		newCluster: env.newCluster,
		newDial: func(*cluster) (agents.DialFunc, error) {
			return func(ctx context.Context, pod *corev1.Pod) (net.Conn, error) {
				if pod.Name == "mesh-agent-aaaaa" {
					return dialA(ctx)
				}
				if pod.Name == "mesh-agent-bbbbb" {
					t.Error("dialled a pod that is not running")
				}
				return nil, errors.New("error upgrading connection: pods \"mesh-agent-ccccc\" not found")
			}, nil
		},
	}
	return env, reach
}

func statusOptions(reach agentReach, output string) (*StatusOptions, func() (string, string)) {
	streams, out, errOut := testStreams()
	o := NewStatusOptions(nil, streams)
	o.reach = reach
	o.namespace = manifests.DefaultNamespace
	o.Output = output
	o.Timeout = 5 * time.Second
	return o, func() (string, string) { return out.String(), errOut.String() }
}

func TestStatusRunTable(t *testing.T) {
	_, reach := statusEnv(t)
	o, output := statusOptions(reach, "")
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	err := o.Run(context.Background())
	if err == nil || err.Error() != "2 of 3 agents unhealthy; see `kubectl -n mesh-system describe pod mesh-agent-bbbbb`" {
		t.Errorf("error %v", err)
	}
	out, _ := output()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("table:\n%s", out)
	}
	if !strings.Contains(lines[1], "node-a") || !strings.Contains(lines[1], version.Version) || !strings.Contains(lines[1], "tp_btf") ||
		!strings.HasSuffix(lines[1], "BPF,PERFMON,SYS_PTRACE,DAC_READ_SEARCH") {
		t.Errorf("healthy row %q", lines[1])
	}
	if !strings.Contains(lines[2], "node-b") || !strings.Contains(lines[2], "image pull failed: ImagePullBackOff") {
		t.Errorf("image-pull row %q", lines[2])
	}
	if !strings.Contains(lines[3], "node-c") || !strings.Contains(lines[3], "not found") {
		t.Errorf("unreachable row %q", lines[3])
	}
}

func TestStatusRunJSON(t *testing.T) {
	_, reach := statusEnv(t)
	o, output := statusOptions(reach, outputJSON)
	_ = o.Validate()
	if err := o.Run(context.Background()); err == nil {
		t.Error("unhealthy agents, exit status 0")
	}
	out, _ := output()
	var r StatusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if r.Namespace != "mesh-system" || r.ClientVersion != version.Version || len(r.Nodes) != 3 {
		t.Fatalf("%+v", r)
	}
	if n := r.Nodes[0]; !n.Healthy || n.Version != version.Version || !n.BTF || n.Cgroups != "v2" {
		t.Errorf("node-a %+v", n)
	}
	if n := r.Nodes[1]; n.Healthy || n.Pod != "mesh-agent-bbbbb" || !strings.HasPrefix(n.Error, "image pull failed") {
		t.Errorf("node-b %+v", n)
	}
	// The field names are the stable interface for scripts.
	for _, key := range []string{`"node"`, `"pod"`, `"ready"`, `"healthy"`, `"version"`, `"kernel"`, `"btf"`, `"ebpfTier"`, `"cgroups"`, `"capabilities"`, `"error"`} {
		if !strings.Contains(out, key) {
			t.Errorf("json lacks %s", key)
		}
	}
}

func TestStatusNodeSelector(t *testing.T) {
	env, reach := statusEnv(t)
	a, _ := env.clientset.CoreV1().Nodes().Get(context.Background(), "node-a", metav1.GetOptions{})
	a.Labels["pool"] = "perf"
	_, _ = env.clientset.CoreV1().Nodes().Update(context.Background(), a, metav1.UpdateOptions{})
	o, output := statusOptions(reach, "")
	o.NodeSelector = "pool=perf"
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatalf("only the healthy node is selected, got %v", err)
	}
	if out, _ := output(); strings.Count(out, "\n") != 2 {
		t.Errorf("table:\n%s", out)
	}
}

func TestStatusWithoutDaemonSet(t *testing.T) {
	env := newFakeEnv(t, []runtime.Object{&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: manifests.DefaultNamespace}}, node("node-a")})
	o, _ := statusOptions(agentReach{newCluster: env.newCluster}, "")
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "agent not installed: DaemonSet mesh-system/mesh-agent not found") {
		t.Errorf("error %v", err)
	}
}

func TestStatusNotInstalled(t *testing.T) {
	env := newFakeEnv(t, []runtime.Object{node("node-a")})
	o, output := statusOptions(agentReach{newCluster: env.newCluster}, "")
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || err.Error() != "agent not installed: namespace mesh-system not found; run `kubectl mesh agent install`" {
		t.Errorf("error %v", err)
	}
	if out, _ := output(); out != "" {
		t.Errorf("stdout %q", out)
	}
}

func TestVersionRun(t *testing.T) {
	_, reach := statusEnv(t)
	streams, out, errOut := testStreams()
	o := &VersionOptions{IOStreams: streams, Timeout: 5 * time.Second, namespace: manifests.DefaultNamespace, reach: reach}
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "2 of 3 agents did not report a version") {
		t.Errorf("error %v", err)
	}
	if !strings.HasPrefix(out.String(), "Client Version: "+version.Version+"\nAgent Versions:\n") || !strings.Contains(out.String(), "node-a  "+version.Version) {
		t.Errorf("stdout:\n%s", out)
	}
	if errOut.Len() != 0 {
		t.Errorf("no skew expected, stderr %q", errOut)
	}
}

func TestVersionSkew(t *testing.T) {
	objs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: manifests.DefaultNamespace}},
		linuxDaemonSet(), node("node-a"), agentPod("mesh-agent-aaaaa", "node-a", true, ""),
	}
	env := newFakeEnv(t, objs)
	dial := startAgent(t, &infoServer{node: "node-a", version: "v0.0.1-old"})
	reach := agentReach{newCluster: env.newCluster, newDial: func(*cluster) (agents.DialFunc, error) {
		return func(ctx context.Context, _ *corev1.Pod) (net.Conn, error) { return dial(ctx) }, nil
	}}
	streams, _, errOut := testStreams()
	o := &VersionOptions{IOStreams: streams, Timeout: 5 * time.Second, namespace: manifests.DefaultNamespace, reach: reach}
	if err := o.Run(context.Background()); err != nil {
		t.Fatalf("skew alone is not a failure: %v", err)
	}
	if !strings.Contains(errOut.String(), "warning: 1 of 1 agents run a version other than the plugin's "+version.Version+" (node-a runs v0.0.1-old)") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestStatusOldAgent(t *testing.T) {
	objs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: manifests.DefaultNamespace}},
		linuxDaemonSet(), node("node-a"), agentPod("mesh-agent-aaaaa", "node-a", true, ""),
	}
	env := newFakeEnv(t, objs)
	// An agent built before Info existed.
	dial := startAgent(t, agentapi.UnimplementedAgentServer{})
	reach := agentReach{newCluster: env.newCluster, newDial: func(*cluster) (agents.DialFunc, error) {
		return func(ctx context.Context, _ *corev1.Pod) (net.Conn, error) { return dial(ctx) }, nil
	}}
	o, output := statusOptions(reach, "")
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || err.Error() != "1 of 1 agents unhealthy; run `kubectl mesh agent install` to upgrade them" {
		t.Errorf("error %v", err)
	}
	if out, _ := output(); !strings.Contains(out, "version skew); run `kubectl mesh agent install` to upgrade it") {
		t.Errorf("table:\n%s", out)
	}
}
