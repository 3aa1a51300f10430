package agents

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const ns = "mesh-system"

func node(name string, lbls map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
}

var agentLabels = map[string]string{"app.kubernetes.io/name": "mesh-agent", "app.kubernetes.io/managed-by": "kubectl-mesh"}

// agentPod is a running, ready agent pod on nodeName; mutate adjusts it per case.
func agentPod(name, nodeName string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: agentLabels, CreationTimestamp: metav1.NewTime(time.Unix(1000, 0))},
		Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "agent"}}},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning,
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue},
			},
			ContainerStatuses: []corev1.ContainerStatus{{
				Name: "agent", Ready: true,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(time.Now().Add(-time.Minute))}},
			}},
		},
	}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func notReady(p *corev1.Pod) {
	p.Status.Conditions[1].Status = corev1.ConditionFalse
	p.Status.ContainerStatuses[0].Ready = false
}

func waiting(reason, msg string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		notReady(p)
		p.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
	}
}

func crashLoop(p *corev1.Pod) {
	waiting("CrashLoopBackOff", "back-off 5m0s restarting failed container=agent")(p)
	p.Status.ContainerStatuses[0].RestartCount = 7
	p.Status.ContainerStatuses[0].LastTerminationState = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: 1, Reason: "Error", Message: "loading BPF objects: operation not permitted\nmore detail",
	}}
}

func unscheduled(nodeName string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.NodeName = ""
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{nodeName}}},
			}}},
		}}
		p.Status = corev1.PodStatus{
			Phase: corev1.PodPending,
			Conditions: []corev1.PodCondition{{
				Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable",
				Message: "0/3 nodes are available: 1 Insufficient memory.",
			}},
		}
	}
}

func TestDiscover(t *testing.T) {
	cs := fake.NewClientset(
		node("node-c", map[string]string{"pool": "b"}),
		node("node-a", map[string]string{"pool": "a"}),
		node("node-b", map[string]string{"pool": "a"}),
		node("node-d", nil),
		node("node-e", nil),
		node("node-f", nil),
		agentPod("agent-a", "node-a"),
		agentPod("agent-b", "node-b", crashLoop),
		agentPod("agent-c", "node-c", waiting("ImagePullBackOff", `Back-off pulling image "ghcr.io/kubectl-mesh/mesh-agent:v9"`)),
		agentPod("agent-e", "", unscheduled("node-e")),
		// Rolling update on node-f: the old pod is terminating, the new one is ready.
		agentPod("agent-f-old", "node-f", func(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }),
		agentPod("agent-f-new", "node-f", func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(time.Unix(2000, 0)) }),
		// Ignored: a node that is gone, another namespace, and a pod that is not an agent.
		agentPod("agent-gone", "node-deleted"),
		agentPod("agent-elsewhere", "node-d", func(p *corev1.Pod) { p.Namespace = "other" }),
		agentPod("not-agent", "node-d", func(p *corev1.Pod) { p.Labels = map[string]string{"app": "x"} }),
	)
	targets, err := Discover(context.Background(), cs, ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ node, pod, problem string }{
		{"node-a", "agent-a", ""},
		{"node-b", "agent-b", "crash loop: container agent restarted 7 times, last exit 1 (Error): loading BPF objects: operation not permitted"},
		{"node-c", "agent-c", `image pull failed: ImagePullBackOff: Back-off pulling image "ghcr.io/kubectl-mesh/mesh-agent:v9"`},
		{"node-d", "", "no agent pod"},
		{"node-e", "agent-e", "not scheduled: Unschedulable: 0/3 nodes are available: 1 Insufficient memory."},
		{"node-f", "agent-f-new", ""},
	}
	if len(targets) != len(want) {
		t.Fatalf("got %d targets, want %d: %+v", len(targets), len(want), targets)
	}
	for i, w := range want {
		got := targets[i]
		pod := ""
		if got.Pod != nil {
			pod = got.Pod.Name
		}
		if got.Node != w.node || pod != w.pod || got.Problem != w.problem {
			t.Errorf("target %d = {%s %s %q}, want {%s %s %q}", i, got.Node, pod, got.Problem, w.node, w.pod, w.problem)
		}
	}

	sel, err := labels.Parse("pool=a")
	if err != nil {
		t.Fatal(err)
	}
	targets, err = Discover(context.Background(), cs, ns, sel)
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 2 || targets[0].Node != "node-a" || targets[1].Node != "node-b" {
		t.Fatalf("selector pool=a: %+v", targets)
	}
	targets, err = Discover(context.Background(), cs, ns, labels.Everything())
	if err != nil || len(targets) != 6 {
		t.Fatalf("labels.Everything: %d targets, %v", len(targets), err)
	}
}

// The fake clientset ignores Limit and Continue, so a reactor plays an API server that
// pages: it checks the limit and hands out the pages in order.
func TestDiscoverPaginates(t *testing.T) {
	cs := fake.NewClientset()
	pages := func(kind string, total int, make func(i int) runtime.Object, list func([]runtime.Object, string) runtime.Object) k8stesting.ReactionFunc {
		return func(action k8stesting.Action) (bool, runtime.Object, error) {
			opts := action.(k8stesting.ListActionImpl).ListOptions
			if opts.Limit != listPageSize {
				return true, nil, fmt.Errorf("%s list limit %d, want %d", kind, opts.Limit, listPageSize)
			}
			start := 0
			if opts.Continue != "" {
				if _, err := fmt.Sscanf(opts.Continue, kind+"-%d", &start); err != nil {
					return true, nil, err
				}
			}
			end := min(start+int(opts.Limit), total)
			var items []runtime.Object
			for i := start; i < end; i++ {
				items = append(items, make(i))
			}
			next := ""
			if end < total {
				next = fmt.Sprintf("%s-%d", kind, end)
			}
			return true, list(items, next), nil
		}
	}
	const n = 1234
	cs.PrependReactor("list", "nodes", pages("nodes", n,
		func(i int) runtime.Object { return node(fmt.Sprintf("node-%04d", i), nil) },
		func(items []runtime.Object, next string) runtime.Object {
			l := &corev1.NodeList{ListMeta: metav1.ListMeta{Continue: next}}
			for _, o := range items {
				l.Items = append(l.Items, *o.(*corev1.Node))
			}
			return l
		}))
	cs.PrependReactor("list", "pods", pages("pods", n,
		func(i int) runtime.Object { return agentPod(fmt.Sprintf("agent-%04d", i), fmt.Sprintf("node-%04d", i)) },
		func(items []runtime.Object, next string) runtime.Object {
			l := &corev1.PodList{ListMeta: metav1.ListMeta{Continue: next}}
			for _, o := range items {
				l.Items = append(l.Items, *o.(*corev1.Pod))
			}
			return l
		}))
	targets, err := Discover(context.Background(), cs, ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != n {
		t.Fatalf("%d targets, want %d", len(targets), n)
	}
	for i, tg := range targets {
		if tg.Problem != "" || tg.Pod == nil || tg.Pod.Spec.NodeName != tg.Node || tg.Node != fmt.Sprintf("node-%04d", i) {
			t.Fatalf("target %d: %+v", i, tg)
		}
	}
	var lists int
	for _, a := range cs.Actions() {
		if a.GetVerb() == "list" {
			lists++
		}
	}
	if lists != 6 { // 3 pages each of nodes and pods
		t.Fatalf("%d list calls, want 6", lists)
	}
}

func TestDiscoverListError(t *testing.T) {
	cs := fake.NewClientset(node("node-a", nil))
	cs.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, fmt.Errorf(`pods is forbidden: User "u" cannot list resource "pods"`)
	})
	_, err := Discover(context.Background(), cs, ns, nil)
	if err == nil || !strings.Contains(err.Error(), "listing agent pods in namespace mesh-system") || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("err %v", err)
	}
}

func TestPodProblem(t *testing.T) {
	now := metav1.Now()
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		want string // exact, or a prefix when it ends in "*"
	}{
		{"nil", nil, "no agent pod"},
		{"ready", agentPod("p", "n"), ""},
		{"terminating", agentPod("p", "n", func(p *corev1.Pod) { p.DeletionTimestamp = &now }), "terminating"},
		{"err image pull", agentPod("p", "n", waiting("ErrImagePull", "rpc error: code = NotFound\nsecond line")), "image pull failed: ErrImagePull: rpc error: code = NotFound"},
		{"image pull backoff", agentPod("p", "n", waiting("ImagePullBackOff", "")), "image pull failed: ImagePullBackOff"},
		{"invalid image", agentPod("p", "n", waiting("InvalidImageName", "bad ref")), "image pull failed: InvalidImageName: bad ref"},
		{"crash loop", agentPod("p", "n", crashLoop), "crash loop: container agent restarted 7 times, last exit 1 (Error): loading BPF objects: operation not permitted"},
		{"crash loop without last state", agentPod("p", "n", waiting("CrashLoopBackOff", "")), "crash loop: container agent restarted 0 times"},
		{"config error", agentPod("p", "n", waiting("CreateContainerConfigError", `secret "x" not found`)), `cannot start: CreateContainerConfigError: secret "x" not found`},
		{"unschedulable", agentPod("p", "", unscheduled("n")), "not scheduled: Unschedulable: 0/3 nodes are available: 1 Insufficient memory."},
		{"pending, not yet scheduled", agentPod("p", "", func(p *corev1.Pod) { p.Status = corev1.PodStatus{Phase: corev1.PodPending} }), "pending: waiting to be scheduled"},
		{"pending, creating", agentPod("p", "n", func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodPending
			waiting("ContainerCreating", "")(p)
		}), "pending: ContainerCreating"},
		{"pending, bound", agentPod("p", "n", func(p *corev1.Pod) { p.Status = corev1.PodStatus{Phase: corev1.PodPending} }), "pending"},
		{"running, probe failing", agentPod("p", "n", notReady), "not ready: container agent running 1m0s, readiness probe not passing"},
		{"running, container exited", agentPod("p", "n", func(p *corev1.Pod) {
			notReady(p)
			p.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 2, Reason: "Error"}}
		}), "not ready: container agent exited 2 (Error)"},
		{"no ready condition", agentPod("p", "n", func(p *corev1.Pod) { p.Status.Conditions = nil }), "not ready"},
		{"failed", agentPod("p", "n", func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodFailed
			p.Status.Reason = "Evicted"
			p.Status.Message = "The node was low on resource: memory."
		}), "failed (Evicted): The node was low on resource: memory."},
		{"succeeded", agentPod("p", "n", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), "exited (pod succeeded)"},
		{"init container crash", agentPod("p", "n", func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodPending
			p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "init", RestartCount: 3,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}
		}), "crash loop: container init restarted 3 times"},
		{"long message truncated", agentPod("p", "n", waiting("ErrImagePull", strings.Repeat("x", 500))), "image pull failed: ErrImagePull: " + strings.Repeat("x", 159) + "…"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := PodProblem(tc.pod); got != tc.want {
				t.Fatalf("PodProblem = %q, want %q", got, tc.want)
			}
		})
	}
}

func BenchmarkDiscover1000(b *testing.B) {
	var objs []runtime.Object
	for i := range 1000 {
		n := fmt.Sprintf("node-%04d", i)
		objs = append(objs, node(n, map[string]string{"pool": fmt.Sprint(i % 4)}))
		p := agentPod("agent-"+n, n)
		if i%10 == 0 {
			crashLoop(p)
		}
		objs = append(objs, p)
	}
	cs := fake.NewClientset(objs...)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		targets, err := Discover(ctx, cs, ns, nil)
		if err != nil || len(targets) != 1000 {
			b.Fatalf("%d targets, %v", len(targets), err)
		}
	}
}
