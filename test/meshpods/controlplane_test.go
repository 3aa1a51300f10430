package meshpods

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/meshdetect"
	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

// TestIstioControlPlane: on a real apiserver, the detector finds no mesh in a fresh cluster,
// and after DeployIstioControlPlane finds Istio with its release, its istiod pod on the kwok
// node, its webhook and CRDs; the webhook never applies to a pod, so pod creation is
// unaffected; and an injected pod shows in the data plane.
func TestIstioControlPlane(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	began := time.Now()
	c := simcluster.New(t, simcluster.Options{KwokNodes: 1, NoKwokAgents: true})
	t.Logf("cluster up after %s", time.Since(began).Round(time.Millisecond))
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	node := c.KwokNodeNames()[0]

	r, err := meshdetect.Detect(ctx, cs, meshdetect.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Meshes) != 0 || len(r.Warnings) != 0 {
		t.Fatalf("fresh cluster: meshes %+v, warnings %v", r.Meshes, r.Warnings)
	}

	if err := DeployIstioControlPlane(ctx, c, "real-node", "1.24.0"); err == nil {
		t.Error("DeployIstioControlPlane accepted a node that is not a kwok node")
	}
	deployed := time.Now()
	if err := DeployIstioControlPlane(ctx, c, node, "1.24.0"); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane ready after %s", time.Since(deployed).Round(time.Millisecond))

	r, err = meshdetect.Detect(ctx, cs, meshdetect.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Meshes) != 1 || len(r.Warnings) != 0 {
		t.Fatalf("meshes %+v, warnings %v", r.Meshes, r.Warnings)
	}
	m, err := r.Find(discovery.MeshIstio)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != "1.24.0" || m.Namespace != IstioNamespace || m.DisplayName != "Istio" {
		t.Errorf("istio %q in %q (%s)", m.Version, m.Namespace, m.DisplayName)
	}
	if len(m.ControlPlane) != 1 {
		t.Fatalf("control-plane pods %+v", m.ControlPlane)
	}
	if p := m.ControlPlane[0]; p.Component != "istiod" || p.Version != "1.24.0" || p.Node != node || p.Ready() != "1/1" || p.Phase != "Running" {
		t.Errorf("istiod pod %+v", p)
	}
	if len(m.Workloads) != 1 || m.Workloads[0].Name != "istiod" || m.Workloads[0].Ready != 1 {
		t.Errorf("workloads %+v", m.Workloads)
	}
	if !slices.Equal(m.Evidence.Webhooks, []string{"istio-sidecar-injector"}) {
		t.Errorf("webhooks %v", m.Evidence.Webhooks)
	}
	for _, want := range []string{"virtualservices.networking.istio.io", "destinationrules.networking.istio.io", "peerauthentications.security.istio.io"} {
		if !slices.Contains(m.Evidence.Resources, want) {
			t.Errorf("resources %v lack %s", m.Evidence.Resources, want)
		}
	}
	if len(m.Notes) != 0 || len(m.DataPlane) != 0 {
		t.Errorf("notes %v, data plane %+v", m.Notes, m.DataPlane)
	}

	// The webhook's selectors match no namespace and no pod, even ones labelled for
	// injection, so the apiserver never calls it.
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "inject-me", Labels: map[string]string{"istio-injection": "enabled"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "istio-sidecar-injector", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range wc.Webhooks {
		if h.FailurePolicy == nil || *h.FailurePolicy != "Ignore" {
			t.Errorf("%s: failurePolicy %v", h.Name, h.FailurePolicy)
		}
		sel, err := metav1.LabelSelectorAsSelector(h.NamespaceSelector)
		if err != nil {
			t.Fatal(err)
		}
		for _, ns := range nss.Items {
			if sel.Matches(labels.Set(ns.Labels)) {
				t.Errorf("%s applies to namespace %s", h.Name, ns.Name)
			}
		}
	}
	// An Istio-injected pod created through the API: kwok runs it, and the detector counts its
	// sidecar in the data plane.
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "inject-me",
			Labels:      map[string]string{"sidecar.istio.io/inject": "true", "security.istio.io/tlsMode": "istio"},
			Annotations: map[string]string{"sidecar.istio.io/status": `{"containers":["istio-proxy"],"volumes":["istio-envoy"]}`}},
		Spec: corev1.PodSpec{NodeName: node,
			Containers: []corev1.Container{
				{Name: SidecarContainer, Image: "docker.io/istio/proxyv2:1.24.0"},
				{Name: AppContainer, Image: "registry.invalid/app:1"},
			},
			Tolerations: []corev1.Toleration{{Key: "kwok.x-k8s.io/node", Operator: corev1.TolerationOpExists}}},
	}
	created, err := cs.CoreV1().Pods("inject-me").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("pod creation in an injection-enabled namespace: %v", err)
	}
	if len(created.Spec.Containers) != 2 || len(created.Spec.InitContainers) != 0 {
		t.Errorf("pod was mutated: %+v", created.Spec)
	}
	if err := poll(ctx, "injected pod Ready", func(ctx context.Context) error {
		got, err := cs.CoreV1().Pods("inject-me").Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !podReady(got) {
			return errors.New(describePod(got))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r, err = meshdetect.Detect(ctx, cs, meshdetect.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m, err = r.Find(discovery.MeshIstio); err != nil {
		t.Fatal(err)
	}
	want := []meshdetect.NamespaceData{{Namespace: "inject-me", MeshedPods: 1, Sidecars: 1, ReadySidecars: 1, ProxyVersions: []string{"1.24.0"}}}
	if !reflect.DeepEqual(m.DataPlane, want) || m.Evidence.Sidecars != 1 {
		t.Errorf("data plane %+v, want %+v", m.DataPlane, want)
	}
	t.Logf("total %s", time.Since(began).Round(time.Millisecond))
}
