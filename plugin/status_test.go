package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/meshdetect"
)

// istioObjects is an Istio install as istioctl leaves it: istiod, its injection webhook,
// and meshed app pods on two nodes (one of whose sidecars is not ready yet).
func istioObjects() []runtime.Object {
	objs := istiod()
	objs = append(objs,
		&admissionv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector"},
			Webhooks: []admissionv1.MutatingWebhook{{Name: "namespace.sidecar-injector.istio.io",
				ClientConfig: admissionv1.WebhookClientConfig{Service: &admissionv1.ServiceReference{Namespace: "istio-system", Name: "istiod"}}}}},
		meshedPod("demo", "web-a", "node-a", webLabels),
		meshedPod("demo", "web-b", "node-b", webLabels),
		unmeshedPod("demo", "plain", "node-c", map[string]string{"app": "plain"}),
	)
	notReady := meshedPod("shop", "cart-1", "node-a", map[string]string{"app": "cart"})
	notReady.Status.ContainerStatuses[0].Ready = false
	return append(objs, notReady)
}

func meshStatusOptions(env *fakeEnv, output string) (*MeshStatusOptions, func() (string, string)) {
	streams, out, errOut := testStreams()
	o := &MeshStatusOptions{IOStreams: streams, Output: output, reach: agentReach{newCluster: env.newCluster}}
	return o, func() (string, string) { return out.String(), errOut.String() }
}

func TestMeshStatusIstio(t *testing.T) {
	env := newFakeEnv(t, istioObjects())
	env.clientset.Discovery().(*fakediscovery.FakeDiscovery).Resources = []*metav1.APIResourceList{
		{GroupVersion: "networking.istio.io/v1", APIResources: []metav1.APIResource{{Name: "virtualservices", Namespaced: true}}},
	}
	o, output := meshStatusOptions(env, "")
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := o.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	out, errOut := output()
	lines := strings.Split(out, "\n")
	if got := strings.Join(cells(lines[0]), "|"); got != "MESH|NAMESPACE|VERSION|CONTROL PLANE|DATA PLANE" {
		t.Errorf("header %q", got)
	}
	if got := strings.Join(cells(lines[1]), "|"); got != "Istio|istio-system|1.24.0|1/1 pods ready|3 meshed pods, 3 sidecars in 2 namespaces" {
		t.Errorf("mesh row %q\n%s", got, out)
	}
	for _, want := range []string{
		"\nIstio 1.24.0\n",
		"istio-system/istiod-7c9f8b6d5-x2k4j",
		"Data plane:",
		"webhooks istio-sidecar-injector",
		"1 CRDs (networking.istio.io)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	var dp []string
	for _, l := range lines {
		if f := cells(l); len(f) == 5 && (f[0] == "demo" || f[0] == "shop") {
			dp = append(dp, strings.Join(f, "|"))
		}
	}
	if strings.Join(dp, ",") != "demo|2|2|2|1.24.0,shop|1|1|0|1.24.0" {
		t.Errorf("data plane rows %q\n%s", dp, out)
	}
	if errOut != "" {
		t.Errorf("stderr %q", errOut)
	}
}

func TestMeshStatusData(t *testing.T) {
	for _, format := range []string{outputJSON, outputYAML} {
		env := newFakeEnv(t, istioObjects())
		o, output := meshStatusOptions(env, format)
		_ = o.Validate()
		if err := o.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		out, _ := output()
		b := []byte(out)
		if format == outputYAML {
			var err error
			if b, err = yaml.YAMLToJSON(b); err != nil {
				t.Fatal(err)
			}
		}
		var rep meshdetect.Report
		if err := json.Unmarshal(b, &rep); err != nil {
			t.Fatalf("%s: %v\n%s", format, err, out)
		}
		if len(rep.Meshes) != 1 || rep.Meshes[0].Name != "istio" || rep.Meshes[0].Version != "1.24.0" || len(rep.Meshes[0].ControlPlane) != 1 {
			t.Errorf("%s: %+v", format, rep)
		}
	}
	o, _ := meshStatusOptions(nil, "wide")
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), `invalid --output "wide"`) {
		t.Errorf("-o wide: %v", err)
	}
}

func TestMeshStatusNoMesh(t *testing.T) {
	env := newFakeEnv(t, []runtime.Object{node("node-a"), unmeshedPod("demo", "plain", "node-a", map[string]string{"app": "plain"})})
	o, output := meshStatusOptions(env, "")
	err := o.Run(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "no service mesh detected") {
		t.Errorf("error %v", err)
	}
	if strings.Contains(err.Error(), "warnings") {
		t.Errorf("nothing was forbidden: %v", err)
	}
	if out, _ := output(); strings.TrimSpace(out) != "MESH  NAMESPACE  VERSION  CONTROL PLANE  DATA PLANE" {
		t.Errorf("stdout %q", out)
	}
}

// What RBAC hides is named, and the verdict says it may be incomplete.
func TestMeshStatusForbidden(t *testing.T) {
	env := newFakeEnv(t, []runtime.Object{node("node-a")})
	env.clientset.PrependReactor("list", "mutatingwebhookconfigurations", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errorsForbidden("mutatingwebhookconfigurations")
	})
	o, output := meshStatusOptions(env, "")
	err := o.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no service mesh detected") || !strings.Contains(err.Error(), "see the warnings") {
		t.Errorf("error %v", err)
	}
	if _, errOut := output(); !strings.Contains(errOut, "warning: cannot list mutatingwebhookconfigurations") {
		t.Errorf("stderr %q", errOut)
	}
}

func TestMeshStatusUnreachable(t *testing.T) {
	env := newFakeEnv(t, nil)
	env.cluster.discovery = serverVersion{err: errors.New("dial tcp 198.18.0.1:6443: connect: connection refused")}
	o, _ := meshStatusOptions(env, "")
	if err := o.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "cannot reach the cluster at https://198.18.0.1:6443") {
		t.Errorf("error %v", err)
	}
}

func errorsForbidden(resource string) error {
	return apierrors.NewForbidden(schema.GroupResource{Group: "admissionregistration.k8s.io", Resource: resource}, "", errors.New("RBAC: access denied"))
}
