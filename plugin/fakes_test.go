package main

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"

	authv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	versionpkg "k8s.io/apimachinery/pkg/version"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// testMapper knows the kinds the plugin touches, as discovery on a real cluster would.
func testMapper() meta.RESTMapper {
	m := meta.NewDefaultRESTMapper(nil)
	for _, k := range []struct {
		gvk   schema.GroupVersionKind
		scope meta.RESTScope
	}{
		{schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}, meta.RESTScopeRoot},
		{schema.GroupVersionKind{Version: "v1", Kind: "ServiceAccount"}, meta.RESTScopeNamespace},
		{schema.GroupVersionKind{Version: "v1", Kind: "Pod"}, meta.RESTScopeNamespace},
		{schema.GroupVersionKind{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRole"}, meta.RESTScopeRoot},
		{schema.GroupVersionKind{Group: "rbac.authorization.k8s.io", Version: "v1", Kind: "ClusterRoleBinding"}, meta.RESTScopeRoot},
		{schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DaemonSet"}, meta.RESTScopeNamespace},
	} {
		m.Add(k.gvk, k.scope)
	}
	return m
}

var listKinds = map[schema.GroupVersionResource]string{
	{Version: "v1", Resource: "namespaces"}:                                              "NamespaceList",
	{Version: "v1", Resource: "serviceaccounts"}:                                         "ServiceAccountList",
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}:        "ClusterRoleList",
	{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}: "ClusterRoleBindingList",
	{Group: "apps", Version: "v1", Resource: "daemonsets"}:                               "DaemonSetList",
}

// applyRecorder stands in for the API server's server-side apply, which the fake dynamic
// client does not implement for objects that do not exist yet.
type applyRecorder struct {
	mu      sync.Mutex
	applied []k8stesting.PatchActionImpl
	// failKind makes the apply of that kind fail like a webhook would.
	failKind string
}

func (r *applyRecorder) react(a k8stesting.Action) (bool, runtime.Object, error) {
	pa, ok := a.(k8stesting.PatchActionImpl)
	if !ok || pa.PatchType != types.ApplyPatchType {
		return false, nil, nil
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(pa.Patch); err != nil {
		return true, nil, err
	}
	if u.GetKind() == r.failKind {
		return true, nil, errors.New("admission webhook denied the request")
	}
	r.mu.Lock()
	r.applied = append(r.applied, pa)
	r.mu.Unlock()
	return true, u, nil
}

type fakeEnv struct {
	clientset *fake.Clientset
	dynamic   *dynamicfake.FakeDynamicClient
	applies   *applyRecorder
	// denied holds "verb resource" pairs the SSAR reactor refuses.
	denied  map[string]bool
	cluster *cluster
}

func newFakeEnv(t *testing.T, typed []runtime.Object, dynObjs ...runtime.Object) *fakeEnv {
	t.Helper()
	env := &fakeEnv{
		clientset: fake.NewClientset(typed...),
		dynamic:   dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds, dynObjs...),
		applies:   &applyRecorder{},
		denied:    map[string]bool{},
	}
	env.dynamic.PrependReactor("patch", "*", env.applies.react)
	env.clientset.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		review := a.(k8stesting.CreateAction).GetObject().(*authv1.SelfSubjectAccessReview)
		ra := review.Spec.ResourceAttributes
		review.Status.Allowed = !env.denied[ra.Verb+" "+ra.Resource]
		return true, review, nil
	})
	env.cluster = &cluster{
		host:      "https://198.18.0.1:6443",
		clientset: env.clientset,
		dynamic:   env.dynamic,
		mapper:    testMapper(),
		discovery: serverVersion{},
	}
	return env
}

func (e *fakeEnv) newCluster() (*cluster, error) { return e.cluster, nil }

// serverVersion answers the reachability check; err makes the cluster unreachable.
type serverVersion struct{ err error }

func (s serverVersion) ServerVersion() (*versionpkg.Info, error) {
	if s.err != nil {
		return nil, s.err
	}
	return &versionpkg.Info{GitVersion: "v1.36.3"}, nil
}

func testStreams() (genericiooptions.IOStreams, *bytes.Buffer, *bytes.Buffer) {
	streams, _, out, errOut := genericiooptions.NewTestIOStreams()
	return streams, out, errOut
}

// runCLI runs a full command line as main would, returning the exit code and both streams.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	streams, out, errOut := testStreams()
	code := run(context.Background(), args, streams)
	return code, out.String(), errOut.String()
}

func apierrorsUnauthorized() error { return apierrors.NewUnauthorized("token expired") }

func apierrorsForbidden() error {
	return apierrors.NewForbidden(schema.GroupResource{}, "version", errors.New("no"))
}
