package meshdetect

import (
	"strings"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The fixtures are shaped after the projects' own manifests (Helm charts and istioctl
// output): the labels, names and images a real install has.

func ctr(name, image string) corev1.Container { return corev1.Container{Name: name, Image: image} }

func lbl(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func template(labels map[string]string, cs ...corev1.Container) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: cs}}
}

func deployment(ns, name string, replicas, ready int32, labels map[string]string, cs ...corev1.Container) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       appsv1.DeploymentSpec{Replicas: &replicas, Template: template(labels, cs...)},
		Status:     appsv1.DeploymentStatus{ReadyReplicas: ready},
	}
}

func daemonSet(ns, name string, desired, ready int32, labels map[string]string, cs ...corev1.Container) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       appsv1.DaemonSetSpec{Template: template(labels, cs...)},
		Status:     appsv1.DaemonSetStatus{DesiredNumberScheduled: desired, NumberReady: ready},
	}
}

func statefulSet(ns, name string, replicas, ready int32, labels map[string]string, cs ...corev1.Container) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       appsv1.StatefulSetSpec{Replicas: &replicas, Template: template(labels, cs...)},
		Status:     appsv1.StatefulSetStatus{ReadyReplicas: ready},
	}
}

// podOpt adjusts a pod fixture.
type podOpt func(*corev1.Pod)

func annotated(kv ...string) podOpt {
	return func(p *corev1.Pod) {
		if p.Annotations == nil {
			p.Annotations = map[string]string{}
		}
		for k, v := range lbl(kv...) {
			p.Annotations[k] = v
		}
	}
}

func notReady(names ...string) podOpt {
	return func(p *corev1.Pod) {
		for i := range p.Status.ContainerStatuses {
			for _, n := range names {
				if p.Status.ContainerStatuses[i].Name == n {
					p.Status.ContainerStatuses[i].Ready = false
				}
			}
		}
	}
}

func phase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }

// ownedBy makes the pod a replica of a Deployment (through a ReplicaSet named the way the
// Deployment controller names it) or of a DaemonSet or StatefulSet.
func ownedBy(kind, name string) podOpt {
	return func(p *corev1.Pod) {
		yes := true
		owner := name
		if kind == "Deployment" {
			kind, owner = "ReplicaSet", name+"-7c9f8b6d5"
			p.Labels["pod-template-hash"] = "7c9f8b6d5"
		}
		p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: owner, Controller: &yes}}
	}
}

func pod(ns, name, node string, labels map[string]string, cs []corev1.Container, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{}},
		Spec:       corev1.PodSpec{NodeName: node, Containers: cs},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for k, v := range labels {
		p.Labels[k] = v
	}
	for _, c := range cs {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{Name: c.Name, Image: c.Image, Ready: true})
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func webhook(name, svcNS, svcName string, hooks ...string) *admissionv1.MutatingWebhookConfiguration {
	wc := &admissionv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, h := range hooks {
		wc.Webhooks = append(wc.Webhooks, admissionv1.MutatingWebhook{Name: h,
			ClientConfig: admissionv1.WebhookClientConfig{Service: &admissionv1.ServiceReference{Namespace: svcNS, Name: svcName}}})
	}
	return wc
}

// api is a served group version and its resources, as discovery shows a CRD's.
func api(groupVersion string, resources ...string) *metav1.APIResourceList {
	l := &metav1.APIResourceList{GroupVersion: groupVersion}
	for _, r := range resources {
		l.APIResources = append(l.APIResources, metav1.APIResource{Name: r, Namespaced: true})
		l.APIResources = append(l.APIResources, metav1.APIResource{Name: r + "/status", Namespaced: true})
	}
	return l
}

// cluster is a cluster's objects and served APIs.
type cluster struct {
	objects []runtime.Object
	apis    []*metav1.APIResourceList
}

// baseCluster is what every cluster has whatever mesh it runs: core APIs, CoreDNS and an
// unmeshed app.
func baseCluster() cluster {
	return cluster{
		objects: []runtime.Object{
			deployment("kube-system", "coredns", 2, 2, lbl("k8s-app", "kube-dns"), ctr("coredns", "registry.k8s.io/coredns/coredns:v1.11.3")),
			pod("kube-system", "coredns-7c9f8b6d5-abcde", "node-a", lbl("k8s-app", "kube-dns"),
				[]corev1.Container{ctr("coredns", "registry.k8s.io/coredns/coredns:v1.11.3")}, ownedBy("Deployment", "coredns")),
			pod("default", "plain-app", "node-a", lbl("app", "plain"), []corev1.Container{ctr("app", "nginx:1.27")}),
			// A container called envoy without OSM's marks is not an OSM sidecar.
			pod("default", "gateway", "node-b", lbl("app", "gw"), []corev1.Container{ctr("envoy", "envoyproxy/envoy:v1.31.0")}),
		},
		apis: []*metav1.APIResourceList{
			api("v1", "pods", "services"),
			api("apps/v1", "deployments", "daemonsets"),
			api("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations"),
		},
	}
}

func (c cluster) with(objs ...runtime.Object) cluster {
	c.objects = append(append([]runtime.Object{}, c.objects...), objs...)
	return c
}

func (c cluster) serving(apis ...*metav1.APIResourceList) cluster {
	c.apis = append(append([]*metav1.APIResourceList{}, c.apis...), apis...)
	return c
}

// istioStatus is the sidecar.istio.io/status annotation the injector writes.
const istioStatus = `{"initContainers":["istio-init"],"containers":["istio-proxy"],"volumes":["istio-envoy"],"revision":"default"}`

func istioCluster(version string) cluster {
	istiod := lbl("app", "istiod", "istio", "pilot", "istio.io/rev", "default", "install.operator.istio.io/owning-resource", "unknown")
	pilot := ctr("discovery", "docker.io/istio/pilot:"+version+"-distroless")
	gw := lbl("app", "istio-ingressgateway", "istio", "ingressgateway")
	proxy := ctr("istio-proxy", "docker.io/istio/proxyv2:"+version)
	return baseCluster().with(
		deployment("istio-system", "istiod", 1, 1, istiod, pilot),
		pod("istio-system", "istiod-7c9f8b6d5-x2k4j", "node-a", istiod, []corev1.Container{pilot}, ownedBy("Deployment", "istiod")),
		deployment("istio-system", "istio-ingressgateway", 1, 1, gw, proxy),
		pod("istio-system", "istio-ingressgateway-7c9f8b6d5-q9w8e", "node-b", gw, []corev1.Container{proxy}, ownedBy("Deployment", "istio-ingressgateway")),
		webhook("istio-sidecar-injector", "istio-system", "istiod",
			"rev.namespace.sidecar-injector.istio.io", "rev.object.sidecar-injector.istio.io",
			"namespace.sidecar-injector.istio.io", "object.sidecar-injector.istio.io"),
		pod("shop", "cart-1", "node-a", lbl("app", "cart", "security.istio.io/tlsMode", "istio"),
			[]corev1.Container{proxy, ctr("cart", "shop/cart:1.0")}, annotated("sidecar.istio.io/status", istioStatus)),
		pod("shop", "cart-2", "node-b", lbl("app", "cart", "security.istio.io/tlsMode", "istio"),
			[]corev1.Container{proxy, ctr("cart", "shop/cart:1.0")}, annotated("sidecar.istio.io/status", istioStatus), notReady("istio-proxy")),
		// Ambient: no sidecar, traffic redirected to ztunnel.
		pod("payments", "ledger-0", "node-a", lbl("app", "ledger"), []corev1.Container{ctr("ledger", "pay/ledger:2")},
			annotated("ambient.istio.io/redirection", "enabled")),
		// A finished Job pod that once had a sidecar is not part of the data plane.
		pod("shop", "migrate-1", "node-a", lbl("job-name", "migrate"), []corev1.Container{proxy, ctr("migrate", "shop/migrate:1")},
			annotated("sidecar.istio.io/status", istioStatus), phase(corev1.PodSucceeded)),
	).serving(
		api("networking.istio.io/v1", "virtualservices", "destinationrules", "gateways"),
		api("security.istio.io/v1", "peerauthentications", "authorizationpolicies"),
	)
}

// names returns a string per element, for comparing lists in tests.
func names[T any](items []T, f func(T) string) string {
	var out []string
	for _, it := range items {
		out = append(out, f(it))
	}
	return strings.Join(out, ",")
}
