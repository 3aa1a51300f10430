package meshpods

import (
	"context"
	"fmt"
	"slices"
	"strings"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

// IstioNamespace is where DeployIstioControlPlane puts the control plane, as istioctl does.
const IstioNamespace = "istio-system"

// IstioWebhookGuardLabel is a namespace and pod label nothing carries. The injection
// webhook's selectors require it, so that the apiserver never calls the webhook: nothing
// serves it (istiod is a kwok pod), and the meshed pods are shaped by Deploy, not injected.
const IstioWebhookGuardLabel = "meshpods.kubectl-mesh.io/call-injection-webhook"

// istioCRDs are a few of the CRDs an Istio install serves, with their kinds and short names.
var istioCRDs = []struct {
	group, plural, kind, short string
}{
	{"networking.istio.io", "virtualservices", "VirtualService", "vs"},
	{"networking.istio.io", "destinationrules", "DestinationRule", "dr"},
	{"networking.istio.io", "gateways", "Gateway", "gw"},
	{"security.istio.io", "peerauthentications", "PeerAuthentication", "pa"},
	{"security.istio.io", "authorizationpolicies", "AuthorizationPolicy", "ap"},
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// DeployIstioControlPlane creates, in IstioNamespace, what an Istio install of the given
// release (e.g. "1.24.0") shows the API: the istiod Deployment (image
// docker.io/istio/pilot:<version>, Istio's labels) pinned to the kwok node, so that kwok runs
// it as Ready without any image being pulled; its Service; the istio-sidecar-injector
// MutatingWebhookConfiguration, fenced off by IstioWebhookGuardLabel and failurePolicy Ignore;
// and Istio CRDs. It returns once the istiod pod is Ready and the CRDs are served by discovery.
func DeployIstioControlPlane(ctx context.Context, c *simcluster.Cluster, node, version string) error {
	if !slices.Contains(c.KwokNodeNames(), node) {
		return fmt.Errorf("meshpods: %q is not a kwok node of the cluster; istiod must not run on a real kubelet", node)
	}
	if version == "" || strings.ContainsAny(version, ":@/ ") {
		return fmt.Errorf("meshpods: bad Istio version %q", version)
	}
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(c.RESTConfig())
	if err != nil {
		return err
	}
	if err := installIstioCRDs(ctx, dyn, cs.Discovery()); err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: IstioNamespace}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("meshpods: create namespace %s: %w", IstioNamespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: IstioNamespace, Labels: istiodLabels()}}
	if _, err := cs.CoreV1().ServiceAccounts(IstioNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("meshpods: create ServiceAccount istiod: %w", err)
	}
	if _, err := cs.CoreV1().Services(IstioNamespace).Create(ctx, istiodService(), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("meshpods: create Service istiod: %w", err)
	}
	if _, err := cs.AppsV1().Deployments(IstioNamespace).Create(ctx, istiodDeployment(node, version), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("meshpods: create Deployment istiod: %w", err)
	}
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, istioInjectorWebhook(), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("meshpods: create MutatingWebhookConfiguration istio-sidecar-injector: %w", err)
	}
	return poll(ctx, "istiod pod Ready", func(ctx context.Context) error {
		pods, err := cs.CoreV1().Pods(IstioNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
		if err != nil {
			return err
		}
		var states []string
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp == nil && podReady(p) {
				return nil
			}
			states = append(states, describePod(p))
		}
		return fmt.Errorf("not ready: [%s]", strings.Join(states, "; "))
	})
}

func istiodLabels() map[string]string {
	return map[string]string{
		"app":          "istiod",
		"istio":        "pilot",
		"istio.io/rev": "default",
		"install.operator.istio.io/owning-resource": "unknown",
		"operator.istio.io/component":               "Pilot",
		"app.kubernetes.io/name":                    "istiod",
		"app.kubernetes.io/part-of":                 "istio",
	}
}

func istiodService() *corev1.Service {
	port := func(name string, p, target int32) corev1.ServicePort {
		return corev1.ServicePort{Name: name, Port: p, TargetPort: intstr.FromInt32(target), Protocol: corev1.ProtocolTCP}
	}
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: IstioNamespace, Labels: istiodLabels()},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "istiod", "istio": "pilot"},
			Ports: []corev1.ServicePort{
				port("grpc-xds", 15010, 15010), port("https-dns", 15012, 15012),
				port("https-webhook", 443, 15017), port("http-monitoring", 15014, 15014),
			},
		},
	}
}

func istiodDeployment(node, version string) *appsv1.Deployment {
	labels := istiodLabels()
	podLabels := map[string]string{"sidecar.istio.io/inject": "false"}
	for k, v := range labels {
		podLabels[k] = v
	}
	replicas := int32(1)
	cport := func(name string, p int32) corev1.ContainerPort {
		return corev1.ContainerPort{Name: name, ContainerPort: p, Protocol: corev1.ProtocolTCP}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: IstioNamespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"istio": "pilot"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: map[string]string{
					"prometheus.io/port": "15014", "prometheus.io/scrape": "true", "sidecar.istio.io/inject": "false",
				}},
				Spec: corev1.PodSpec{
					// nodeName skips the scheduler and keeps the real kubelet from ever trying to
					// pull Istio's image; kwok plays this pod's kubelet.
					NodeName:           node,
					Tolerations:        []corev1.Toleration{{Key: "kwok.x-k8s.io/node", Operator: corev1.TolerationOpExists}},
					ServiceAccountName: "istiod",
					Containers: []corev1.Container{{
						Name:  "discovery",
						Image: "docker.io/istio/pilot:" + version,
						Args: []string{"discovery", "--monitoringAddr=:15014", "--log_output_level=default:info",
							"--domain", "cluster.local", "--keepaliveMaxServerConnectionAge", "30m"},
						Ports: []corev1.ContainerPort{cport("http", 8080), cport("grpc-xds", 15010), cport("https-webhook", 15017)},
						Env: []corev1.EnvVar{
							{Name: "REVISION", Value: "default"},
							{Name: "PILOT_CERT_PROVIDER", Value: "istiod"},
							{Name: "CLUSTER_ID", Value: "Kubernetes"},
						},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/ready", Port: intstr.FromInt32(8080)}}},
						ImagePullPolicy: corev1.PullIfNotPresent,
					}},
				},
			},
		},
	}
}

// istioInjectorWebhook is the injector's configuration as an Istio install registers it,
// except that each selector also requires IstioWebhookGuardLabel.
func istioInjectorWebhook() *admissionv1.MutatingWebhookConfiguration {
	ignore := admissionv1.Ignore
	none := admissionv1.SideEffectClassNone
	timeout := int32(1)
	path := "/inject"
	port := int32(443)
	guard := metav1.LabelSelectorRequirement{Key: IstioWebhookGuardLabel, Operator: metav1.LabelSelectorOpExists}
	hook := func(name string, ns, obj []metav1.LabelSelectorRequirement) admissionv1.MutatingWebhook {
		return admissionv1.MutatingWebhook{
			Name: name,
			ClientConfig: admissionv1.WebhookClientConfig{Service: &admissionv1.ServiceReference{
				Namespace: IstioNamespace, Name: "istiod", Path: &path, Port: &port}},
			Rules: []admissionv1.RuleWithOperations{{
				Operations: []admissionv1.OperationType{admissionv1.Create},
				Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
			FailurePolicy:           &ignore,
			SideEffects:             &none,
			TimeoutSeconds:          &timeout,
			AdmissionReviewVersions: []string{"v1"},
			NamespaceSelector:       &metav1.LabelSelector{MatchExpressions: append(ns, guard)},
			ObjectSelector:          &metav1.LabelSelector{MatchExpressions: append(obj, guard)},
		}
	}
	in := func(k string, op metav1.LabelSelectorOperator, vs ...string) metav1.LabelSelectorRequirement {
		return metav1.LabelSelectorRequirement{Key: k, Operator: op, Values: vs}
	}
	return &admissionv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector", Labels: map[string]string{
			"app": "sidecar-injector", "istio.io/rev": "default", "operator.istio.io/component": "Pilot"}},
		Webhooks: []admissionv1.MutatingWebhook{
			hook("namespace.sidecar-injector.istio.io",
				[]metav1.LabelSelectorRequirement{in("istio-injection", metav1.LabelSelectorOpIn, "enabled")},
				[]metav1.LabelSelectorRequirement{in("sidecar.istio.io/inject", metav1.LabelSelectorOpNotIn, "false")}),
			hook("object.sidecar-injector.istio.io",
				[]metav1.LabelSelectorRequirement{in("istio-injection", metav1.LabelSelectorOpDoesNotExist), in("istio.io/rev", metav1.LabelSelectorOpDoesNotExist)},
				[]metav1.LabelSelectorRequirement{in("sidecar.istio.io/inject", metav1.LabelSelectorOpIn, "true"), in("istio.io/rev", metav1.LabelSelectorOpDoesNotExist)}),
		},
	}
}

// installIstioCRDs creates the CRDs (keeping ones that exist) and waits until discovery
// lists them, which is where a detector looks. The schemas accept any spec: only the CRDs' presence matters here.
func installIstioCRDs(ctx context.Context, dyn dynamic.Interface, disc discovery.DiscoveryInterface) error {
	for _, crd := range istioCRDs {
		name := crd.plural + "." + crd.group
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1",
			"kind":       "CustomResourceDefinition",
			"metadata": map[string]any{"name": name, "labels": map[string]any{
				"app": "istio-pilot", "chart": "istio", "heritage": "Tiller", "release": "istio"}},
			"spec": map[string]any{
				"group": crd.group,
				"scope": "Namespaced",
				"names": map[string]any{
					"plural": crd.plural, "singular": strings.ToLower(crd.kind), "kind": crd.kind,
					"listKind": crd.kind + "List", "shortNames": []any{crd.short}, "categories": []any{"istio-io"},
				},
				"versions": []any{map[string]any{
					"name": "v1", "served": true, "storage": true,
					"schema": map[string]any{"openAPIV3Schema": map[string]any{
						"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
				}},
			},
		}}
		if _, err := dyn.Resource(crdResource).Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("meshpods: create CRD %s: %w", name, err)
		}
	}
	return poll(ctx, "Istio CRDs established and served", func(ctx context.Context) error {
		for _, crd := range istioCRDs {
			name := crd.plural + "." + crd.group
			got, err := dyn.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !established(got) {
				return fmt.Errorf("CRD %s not established", name)
			}
			rl, err := disc.ServerResourcesForGroupVersion(crd.group + "/v1")
			if err != nil {
				return fmt.Errorf("CRD %s not in discovery: %w", name, err)
			}
			if !slices.ContainsFunc(rl.APIResources, func(r metav1.APIResource) bool { return r.Name == crd.plural }) {
				return fmt.Errorf("CRD %s not in discovery yet", name)
			}
		}
		return nil
	})
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}
