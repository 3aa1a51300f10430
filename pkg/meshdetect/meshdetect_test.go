package meshdetect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	smp "github.com/layer5io/service-mesh-performance/spec"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
)

func clientset(c cluster) *fake.Clientset {
	cs := fake.NewClientset(c.objects...)
	cs.Discovery().(*fakediscovery.FakeDiscovery).Resources = c.apis
	return cs
}

func detect(t *testing.T, cs *fake.Clientset) *Report {
	t.Helper()
	r, err := Detect(context.Background(), cs, Options{})
	if err != nil {
		t.Fatalf("Detect: %v", err)
	}
	return r
}

// want is what a test expects of one detected mesh; empty fields are not checked.
type want struct {
	mesh       discovery.Mesh
	namespace  string
	version    string
	components string // control-plane pods' components, sorted as in the report
	workloads  string // "Kind/name component version desired/ready"
	webhooks   string
	groups     string
	resources  string
	dataPlane  string // "ns meshed/sidecars/ready [versions]"
	smpType    smp.ServiceMesh_Type
}

func checkMesh(t *testing.T, r *Report, w want) {
	t.Helper()
	if len(r.Meshes) != 1 {
		t.Fatalf("meshes %s, want only %s; warnings %v", names(r.Meshes, func(m Mesh) string { return string(m.Name) }), w.mesh, r.Warnings)
	}
	m, err := r.Find(w.mesh)
	if err != nil {
		t.Fatal(err)
	}
	if m.DisplayName != DisplayName(w.mesh) || m.DisplayName == string(w.mesh) {
		t.Errorf("display name %q", m.DisplayName)
	}
	eq := func(what, got, want string) {
		t.Helper()
		if want != "" && got != want {
			t.Errorf("%s:\n got %s\nwant %s", what, got, want)
		}
	}
	eq("namespace", m.Namespace, w.namespace)
	eq("version", m.Version, w.version)
	eq("control-plane components", names(m.ControlPlane, func(p ControlPlanePod) string { return p.Component }), w.components)
	eq("workloads", names(m.Workloads, func(x Workload) string {
		return fmt.Sprintf("%s/%s %s %s %d/%d", x.Kind, x.Name, x.Component, x.Version, x.Desired, x.Ready)
	}), w.workloads)
	eq("webhooks", strings.Join(m.Evidence.Webhooks, ","), w.webhooks)
	eq("API groups", strings.Join(m.Evidence.APIGroups, ","), w.groups)
	eq("resources", strings.Join(m.Evidence.Resources, ","), w.resources)
	eq("data plane", names(m.DataPlane, func(d NamespaceData) string {
		return fmt.Sprintf("%s %d/%d/%d %v", d.Namespace, d.MeshedPods, d.Sidecars, d.ReadySidecars, d.ProxyVersions)
	}), w.dataPlane)
	if got := SMPType(m.Name); got != w.smpType || got == smp.ServiceMesh_INVALID_MESH {
		t.Errorf("SMPType(%s) = %v, want %v", m.Name, got, w.smpType)
	}
	for _, p := range m.ControlPlane {
		if p.Version == "" || p.Node == "" || p.Containers == 0 || p.Phase != "Running" {
			t.Errorf("control-plane pod incomplete: %+v", p)
		}
	}
	if len(m.Notes) != 0 {
		t.Errorf("notes on a complete install: %v", m.Notes)
	}
	if len(r.Warnings) != 0 {
		t.Errorf("warnings: %v", r.Warnings)
	}
}

func TestDetectMeshes(t *testing.T) {
	linkerdCP := func(component string, extra ...corev1.Container) []corev1.Container {
		return append([]corev1.Container{ctr("linkerd-proxy", "cr.l5d.io/linkerd/proxy:stable-2.14.10")}, extra...)
	}
	linkerdLabels := func(c string) map[string]string {
		return lbl("linkerd.io/control-plane-component", c, "linkerd.io/control-plane-ns", "linkerd", "linkerd.io/proxy-deployment", "linkerd-"+c)
	}
	kumaCP := lbl("app", "kuma-control-plane", "app.kubernetes.io/name", "kuma", "app.kubernetes.io/instance", "kuma")
	consulServer := lbl("app", "consul", "chart", "consul-helm", "component", "server", "release", "consul")
	consulInjector := lbl("app", "consul", "chart", "consul-helm", "component", "connect-injector", "release", "consul")
	osmController := lbl("app", "osm-controller", "app.kubernetes.io/name", "openservicemesh.io", "meshName", "osm")
	osmInjector := lbl("app", "osm-injector", "app.kubernetes.io/name", "openservicemesh.io", "meshName", "osm")
	nsmAPI := lbl("app.kubernetes.io/name", "nginx-mesh-api", "app.kubernetes.io/part-of", "nginx-service-mesh")
	nsmMetrics := lbl("app.kubernetes.io/name", "nginx-mesh-metrics", "app.kubernetes.io/part-of", "nginx-service-mesh")
	ciliumAgent := lbl("k8s-app", "cilium", "app.kubernetes.io/name", "cilium-agent", "app.kubernetes.io/part-of", "cilium")
	ciliumOp := lbl("io.cilium/app", "operator", "name", "cilium-operator", "app.kubernetes.io/part-of", "cilium")
	ciliumImg := "quay.io/cilium/cilium:v1.16.3@sha256:62d2a09bbef840a46099ac4c69421c90f84f28d018d479749049011329aa7f28"
	opImg := "quay.io/cilium/operator-generic:v1.16.3@sha256:6e2925ef47a1c76e183c48f95d4ce0d34a1e5e848252f910476c3e11ce1ec94b"
	traefikCtl := lbl("app", "maesh", "component", "controller", "release", "traefik-mesh")
	traefikProxy := lbl("app", "maesh", "component", "maesh-mesh", "release", "traefik-mesh")

	tests := []struct {
		name    string
		cluster cluster
		want    want
	}{
		{
			name:    "istio",
			cluster: istioCluster("1.24.0"),
			want: want{
				mesh: discovery.MeshIstio, namespace: "istio-system", version: "1.24.0",
				components: "ingressgateway,istiod",
				workloads:  "Deployment/istio-ingressgateway ingressgateway 1.24.0 1/1,Deployment/istiod istiod 1.24.0 1/1",
				webhooks:   "istio-sidecar-injector",
				groups:     "networking.istio.io,security.istio.io",
				resources:  "authorizationpolicies.security.istio.io,destinationrules.networking.istio.io,gateways.networking.istio.io,peerauthentications.security.istio.io,virtualservices.networking.istio.io",
				dataPlane:  "payments 1/0/0 [],shop 2/2/1 [1.24.0]",
				smpType:    smp.ServiceMesh_ISTIO,
			},
		},
		{
			name: "linkerd",
			cluster: baseCluster().with(
				deployment("linkerd", "linkerd-destination", 1, 1, linkerdLabels("destination"),
					linkerdCP("destination", ctr("destination", "cr.l5d.io/linkerd/controller:stable-2.14.10"),
						ctr("policy", "cr.l5d.io/linkerd/policy-controller:stable-2.14.10"))...),
				pod("linkerd", "linkerd-destination-7c9f8b6d5-abcde", "node-a", linkerdLabels("destination"),
					linkerdCP("destination", ctr("destination", "cr.l5d.io/linkerd/controller:stable-2.14.10"),
						ctr("policy", "cr.l5d.io/linkerd/policy-controller:stable-2.14.10")), ownedBy("Deployment", "linkerd-destination"),
					annotated("linkerd.io/proxy-version", "stable-2.14.10")),
				pod("linkerd", "linkerd-identity-7c9f8b6d5-fghij", "node-b", linkerdLabels("identity"),
					linkerdCP("identity", ctr("identity", "cr.l5d.io/linkerd/controller:stable-2.14.10")), ownedBy("Deployment", "linkerd-identity")),
				pod("linkerd", "linkerd-proxy-injector-7c9f8b6d5-klmno", "node-b", linkerdLabels("proxy-injector"),
					linkerdCP("proxy-injector", ctr("proxy-injector", "cr.l5d.io/linkerd/controller:stable-2.14.10")), ownedBy("Deployment", "linkerd-proxy-injector")),
				webhook("linkerd-proxy-injector-webhook-config", "linkerd", "linkerd-proxy-injector", "linkerd-proxy-injector.linkerd.io"),
				pod("emojivoto", "web-1", "node-a", lbl("app", "web-svc"),
					[]corev1.Container{ctr("linkerd-proxy", "cr.l5d.io/linkerd/proxy:stable-2.14.10"), ctr("web-svc", "buoyantio/emojivoto-web:v11")},
					annotated("linkerd.io/proxy-version", "stable-2.14.10")),
			).serving(
				api("linkerd.io/v1alpha2", "serviceprofiles"),
				api("policy.linkerd.io/v1beta3", "servers", "httproutes"),
			),
			want: want{
				mesh: discovery.MeshLinkerd, namespace: "linkerd", version: "stable-2.14.10",
				components: "destination,identity,proxy-injector",
				workloads:  "Deployment/linkerd-destination destination stable-2.14.10 1/1",
				webhooks:   "linkerd-proxy-injector-webhook-config",
				groups:     "linkerd.io,policy.linkerd.io",
				resources:  "httproutes.policy.linkerd.io,servers.policy.linkerd.io,serviceprofiles.linkerd.io",
				dataPlane:  "emojivoto 1/1/1 [stable-2.14.10]",
				smpType:    smp.ServiceMesh_LINKERD,
			},
		},
		{
			name: "kuma",
			cluster: baseCluster().with(
				deployment("kuma-system", "kuma-control-plane", 1, 1, kumaCP, ctr("control-plane", "docker.io/kumahq/kuma-cp:2.9.1")),
				pod("kuma-system", "kuma-control-plane-7c9f8b6d5-abcde", "node-a", kumaCP,
					[]corev1.Container{ctr("control-plane", "docker.io/kumahq/kuma-cp:2.9.1")}, ownedBy("Deployment", "kuma-control-plane")),
				webhook("kuma-admission-mutating-webhook-configuration", "kuma-system", "kuma-control-plane",
					"owner-reference.kuma-admission.kuma.io", "kuma-injector.kuma.io"),
				pod("kuma-demo", "demo-app-1", "node-b", lbl("app", "demo-app"),
					[]corev1.Container{ctr("demo-app", "kumahq/kuma-counter-demo:1.0"), ctr("kuma-sidecar", "docker.io/kumahq/kuma-dp:2.9.1")},
					annotated("kuma.io/sidecar-injected", "true")),
			).serving(api("kuma.io/v1alpha1", "meshes", "dataplanes", "meshtrafficpermissions")),
			want: want{
				mesh: discovery.MeshKuma, namespace: "kuma-system", version: "2.9.1",
				components: "control-plane",
				workloads:  "Deployment/kuma-control-plane control-plane 2.9.1 1/1",
				webhooks:   "kuma-admission-mutating-webhook-configuration",
				groups:     "kuma.io",
				resources:  "dataplanes.kuma.io,meshes.kuma.io,meshtrafficpermissions.kuma.io",
				dataPlane:  "kuma-demo 1/1/1 [2.9.1]",
				smpType:    smp.ServiceMesh_KUMA,
			},
		},
		{
			name: "consul",
			cluster: baseCluster().with(
				statefulSet("consul", "consul-server", 3, 2, consulServer, ctr("consul", "hashicorp/consul:1.20.1")),
				pod("consul", "consul-server-0", "node-a", consulServer, []corev1.Container{ctr("consul", "hashicorp/consul:1.20.1")}, ownedBy("StatefulSet", "consul-server")),
				pod("consul", "consul-server-1", "node-b", consulServer, []corev1.Container{ctr("consul", "hashicorp/consul:1.20.1")}, ownedBy("StatefulSet", "consul-server"), notReady("consul")),
				deployment("consul", "consul-connect-injector", 1, 1, consulInjector, ctr("sidecar-injector", "hashicorp/consul-k8s-control-plane:1.6.1")),
				pod("consul", "consul-connect-injector-7c9f8b6d5-abcde", "node-a", consulInjector,
					[]corev1.Container{ctr("sidecar-injector", "hashicorp/consul-k8s-control-plane:1.6.1")}, ownedBy("Deployment", "consul-connect-injector")),
				webhook("consul-connect-injector", "consul", "consul-connect-injector", "consul-connect-injector.consul.hashicorp.com"),
				pod("default", "static-server-1", "node-b", lbl("app", "static-server"),
					[]corev1.Container{ctr("static-server", "hashicorp/http-echo:latest"), ctr("consul-dataplane", "hashicorp/consul-dataplane:1.6.1")},
					annotated("consul.hashicorp.com/connect-inject-status", "injected")),
			).serving(api("consul.hashicorp.com/v1alpha1", "servicedefaults", "serviceintentions")),
			want: want{
				mesh: discovery.MeshConsul, namespace: "consul", version: "1.20.1",
				components: "connect-injector,server,server",
				workloads:  "Deployment/consul-connect-injector connect-injector 1.6.1 1/1,StatefulSet/consul-server server 1.20.1 3/2",
				webhooks:   "consul-connect-injector",
				groups:     "consul.hashicorp.com",
				dataPlane:  "default 1/1/1 [1.6.1]",
				smpType:    smp.ServiceMesh_CONSUL,
			},
		},
		{
			name: "osm",
			cluster: baseCluster().with(
				deployment("osm-system", "osm-controller", 1, 1, osmController, ctr("osm-controller", "openservicemesh/osm-controller:v1.2.4")),
				pod("osm-system", "osm-controller-7c9f8b6d5-abcde", "node-a", osmController,
					[]corev1.Container{ctr("osm-controller", "openservicemesh/osm-controller:v1.2.4")}, ownedBy("Deployment", "osm-controller")),
				pod("osm-system", "osm-injector-7c9f8b6d5-fghij", "node-b", osmInjector,
					[]corev1.Container{ctr("osm-injector", "openservicemesh/osm-injector:v1.2.4")}, ownedBy("Deployment", "osm-injector")),
				webhook("osm-webhook-osm", "osm-system", "osm-injector", "osm-inject.k8s.io"),
				pod("bookstore", "bookstore-v1", "node-b", lbl("app", "bookstore", "osm-proxy-uuid", "b7a0a0b0-1"),
					[]corev1.Container{ctr("bookstore", "openservicemesh/bookstore:v1.2.4"), ctr("envoy", "envoyproxy/envoy:v1.22.2")}),
			).serving(
				api("config.openservicemesh.io/v1alpha2", "meshconfigs", "meshrootcertificates"),
				api("split.smi-spec.io/v1alpha2", "trafficsplits"),
			),
			want: want{
				mesh: discovery.MeshOSM, namespace: "osm-system", version: "v1.2.4",
				components: "osm-controller,osm-injector",
				webhooks:   "osm-webhook-osm",
				groups:     "config.openservicemesh.io,split.smi-spec.io",
				resources:  "meshconfigs.config.openservicemesh.io,meshrootcertificates.config.openservicemesh.io,trafficsplits.split.smi-spec.io",
				dataPlane:  "bookstore 1/1/1 [v1.22.2]",
				smpType:    smp.ServiceMesh_OPEN_SERVICE_MESH,
			},
		},
		{
			name: "nginx",
			cluster: baseCluster().with(
				deployment("nginx-mesh", "nginx-mesh-api", 1, 1, nsmAPI, ctr("nginx-mesh-api", "docker-registry.nginx.com/nsm/nginx-mesh-api:1.7.0")),
				pod("nginx-mesh", "nginx-mesh-api-7c9f8b6d5-abcde", "node-a", nsmAPI,
					[]corev1.Container{ctr("nginx-mesh-api", "docker-registry.nginx.com/nsm/nginx-mesh-api:1.7.0")}, ownedBy("Deployment", "nginx-mesh-api")),
				pod("nginx-mesh", "nginx-mesh-metrics-7c9f8b6d5-fghij", "node-b", nsmMetrics,
					[]corev1.Container{ctr("nginx-mesh-metrics", "docker-registry.nginx.com/nsm/nginx-mesh-metrics:1.7.0")}, ownedBy("Deployment", "nginx-mesh-metrics")),
				webhook("nginx-mesh-sidecar-injector", "nginx-mesh", "nginx-mesh-api", "injector.nsm.nginx.com"),
				pod("prod", "api-1", "node-b", lbl("app", "api"),
					[]corev1.Container{ctr("api", "acme/api:3"), ctr("nginx-mesh-sidecar", "docker-registry.nginx.com/nsm/nginx-mesh-sidecar:1.7.0")},
					annotated("injector.nsm.nginx.com/auto-inject", "true")),
			).serving(api("specs.smi.nginx.com/v1alpha1", "ratelimits", "circuitbreakers")),
			want: want{
				mesh: discovery.MeshNGINX, namespace: "nginx-mesh", version: "1.7.0",
				components: "nginx-mesh-api,nginx-mesh-metrics",
				webhooks:   "nginx-mesh-sidecar-injector",
				groups:     "specs.smi.nginx.com",
				dataPlane:  "prod 1/1/1 [1.7.0]",
				smpType:    smp.ServiceMesh_NGINX_SERVICE_MESH,
			},
		},
		{
			name: "cilium",
			cluster: baseCluster().with(
				daemonSet("kube-system", "cilium", 2, 2, ciliumAgent, ctr("cilium-agent", ciliumImg)),
				pod("kube-system", "cilium-x7k2p", "node-a", ciliumAgent, []corev1.Container{ctr("cilium-agent", ciliumImg)}, ownedBy("DaemonSet", "cilium")),
				pod("kube-system", "cilium-q8m3z", "node-b", ciliumAgent, []corev1.Container{ctr("cilium-agent", ciliumImg)}, ownedBy("DaemonSet", "cilium")),
				deployment("kube-system", "cilium-operator", 1, 1, ciliumOp, ctr("cilium-operator", opImg)),
				pod("kube-system", "cilium-operator-7c9f8b6d5-abcde", "node-a", ciliumOp, []corev1.Container{ctr("cilium-operator", opImg)}, ownedBy("Deployment", "cilium-operator")),
			).serving(api("cilium.io/v2", "ciliumnetworkpolicies", "ciliumenvoyconfigs")),
			want: want{
				mesh: MeshCilium, namespace: "kube-system", version: "v1.16.3",
				components: "agent,agent,operator",
				workloads:  "DaemonSet/cilium agent v1.16.3 2/2,Deployment/cilium-operator operator v1.16.3 1/1",
				groups:     "cilium.io",
				dataPlane:  "",
				smpType:    smp.ServiceMesh_CILIUM_SERVICE_MESH,
			},
		},
		{
			name: "traefik",
			cluster: baseCluster().with(
				deployment("traefik-mesh", "traefik-mesh-controller", 1, 1, traefikCtl, ctr("traefik-mesh-controller", "traefik/mesh:v1.4.8")),
				pod("traefik-mesh", "traefik-mesh-controller-7c9f8b6d5-abcde", "node-a", traefikCtl,
					[]corev1.Container{ctr("traefik-mesh-controller", "traefik/mesh:v1.4.8")}, ownedBy("Deployment", "traefik-mesh-controller")),
				daemonSet("traefik-mesh", "traefik-mesh-proxy", 2, 2, traefikProxy, ctr("traefik-mesh-proxy", "traefik:v2.10.7")),
				pod("traefik-mesh", "traefik-mesh-proxy-abcde", "node-a", traefikProxy,
					[]corev1.Container{ctr("traefik-mesh-proxy", "traefik:v2.10.7")}, ownedBy("DaemonSet", "traefik-mesh-proxy")),
			).serving(api("access.smi-spec.io/v1alpha2", "traffictargets")),
			want: want{
				mesh: MeshTraefik, namespace: "traefik-mesh", version: "v1.4.8",
				components: "controller,proxy",
				workloads:  "DaemonSet/traefik-mesh-proxy proxy v2.10.7 2/2,Deployment/traefik-mesh-controller controller v1.4.8 1/1",
				groups:     "access.smi-spec.io",
				smpType:    smp.ServiceMesh_TRAEFIK_MESH,
			},
		},
	}
	seen := map[discovery.Mesh]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkMesh(t, detect(t, clientset(tc.cluster)), tc.want)
		})
		seen[tc.want.mesh] = true
	}
	for _, m := range Known() {
		if !seen[m] {
			t.Errorf("no test detects %s", m)
		}
	}
}

// TestUnmeshed: a plain cluster, and one with Traefik Proxy as ingress controller (its CRD
// groups and a container named envoy are no mesh), report nothing.
func TestUnmeshed(t *testing.T) {
	k3s := baseCluster().with(
		deployment("kube-system", "traefik", 1, 1, lbl("app.kubernetes.io/name", "traefik", "app.kubernetes.io/instance", "traefik-kube-system"),
			ctr("traefik", "rancher/mirrored-library-traefik:2.10.5")),
	).serving(api("traefik.containo.us/v1alpha1", "ingressroutes", "middlewares"), api("traefik.io/v1alpha1", "ingressroutes"))
	for name, c := range map[string]cluster{"plain": baseCluster(), "k3s-traefik-ingress": k3s} {
		t.Run(name, func(t *testing.T) {
			r := detect(t, clientset(c))
			if len(r.Meshes) != 0 || len(r.Warnings) != 0 {
				t.Errorf("meshes %+v, warnings %v", r.Meshes, r.Warnings)
			}
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != `{"meshes":[]}` {
				t.Errorf("JSON %s", b)
			}
			if _, err := r.Find(discovery.MeshIstio); !errors.Is(err, ErrNotDetected) || !strings.Contains(err.Error(), "no mesh found") {
				t.Errorf("Find: %v", err)
			}
		})
	}
}

// TestForbidden: a list the account may not make is a warning; what else was read still
// makes the report.
func TestForbidden(t *testing.T) {
	forbid := func(resource string) k8stesting.ReactionFunc {
		return func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: resource}, "", errors.New("RBAC: access denied"))
		}
	}
	tests := []struct {
		verb, resource string
		warning        string
		check          func(t *testing.T, m *Mesh)
	}{
		{"list", "mutatingwebhookconfigurations", "cannot list mutatingwebhookconfigurations.admissionregistration.k8s.io (forbidden)", func(t *testing.T, m *Mesh) {
			if len(m.Evidence.Webhooks) != 0 || m.Version != "1.24.0" || len(m.ControlPlane) != 2 {
				t.Errorf("%+v", m)
			}
		}},
		{"list", "pods", "cannot list pods (forbidden)", func(t *testing.T, m *Mesh) {
			// The workloads still give the version; no pods, no data plane, and no false
			// claim that the control plane is missing.
			if len(m.ControlPlane) != 0 || len(m.DataPlane) != 0 || m.Version != "1.24.0" || m.Namespace != "istio-system" || len(m.Notes) != 0 {
				t.Errorf("%+v", m)
			}
		}},
		{"list", "deployments", "cannot list deployments.apps (forbidden)", func(t *testing.T, m *Mesh) {
			if len(m.Workloads) != 0 || len(m.ControlPlane) != 2 || m.Version != "1.24.0" {
				t.Errorf("%+v", m)
			}
		}},
		{"get", "group", "cannot list API groups (forbidden)", func(t *testing.T, m *Mesh) {
			if len(m.Evidence.APIGroups) != 0 || m.Version != "1.24.0" {
				t.Errorf("%+v", m)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.resource, func(t *testing.T) {
			cs := clientset(istioCluster("1.24.0"))
			cs.PrependReactor(tc.verb, tc.resource, forbid(tc.resource))
			r := detect(t, cs)
			if len(r.Warnings) != 1 || !strings.HasPrefix(r.Warnings[0], tc.warning) {
				t.Errorf("warnings %q, want one starting %q", r.Warnings, tc.warning)
			}
			m, err := r.Find(discovery.MeshIstio)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, m)
		})
	}
}

// TestUnreachable: an error that is not about one kind of object fails Detect.
func TestUnreachable(t *testing.T) {
	cs := clientset(istioCluster("1.24.0"))
	cs.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
	})
	if r, err := Detect(context.Background(), cs, Options{}); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Detect = %+v, %v; want the connection error", r, err)
	}
}

// TestRevisionsAndNotes: a canary upgrade shows both releases with the larger first; what
// is left of an uninstalled mesh is reported with a note saying so.
func TestRevisionsAndNotes(t *testing.T) {
	rev := func(r, v string, n int) []runtime.Object {
		l := lbl("app", "istiod", "istio", "pilot", "istio.io/rev", r)
		var out []runtime.Object
		for i := 0; i < n; i++ {
			out = append(out, pod("istio-system", fmt.Sprintf("istiod-%s-%d", r, i), "node-a", l,
				[]corev1.Container{ctr("discovery", "gcr.io/istio-release/pilot:"+v)}, ownedBy("Deployment", "istiod-"+r)))
		}
		return out
	}
	c := baseCluster().with(append(rev("1-23", "1.23.2", 1), rev("1-24", "1.24.1", 2)...)...).
		serving(api("kuma.io/v1alpha1", "meshes"))
	r := detect(t, clientset(c))
	if got := names(r.Meshes, func(m Mesh) string { return string(m.Name) }); got != "istio,kuma" {
		t.Fatalf("meshes %s", got)
	}
	istio, kuma := r.Meshes[0], r.Meshes[1]
	if istio.Version != "1.24.1" || !slices.Equal(istio.Versions, []string{"1.24.1", "1.23.2"}) {
		t.Errorf("istio version %q versions %v", istio.Version, istio.Versions)
	}
	if len(kuma.Notes) != 1 || !strings.Contains(kuma.Notes[0], "no control plane") || kuma.Version != "" {
		t.Errorf("kuma leftovers: %+v", kuma)
	}
}

// TestDeterministic: the same cluster gives the same report whatever order the API lists
// objects in.
func TestDeterministic(t *testing.T) {
	c := istioCluster("1.24.0").with(
		pod("linkerd", "linkerd-destination-1", "node-a", lbl("linkerd.io/control-plane-component", "destination"),
			[]corev1.Container{ctr("destination", "cr.l5d.io/linkerd/controller:edge-24.11.8")}),
	).serving(api("linkerd.io/v1alpha2", "serviceprofiles"))
	first, err := json.Marshal(detect(t, clientset(c)))
	if err != nil {
		t.Fatal(err)
	}
	rev := c
	rev.objects = slices.Clone(c.objects)
	slices.Reverse(rev.objects)
	rev.apis = slices.Clone(c.apis)
	slices.Reverse(rev.apis)
	for i := 0; i < 5; i++ {
		again, err := json.Marshal(detect(t, clientset(rev)))
		if err != nil {
			t.Fatal(err)
		}
		if string(again) != string(first) {
			t.Fatalf("reports differ:\n%s\n%s", first, again)
		}
	}
}

func TestImageVersion(t *testing.T) {
	for image, want := range map[string]string{
		"docker.io/istio/pilot:1.24.0":                   "1.24.0",
		"docker.io/istio/pilot:1.24.0-distroless":        "1.24.0",
		"istio/proxyv2:1.24.0-debug":                     "1.24.0",
		"docker.io/istio/pilot:1.24.0@sha256:0123456789": "1.24.0",
		"docker.io/istio/pilot:1.24.0-distroless@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef": "1.24.0",
		"docker.io/istio/pilot@sha256:0123456789abcdef":                                                                   "",
		"localhost:5000/istio/pilot":                     "",
		"localhost:5000/istio/pilot:1.23.4":              "1.23.4",
		"pilot":                                          "",
		"istio/pilot:latest":                             "",
		"cr.l5d.io/linkerd/controller:stable-2.14.10":    "stable-2.14.10",
		"cr.l5d.io/linkerd/controller:edge-24.11.8":      "edge-24.11.8",
		"quay.io/cilium/cilium:v1.16.3@sha256:62d2a09bb": "v1.16.3",
		"hashicorp/consul:1.20.1-ubi":                    "1.20.1",
		"registry.example.com:443/mirror/kuma-cp:2.9.1":  "2.9.1",
		" docker.io/kumahq/kuma-cp:2.9.1 ":               "2.9.1",
	} {
		if got := ImageVersion(image); got != want {
			t.Errorf("ImageVersion(%q) = %q, want %q", image, got, want)
		}
	}
}

func TestSMPType(t *testing.T) {
	for mesh, want := range map[discovery.Mesh]smp.ServiceMesh_Type{
		discovery.MeshIstio: smp.ServiceMesh_ISTIO, discovery.MeshLinkerd: smp.ServiceMesh_LINKERD,
		discovery.MeshKuma: smp.ServiceMesh_KUMA, discovery.MeshConsul: smp.ServiceMesh_CONSUL,
		discovery.MeshOSM: smp.ServiceMesh_OPEN_SERVICE_MESH, discovery.MeshNGINX: smp.ServiceMesh_NGINX_SERVICE_MESH,
		MeshCilium: smp.ServiceMesh_CILIUM_SERVICE_MESH, MeshTraefik: smp.ServiceMesh_TRAEFIK_MESH,
		"app-mesh": smp.ServiceMesh_INVALID_MESH, "": smp.ServiceMesh_INVALID_MESH,
	} {
		if got := SMPType(mesh); got != want {
			t.Errorf("SMPType(%q) = %v, want %v", mesh, got, want)
		}
	}
	// Every mesh the agent's discovery knows has a type.
	for _, m := range discovery.Meshes {
		if SMPType(m) == smp.ServiceMesh_INVALID_MESH {
			t.Errorf("no SMP type for %s", m)
		}
	}
}

func TestParseMesh(t *testing.T) {
	for in, want := range map[string]discovery.Mesh{"istio": discovery.MeshIstio, " Traefik ": MeshTraefik, "CILIUM": MeshCilium, "nginx": discovery.MeshNGINX} {
		if got, err := ParseMesh(in); err != nil || got != want {
			t.Errorf("ParseMesh(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseMesh("app-mesh"); err == nil || !strings.Contains(err.Error(), "known: istio, linkerd, kuma, consul, osm, nginx, cilium, traefik") {
		t.Errorf("ParseMesh(app-mesh): %v", err)
	}
}
