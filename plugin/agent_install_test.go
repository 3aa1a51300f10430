package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
)

func installOptions(t *testing.T, env *fakeEnv) (*InstallOptions, func() (string, string)) {
	t.Helper()
	streams, out, errOut := testStreams()
	o := NewInstallOptions(nil, streams)
	o.newCluster = env.newCluster
	o.namespace = manifests.DefaultNamespace
	o.Image = "ghcr.io/kubectl-mesh/mesh-agent:dev"
	return o, func() (string, string) { return out.String(), errOut.String() }
}

func TestInstallAppliesEveryObjectInOrder(t *testing.T) {
	env := newFakeEnv(t, nil)
	o, output := installOptions(t, env)
	o.Wait = false
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range env.applies.applied {
		got = append(got, a.GetResource().Resource+" "+a.GetNamespace()+"/"+a.Name)
		if a.PatchOptions.FieldManager != manifests.FieldManager {
			t.Errorf("%s: field manager %q", a.Name, a.PatchOptions.FieldManager)
		}
		if a.PatchOptions.Force == nil || !*a.PatchOptions.Force {
			t.Errorf("%s: apply without force", a.Name)
		}
		if len(a.PatchOptions.DryRun) != 0 {
			t.Errorf("%s: dry run %v", a.Name, a.PatchOptions.DryRun)
		}
	}
	want := []string{
		"namespaces /mesh-system",
		"serviceaccounts mesh-system/mesh-agent",
		"clusterroles /mesh-agent",
		"clusterrolebindings /mesh-agent",
		"daemonsets mesh-system/mesh-agent",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("applied:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	out, errOut := output()
	if out != "" {
		t.Errorf("stdout %q; progress belongs on stderr", out)
	}
	if !strings.Contains(errOut, "DaemonSet mesh-system/mesh-agent applied") || !strings.Contains(errOut, "agent status") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestInstallReportsPartialApply(t *testing.T) {
	env := newFakeEnv(t, nil)
	env.applies.failKind = "ClusterRoleBinding"
	o, _ := installOptions(t, env)
	o.Wait = false
	_ = o.Validate()
	err := o.Run(context.Background())
	var ae *applyError
	if !errors.As(err, &ae) {
		t.Fatalf("error %v, want an applyError", err)
	}
	msg := err.Error()
	for _, want := range []string{
		"applying ClusterRoleBinding mesh-agent: admission webhook denied the request",
		"applied: Namespace mesh-system, ServiceAccount mesh-system/mesh-agent, ClusterRole mesh-agent",
		"not applied: ClusterRoleBinding mesh-agent, DaemonSet mesh-system/mesh-agent",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
}

func TestInstallPreflightNamesMissingVerb(t *testing.T) {
	env := newFakeEnv(t, nil)
	env.denied["create clusterroles"] = true
	env.denied["patch daemonsets"] = true
	o, _ := installOptions(t, env)
	o.Wait = false
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil {
		t.Fatal("install succeeded without permissions")
	}
	for _, want := range []string{
		"create clusterroles.rbac.authorization.k8s.io (cluster-wide)",
		"patch daemonsets.apps (in namespace mesh-system)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "serviceaccounts") {
		t.Errorf("error %q names a permission the user has", err)
	}
	if len(env.applies.applied) != 0 {
		t.Errorf("%d objects applied despite the failed preflight", len(env.applies.applied))
	}
}

// RBAC forbids granting permissions one does not hold, so the agent's ClusterRole rules are
// part of the preflight.
func TestInstallPreflightChecksGrantedPermissions(t *testing.T) {
	env := newFakeEnv(t, nil)
	env.denied["watch nodes"] = true
	o, _ := installOptions(t, env)
	o.Wait = false
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "watch nodes (cluster-wide)") {
		t.Fatalf("error %v", err)
	}
}

func TestInstallUnreachableCluster(t *testing.T) {
	env := newFakeEnv(t, nil)
	env.cluster.discovery = serverVersion{err: errors.New("dial tcp 198.18.0.1:6443: connect: no route to host")}
	o, _ := installOptions(t, env)
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || err.Error() != "cannot reach the cluster at https://198.18.0.1:6443: dial tcp 198.18.0.1:6443: connect: no route to host; check `kubectl cluster-info` and --context" {
		t.Fatalf("error %v", err)
	}
}

func TestInstallRefusesSecondNamespace(t *testing.T) {
	other := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: manifests.AgentName, Namespace: "elsewhere",
		Labels: map[string]string{manifests.LabelManagedBy: "kubectl-mesh"}}}
	env := newFakeEnv(t, []runtime.Object{other})
	o, _ := installOptions(t, env)
	o.Wait = false
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "already installed in namespace elsewhere") {
		t.Fatalf("error %v", err)
	}
}

// Applying our Namespace object to a namespace someone else made would label it as ours,
// and uninstall would delete it.
func TestInstallLeavesForeignNamespaceAlone(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}
	env := newFakeEnv(t, []runtime.Object{ns})
	o, output := installOptions(t, env)
	o.namespace = "team-a"
	o.Wait = false
	_ = o.Validate()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, a := range env.applies.applied {
		if a.GetResource().Resource == "namespaces" {
			t.Error("applied the Namespace object to an existing foreign namespace")
		}
	}
	if _, errOut := output(); !strings.Contains(errOut, "namespace team-a exists and is not managed by kubectl-mesh") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestInstallServerDryRun(t *testing.T) {
	env := newFakeEnv(t, nil)
	o, output := installOptions(t, env)
	o.DryRun = dryRunServer
	o.Output = outputYAML
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, a := range env.applies.applied {
		if len(a.PatchOptions.DryRun) != 1 || a.PatchOptions.DryRun[0] != metav1.DryRunAll {
			t.Errorf("%s applied without dryRun=All", a.Name)
		}
	}
	if out, _ := output(); strings.Count(out, "\n---\n") != 4 {
		t.Errorf("stdout:\n%s", out)
	}
}

func agentDaemonSet(gen, observed int64, desired, ready, updated int32) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: manifests.AgentName, Namespace: manifests.DefaultNamespace, Generation: gen,
			Labels: map[string]string{manifests.LabelManagedBy: "kubectl-mesh"}},
		Status: appsv1.DaemonSetStatus{ObservedGeneration: observed, DesiredNumberScheduled: desired,
			NumberReady: ready, UpdatedNumberScheduled: updated, NumberAvailable: ready},
	}
}

func TestInstallWaitsAndReportsProgress(t *testing.T) {
	env := newFakeEnv(t, []runtime.Object{agentDaemonSet(1, 1, 3, 0, 3)})
	o, output := installOptions(t, env)
	o.Timeout = 20 * time.Second
	_ = o.Validate()

	// The DaemonSet controller's part: pods become ready one by one.
	go func() {
		ds := env.clientset.AppsV1().DaemonSets(manifests.DefaultNamespace)
		for ready := int32(1); ready <= 3; ready++ {
			time.Sleep(50 * time.Millisecond)
			_, _ = ds.UpdateStatus(context.Background(), agentDaemonSet(1, 1, 3, ready, 3), metav1.UpdateOptions{})
		}
	}()
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, errOut := output()
	var progress []string
	for _, l := range strings.Split(errOut, "\n") {
		if strings.HasSuffix(l, "agents ready") {
			progress = append(progress, l)
		}
	}
	if strings.Join(progress, ";") != "0/3 agents ready;1/3 agents ready;2/3 agents ready;3/3 agents ready" {
		t.Errorf("progress %q (each count once, in order)", progress)
	}
	if !strings.Contains(errOut, "agent ready on 3 nodes") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestRolloutState(t *testing.T) {
	cases := []struct {
		ds    *appsv1.DaemonSet
		ready int32
		done  bool
	}{
		{agentDaemonSet(2, 1, 3, 3, 3), 3, false}, // the controller has not seen the new spec
		{agentDaemonSet(2, 2, 3, 3, 1), 1, false}, // old pods ready, new ones rolling
		{agentDaemonSet(2, 2, 3, 2, 3), 2, false},
		{agentDaemonSet(2, 2, 3, 3, 3), 3, true},
		{agentDaemonSet(1, 1, 0, 0, 0), 0, false}, // nothing scheduled is not success
	}
	for i, tc := range cases {
		ready, _, done := rolloutState(tc.ds)
		if ready != tc.ready || done != tc.done {
			t.Errorf("case %d: ready %d done %v, want %d %v", i, ready, done, tc.ready, tc.done)
		}
	}
}

func TestInstallWaitFailsWhenNoNodeMatches(t *testing.T) {
	env := newFakeEnv(t, []runtime.Object{agentDaemonSet(1, 1, 0, 0, 0)})
	o, _ := installOptions(t, env)
	o.NodeSelector = "pool=nope"
	o.Timeout = 10 * time.Second
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no node matches") || !strings.Contains(err.Error(), "pool=nope") {
		t.Fatalf("error %v", err)
	}
}

func TestWaitForDaemonSetDeleted(t *testing.T) {
	env := newFakeEnv(t, []runtime.Object{agentDaemonSet(1, 1, 2, 0, 2)})
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = env.clientset.AppsV1().DaemonSets(manifests.DefaultNamespace).Delete(context.Background(), manifests.AgentName, metav1.DeleteOptions{})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := waitForDaemonSet(ctx, env.clientset, manifests.DefaultNamespace, manifests.AgentName, func(*appsv1.DaemonSet) (bool, error) { return false, nil })
	if err == nil || !strings.Contains(err.Error(), "was deleted while waiting") {
		t.Fatalf("error %v", err)
	}
	if wait.Interrupted(err) {
		t.Error("deletion reported as a timeout")
	}
}

func TestInstallWaitWithoutController(t *testing.T) {
	env := newFakeEnv(t, []runtime.Object{agentDaemonSet(2, 1, 3, 3, 3)})
	o, output := installOptions(t, env)
	o.Timeout = 300 * time.Millisecond
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "never processed DaemonSet mesh-system/mesh-agent") {
		t.Fatalf("error %v", err)
	}
	if _, errOut := output(); strings.Contains(errOut, "agents ready") {
		t.Errorf("progress from a stale status: %q", errOut)
	}
}

func TestInstallTimeoutExplainsEachNode(t *testing.T) {
	env := newFakeEnv(t, []runtime.Object{
		agentDaemonSet(1, 1, 2, 1, 2),
		node("node-a"), node("node-b"),
		agentPod("mesh-agent-aaaaa", "node-a", true, ""),
		agentPod("mesh-agent-bbbbb", "node-b", false, "ImagePullBackOff"),
	})
	o, output := installOptions(t, env)
	o.Timeout = 300 * time.Millisecond
	_ = o.Validate()
	err := o.Run(context.Background())
	if err == nil || err.Error() != "timed out after 300ms with 1/2 agents ready; see `kubectl -n mesh-system describe pod mesh-agent-bbbbb`" {
		t.Fatalf("error %v", err)
	}
	out, errOut := output()
	if out != "" {
		t.Errorf("stdout %q", out)
	}
	want := "NODE    POD               PROBLEM\nnode-b  mesh-agent-bbbbb  image pull failed: ImagePullBackOff: manifest unknown\n"
	if !strings.Contains(errOut, want) {
		t.Errorf("stderr:\n%s\nwant the table:\n%s", errOut, want)
	}
	if strings.Contains(errOut, "node-a  ") {
		t.Errorf("healthy node listed as a problem:\n%s", errOut)
	}
}
