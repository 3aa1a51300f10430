package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
)

func installedObjects(t *testing.T, ns string) []runtime.Object {
	t.Helper()
	objs, err := manifests.Render(manifests.Options{Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]runtime.Object, len(objs))
	for i, u := range objs {
		out[i] = u
	}
	return out
}

func uninstallOptions(env *fakeEnv) (*UninstallOptions, func() string) {
	streams, _, errOut := testStreams()
	o := NewUninstallOptions(nil, streams)
	o.newCluster = env.newCluster
	o.pollInterval = 10 * time.Millisecond
	return o, errOut.String
}

func TestUninstallDeletesEverythingLabelled(t *testing.T) {
	unrelated := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ServiceAccount",
		"metadata": map[string]any{"name": "app", "namespace": "mesh-system"},
	}}
	// Someone labelled kube-system as ours; it must survive anyway.
	system := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Namespace",
		"metadata": map[string]any{"name": "kube-system", "labels": map[string]any{manifests.LabelManagedBy: "kubectl-mesh"}},
	}}
	env := newFakeEnv(t, nil, append(installedObjects(t, "mesh-system"), unrelated, system)...)
	o, stderr := uninstallOptions(env)
	o.Cascade = cascadeForeground
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}

	var deleted []string
	for _, a := range env.dynamic.Actions() {
		if d, ok := a.(k8stesting.DeleteActionImpl); ok {
			deleted = append(deleted, d.GetResource().Resource+"/"+d.Name)
			if p := d.DeleteOptions.PropagationPolicy; p == nil || *p != "Foreground" {
				t.Errorf("%s deleted with propagation %v", d.Name, p)
			}
		}
	}
	want := "daemonsets/mesh-agent clusterrolebindings/mesh-agent clusterroles/mesh-agent serviceaccounts/mesh-agent namespaces/mesh-system"
	if strings.Join(deleted, " ") != want {
		t.Errorf("deleted %v, want %s (DaemonSet first, namespace last)", deleted, want)
	}
	errOut := stderr()
	if !strings.Contains(errOut, "kube-system") || !strings.Contains(errOut, "system namespace; left in place") || !strings.Contains(errOut, "agent uninstalled") {
		t.Errorf("stderr %q", errOut)
	}

	// A second run finds nothing and still succeeds.
	o2, stderr2 := uninstallOptions(env)
	if err := o2.Run(context.Background()); err != nil {
		t.Fatalf("second uninstall: %v", err)
	}
	if !strings.Contains(stderr2(), "nothing to uninstall") {
		t.Errorf("stderr %q", stderr2())
	}
}

func TestUninstallWaitTimesOutOnStuckObject(t *testing.T) {
	env := newFakeEnv(t, nil, installedObjects(t, "mesh-system")...)
	// A finalizer that never clears: the delete is accepted but the namespace stays.
	env.dynamic.PrependReactor("delete", "namespaces", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, nil
	})
	o, _ := uninstallOptions(env)
	o.Timeout = 200 * time.Millisecond
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "still present: Namespace mesh-system") {
		t.Fatalf("error %v", err)
	}
}

func TestUninstallPreflight(t *testing.T) {
	env := newFakeEnv(t, nil, installedObjects(t, "mesh-system")...)
	env.denied["delete clusterroles"] = true
	o, _ := uninstallOptions(env)
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "delete clusterroles.rbac.authorization.k8s.io (cluster-wide)") {
		t.Fatalf("error %v", err)
	}
	for _, a := range env.dynamic.Actions() {
		if a.GetVerb() == "delete" {
			t.Fatal("deleted something despite the failed preflight")
		}
	}
}
