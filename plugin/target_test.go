package main

import (
	"context"
	"errors"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// istioStatusAnnotation is what Istio's injector writes on every pod it meshes.
const istioStatusAnnotation = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"revision":"default"}`

// meshedPod is an Istio-injected app pod: the istio-proxy sidecar next to an app container
// that declares ports (8080 named http when none are given).
func meshedPod(ns, name, node string, lbls map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	if len(ports) == 0 {
		ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: lbls,
			Annotations: map[string]string{"sidecar.istio.io/status": istioStatusAnnotation}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{
			{Name: "istio-proxy", Image: "docker.io/istio/proxyv2:1.24.0", Ports: []corev1.ContainerPort{{Name: "http-envoy-prom", ContainerPort: 15090}}},
			{Name: "app", Image: "demo/web:1", Ports: ports},
		}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.10"},
	}
	for _, c := range p.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: c.Name, Image: c.Image, Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}})
	}
	return p
}

func unmeshedPod(ns, name, node string, lbls map[string]string) *corev1.Pod {
	p := meshedPod(ns, name, node, lbls)
	p.Annotations = nil
	p.Spec.Containers = p.Spec.Containers[1:]
	p.Status.ContainerStatuses = p.Status.ContainerStatuses[1:]
	return p
}

func deployment(ns, name string, lbls map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       appsv1.DeploymentSpec{Selector: &metav1.LabelSelector{MatchLabels: lbls}},
	}
}

func service(ns, name string, sel map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.ServiceSpec{Selector: sel, Ports: ports},
	}
}

func TestParseTarget(t *testing.T) {
	ok := []struct {
		arg, sel string
		want     tgt
	}{
		{"deploy/web", "", tgt{Kind: "deploy", Name: "web"}},
		{"deployment/web", "", tgt{Kind: "deploy", Name: "web"}},
		{"deployments/web", "", tgt{Kind: "deploy", Name: "web"}},
		{"deployment.apps/web", "", tgt{Kind: "deploy", Name: "web"}},
		{"Deploy/web", "", tgt{Kind: "deploy", Name: "web"}},
		{"svc/web", "", tgt{Kind: "svc", Name: "web"}},
		{"service/web", "", tgt{Kind: "svc", Name: "web"}},
		{"services/web", "", tgt{Kind: "svc", Name: "web"}},
		{"pod/web-0", "", tgt{Kind: "pod", Name: "web-0"}},
		{"po/web-0", "", tgt{Kind: "pod", Name: "web-0"}},
		{"pods/web-0", "", tgt{Kind: "pod", Name: "web-0"}},
		{"", "app=web,tier in (front)", tgt{Kind: "selector", Selector: "app=web,tier in (front)"}},
	}
	for _, c := range ok {
		got, err := parseTarget(c.arg, c.sel)
		if err != nil {
			t.Errorf("parseTarget(%q, %q): %v", c.arg, c.sel, err)
			continue
		}
		if got.Kind != c.want.Kind || got.Name != c.want.Name || got.Selector != c.want.Selector {
			t.Errorf("parseTarget(%q, %q) = %+v, want %+v", c.arg, c.sel, got, &c.want)
		}
	}
	bad := []struct {
		arg, sel, want string
	}{
		{"deploy/web", "app=web", "either TARGET or -l SELECTOR, not both"},
		{"", "", "no target: give deploy/NAME"},
		{"web", "", `invalid target "web"`},
		{"statefulset/web", "", `invalid target "statefulset/web"`},
		{"deploy/", "", `invalid target "deploy/"`},
		{"/web", "", `invalid target "/web"`},
		{"deploy/web/x", "", `invalid target "deploy/web/x"`},
		{"", "app=(x", "invalid -l"},
		{"", "app in (a", "invalid -l"},
	}
	for _, c := range bad {
		_, err := parseTarget(c.arg, c.sel)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseTarget(%q, %q) error %v, want it to contain %q", c.arg, c.sel, err, c.want)
		}
	}
}

// tgt is a target in test tables (a perfrun.Target holds a lock and must not be copied).
type tgt struct{ Kind, Name, Selector string }

func (x tgt) target() *perfrun.Target {
	return &perfrun.Target{Kind: x.Kind, Name: x.Name, Selector: x.Selector}
}

var webLabels = map[string]string{"app": "web"}

func resolve(t *testing.T, cs *fake.Clientset, target *perfrun.Target, port string) ([]targetPod, error) {
	t.Helper()
	if target.Namespace == "" {
		target.Namespace = "demo"
	}
	return resolveTarget(context.Background(), cs, target, port)
}

func podNames(pods []targetPod) string {
	var s []string
	for _, p := range pods {
		s = append(s, p.pod.Name+"@"+p.node)
	}
	return strings.Join(s, ",")
}

func TestResolveTargetKinds(t *testing.T) {
	objs := []runtime.Object{
		deployment("demo", "web", webLabels),
		service("demo", "web", webLabels, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}),
		meshedPod("demo", "web-b", "node-b", webLabels),
		meshedPod("demo", "web-a", "node-a", webLabels),
		// Another namespace's pod with the same labels is not the target's.
		meshedPod("other", "web-x", "node-a", webLabels),
	}
	cs := fake.NewClientset(objs...)
	for _, c := range []struct {
		target tgt
		pods   string
		sel    string
	}{
		{tgt{Kind: "deploy", Name: "web"}, "web-a@node-a,web-b@node-b", "app=web"},
		{tgt{Kind: "svc", Name: "web"}, "web-a@node-a,web-b@node-b", "app=web"},
		{tgt{Kind: "pod", Name: "web-b"}, "web-b@node-b", ""},
		{tgt{Kind: "selector", Selector: "app=web"}, "web-a@node-a,web-b@node-b", "app=web"},
	} {
		target := c.target.target()
		pods, err := resolve(t, cs, target, "")
		if err != nil {
			t.Errorf("%s: %v", describeTarget(c.target.target()), err)
			continue
		}
		if got := podNames(pods); got != c.pods {
			t.Errorf("%s: pods %s, want %s", describeTarget(c.target.target()), got, c.pods)
		}
		if target.Port != 8080 || target.Selector != c.sel {
			t.Errorf("%s: port %d selector %q", describeTarget(c.target.target()), target.Port, target.Selector)
		}
	}
}

func TestResolveTargetNothing(t *testing.T) {
	cs := fake.NewClientset(
		deployment("demo", "empty", map[string]string{"app": "none"}),
		service("demo", "headless", nil),
		meshedPod("demo", "web-a", "node-a", webLabels),
	)
	for _, c := range []struct {
		target tgt
		want   string
	}{
		{tgt{Kind: "deploy", Name: "missing"}, `deployment "missing" not found in namespace demo`},
		{tgt{Kind: "svc", Name: "missing"}, `service "missing" not found in namespace demo`},
		{tgt{Kind: "pod", Name: "missing"}, `pod "missing" not found in namespace demo`},
		{tgt{Kind: "deploy", Name: "empty"}, "deploy/empty matches no pods in namespace demo"},
		{tgt{Kind: "selector", Selector: "app=nothing"}, `selector "app=nothing" matches no pods in namespace demo`},
		{tgt{Kind: "svc", Name: "headless"}, "service demo/headless has no selector"},
	} {
		target := c.target.target()
		_, err := resolve(t, cs, target, "")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", describeTarget(c.target.target()), err, c.want)
		}
	}
}

func TestResolveTargetUnmeasurablePods(t *testing.T) {
	pending := meshedPod("demo", "web-pending", "", webLabels)
	pending.Status.Phase = corev1.PodPending
	terminating := meshedPod("demo", "web-terminating", "node-a", webLabels)
	now := metav1.Now()
	terminating.DeletionTimestamp = &now
	terminating.Finalizers = []string{"test"}
	cs := fake.NewClientset(
		deployment("demo", "web", webLabels),
		pending, terminating,
		unmeshedPod("demo", "web-plain", "node-a", webLabels),
	)
	_, err := resolve(t, cs, &perfrun.Target{Kind: "deploy", Name: "web"}, "")
	if err == nil {
		t.Fatal("no measurable pod, no error")
	}
	msg := err.Error()
	var partial *partialTarget
	if errors.As(err, &partial) {
		t.Errorf("nothing measurable is not a partial target: %v", err)
	}
	for _, want := range []string{
		"no pod of deploy/web can be measured",
		"pod web-pending is pending, not running",
		"pod web-plain",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	// The user must learn why each pod is left out in plain words.
	if !strings.Contains(msg, "pod web-plain is not meshed") {
		t.Errorf("an unmeshed pod should be called not meshed:\n%s", msg)
	}
	if !strings.Contains(msg, "pod web-terminating is terminating") {
		t.Errorf("a terminating pod should be called terminating:\n%s", msg)
	}
}

func TestResolveTargetPartial(t *testing.T) {
	pending := meshedPod("demo", "web-c", "node-c", webLabels)
	pending.Status.Phase = corev1.PodPending
	cs := fake.NewClientset(
		deployment("demo", "web", webLabels),
		meshedPod("demo", "web-a", "node-a", webLabels),
		unmeshedPod("demo", "web-b", "node-b", webLabels),
		pending,
	)
	pods, err := resolve(t, cs, &perfrun.Target{Kind: "deploy", Name: "web"}, "")
	var partial *partialTarget
	if !errors.As(err, &partial) {
		t.Fatalf("error %v, want a partialTarget", err)
	}
	if got := podNames(pods); got != "web-a@node-a" {
		t.Errorf("pods %s", got)
	}
	if len(partial.problems) != 2 || !strings.HasPrefix(partial.problems[0], "pod web-b") || !strings.HasPrefix(partial.problems[1], "pod web-c is pending") {
		t.Errorf("problems %q", partial.problems)
	}
}

func TestResolveTargetPort(t *testing.T) {
	twoPorts := []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "admin", ContainerPort: 9090}}
	objs := []runtime.Object{
		deployment("demo", "web", webLabels),
		meshedPod("demo", "web-a", "node-a", webLabels, twoPorts...),
		meshedPod("demo", "web-b", "node-b", webLabels, twoPorts...),
		service("demo", "by-number", webLabels, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(9090)}),
		service("demo", "by-name", webLabels,
			corev1.ServicePort{Name: "web", Port: 80, TargetPort: intstr.FromString("http")},
			corev1.ServicePort{Name: "metrics", Port: 81, TargetPort: intstr.FromString("admin")}),
		service("demo", "same-port", webLabels, corev1.ServicePort{Port: 8080}),
		deployment("demo", "bare", map[string]string{"app": "bare"}),
		func() *corev1.Pod {
			p := meshedPod("demo", "bare-a", "node-a", map[string]string{"app": "bare"})
			p.Spec.Containers[1].Ports = nil
			return p
		}(),
	}
	cs := fake.NewClientset(objs...)
	for _, c := range []struct {
		target tgt
		port   string
		want   uint32
		err    string
	}{
		{tgt{Kind: "deploy", Name: "web"}, "9090", 9090, ""},
		{tgt{Kind: "deploy", Name: "web"}, "admin", 9090, ""},
		{tgt{Kind: "deploy", Name: "web"}, "http", 8080, ""},
		{tgt{Kind: "deploy", Name: "web"}, "", 0, "give --port: the app containers declare 2 ports (8080/http, 9090/admin)"},
		{tgt{Kind: "deploy", Name: "web"}, "7070", 0, "port 7070 is not exposed by the pod's app containers (ports: 8080/http, 9090/admin)"},
		{tgt{Kind: "deploy", Name: "web"}, "grpc", 0, `no app container port is named "grpc" (ports: 8080/http, 9090/admin)`},
		// The sidecar's own ports are not the app's.
		{tgt{Kind: "deploy", Name: "web"}, "15090", 0, "port 15090 is not exposed"},
		{tgt{Kind: "svc", Name: "by-number"}, "", 9090, ""},
		{tgt{Kind: "svc", Name: "by-number"}, "80", 9090, ""},
		{tgt{Kind: "svc", Name: "by-number"}, "http", 9090, ""},
		{tgt{Kind: "svc", Name: "by-name"}, "web", 8080, ""},
		{tgt{Kind: "svc", Name: "by-name"}, "81", 9090, ""},
		{tgt{Kind: "svc", Name: "by-name"}, "", 0, "give --port: service by-name has 2 ports"},
		{tgt{Kind: "svc", Name: "by-name"}, "8080", 0, `service by-name has no port "8080"`},
		// A service port without targetPort targets its own number.
		{tgt{Kind: "svc", Name: "same-port"}, "", 8080, ""},
		// Pods need not declare ports.
		{tgt{Kind: "deploy", Name: "bare"}, "8080", 8080, ""},
		{tgt{Kind: "deploy", Name: "bare"}, "", 0, "the app containers declare 0 ports (none)"},
	} {
		target := c.target.target()
		pods, err := resolve(t, cs, target, c.port)
		name := describeTarget(c.target.target()) + " --port " + c.port
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want %q", name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if target.Port != c.want || len(pods) == 0 {
			t.Errorf("%s: port %d (%d pods), want %d", name, target.Port, len(pods), c.want)
		}
	}
}

// A port name that maps to different numbers on different pods leaves the odd ones out.
func TestResolveTargetPortDiffers(t *testing.T) {
	cs := fake.NewClientset(
		deployment("demo", "web", webLabels),
		meshedPod("demo", "web-a", "node-a", webLabels, corev1.ContainerPort{Name: "http", ContainerPort: 8080}),
		meshedPod("demo", "web-b", "node-b", webLabels, corev1.ContainerPort{Name: "http", ContainerPort: 8081}),
	)
	target := &perfrun.Target{Kind: "deploy", Name: "web"}
	pods, err := resolve(t, cs, target, "http")
	var partial *partialTarget
	if !errors.As(err, &partial) || podNames(pods) != "web-a@node-a" || target.Port != 8080 {
		t.Fatalf("pods %s port %d error %v", podNames(pods), target.Port, err)
	}
	if !strings.Contains(partial.Error(), `pod web-b: port "http" is 8081 there, not 8080`) {
		t.Errorf("problem %q", partial.Error())
	}
}
