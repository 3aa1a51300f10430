package meshdetect

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
)

// Mesh ids beyond the sidecar meshes the agent's discovery knows. Neither injects a sidecar:
// both proxy per node.
const (
	MeshCilium  discovery.Mesh = "cilium"
	MeshTraefik discovery.Mesh = "traefik"
)

// subject is a workload or pod looked at as a possible control-plane component: the
// workload's name (a pod's owning Deployment, DaemonSet or StatefulSet) and its pod
// template's labels, annotations and containers.
type subject struct {
	namespace, name string
	labels          map[string]string
	annotations     map[string]string
	containers      []corev1.Container
}

func (s *subject) hasImage(names ...string) bool {
	for _, c := range s.containers {
		if repositoryIs(c.Image, names...) {
			return true
		}
	}
	return false
}

// component is what a classifier makes of a subject. rank orders components by how well
// their version stands for the mesh's: the mesh's version is taken from the lowest rank found.
type component struct {
	name string
	rank int
}

// signature is what an install of one mesh leaves in the API.
type signature struct {
	mesh    discovery.Mesh
	display string
	// groups are API group suffixes only this mesh serves (its CRDs).
	groups []string
	// sharedGroups are served by other projects too (SMI, Traefik Proxy): listed as evidence
	// for a mesh found otherwise, never enough alone.
	sharedGroups []string
	// Injection webhooks: configuration name prefixes, webhook name suffixes, and the
	// services they call.
	hookConfigs, hookNames, hookServices []string
	// images are repositories of the control-plane containers whose tag is the release;
	// they pick the container a component's version is read from.
	images   []string
	classify func(s *subject) (component, bool)
}

// signatures in the order they are tried: a subject belongs to the first that claims it.
var signatures = []signature{
	{
		mesh: discovery.MeshIstio, display: "Istio",
		groups:       []string{"istio.io"},
		hookConfigs:  []string{"istio-sidecar-injector", "istio-revision-tag-"},
		hookNames:    []string{"sidecar-injector.istio.io"},
		hookServices: []string{"istiod", "istio-sidecar-injector"},
		images:       []string{"pilot", "proxyv2", "ztunnel", "install-cni", "citadel", "galley", "sidecar_injector"},
		classify:     classifyIstio,
	},
	{
		mesh: discovery.MeshLinkerd, display: "Linkerd",
		groups:       []string{"linkerd.io"},
		hookConfigs:  []string{"linkerd-proxy-injector"},
		hookNames:    []string{"linkerd-proxy-injector.linkerd.io"},
		hookServices: []string{"linkerd-proxy-injector"},
		images:       []string{"linkerd/controller", "linkerd/policy-controller", "linkerd/web", "linkerd/metrics-api", "linkerd/tap"},
		classify:     classifyLinkerd,
	},
	{
		mesh: discovery.MeshKuma, display: "Kuma",
		groups:       []string{"kuma.io"},
		hookConfigs:  []string{"kuma-admission-mutating", "kong-mesh-admission-mutating"},
		hookNames:    []string{"kuma.io"},
		hookServices: []string{"kuma-control-plane", "kong-mesh-control-plane"},
		images:       []string{"kuma-cp", "kuma-dp"},
		classify:     classifyKuma,
	},
	{
		mesh: discovery.MeshConsul, display: "Consul",
		groups:       []string{"consul.hashicorp.com"},
		hookNames:    []string{"consul.hashicorp.com"},
		hookServices: []string{"consul-connect-injector"},
		images:       []string{"consul", "consul-enterprise", "consul-k8s-control-plane", "consul-dataplane"},
		classify:     classifyConsul,
	},
	{
		mesh: discovery.MeshOSM, display: "Open Service Mesh",
		groups:       []string{"openservicemesh.io"},
		sharedGroups: []string{"smi-spec.io"},
		hookConfigs:  []string{"osm-webhook-"},
		hookNames:    []string{"osm-inject.k8s.io"},
		hookServices: []string{"osm-injector"},
		images:       []string{"osm-controller", "osm-injector", "osm-bootstrap"},
		classify:     classifyOSM,
	},
	{
		mesh: discovery.MeshNGINX, display: "NGINX Service Mesh",
		groups:       []string{"nsm.nginx.com", "smi.nginx.com"},
		sharedGroups: []string{"smi-spec.io"},
		hookConfigs:  []string{"nginx-mesh"},
		hookNames:    []string{"nsm.nginx.com"},
		hookServices: []string{"nginx-mesh-api", "nginx-mesh-controller"},
		images:       []string{"nginx-mesh-api", "nginx-mesh-controller", "nginx-mesh-metrics"},
		classify:     classifyNGINX,
	},
	{
		mesh: MeshCilium, display: "Cilium",
		groups:   []string{"cilium.io"},
		images:   []string{"cilium", "operator-generic", "operator", "cilium-envoy", "hubble-relay"},
		classify: classifyCilium,
	},
	{
		mesh: MeshTraefik, display: "Traefik Mesh",
		// Traefik Mesh has no CRDs of its own: it reads SMI, and Traefik Proxy's groups are
		// present wherever Traefik is the ingress controller (k3s's default).
		sharedGroups: []string{"smi-spec.io", "traefik.containo.us", "traefik.io"},
		images:       []string{"traefik/mesh", "containous/maesh"},
		classify:     classifyTraefik,
	},
}

func signatureOf(m discovery.Mesh) *signature {
	for i := range signatures {
		if signatures[i].mesh == m {
			return &signatures[i]
		}
	}
	return nil
}

// DisplayName is a mesh's name as its project writes it.
func DisplayName(m discovery.Mesh) string {
	if s := signatureOf(m); s != nil {
		return s.display
	}
	return string(m)
}

// Known lists the mesh ids Detect can report, in its order of precedence.
func Known() []discovery.Mesh {
	out := make([]discovery.Mesh, len(signatures))
	for i, s := range signatures {
		out[i] = s.mesh
	}
	return out
}

// ParseMesh accepts a mesh id as flags spell it ("istio", "Linkerd", ...), any of the ids
// Known returns.
func ParseMesh(s string) (discovery.Mesh, error) {
	m := discovery.Mesh(strings.ToLower(strings.TrimSpace(s)))
	if signatureOf(m) != nil {
		return m, nil
	}
	ids := make([]string, len(signatures))
	for i, sig := range signatures {
		ids[i] = string(sig.mesh)
	}
	return "", fmt.Errorf("unknown mesh %q (known: %s)", s, strings.Join(ids, ", "))
}

// nameIs reports whether a workload is called base or base-<suffix> (Istio revisions:
// istiod-1-24).
func nameIs(name, base string) bool {
	return name == base || strings.HasPrefix(name, base+"-")
}

func classifyIstio(s *subject) (component, bool) {
	l := s.labels
	switch {
	case l["app"] == "istiod" || l["istio"] == "pilot" || nameIs(s.name, "istiod") || s.name == "istio-pilot":
		return component{"istiod", 0}, true
	case l["app"] == "ztunnel" || (s.name == "ztunnel" && s.hasImage("ztunnel")):
		return component{"ztunnel", 1}, true
	case l["k8s-app"] == "istio-cni-node" || l["app"] == "istio-cni-node":
		return component{"istio-cni", 1}, true
	case slices.Contains([]string{"citadel", "galley", "sidecar-injector", "mixer", "policy", "telemetry"}, l["istio"]):
		return component{l["istio"], 1}, true
	case l["gateway.istio.io/managed"] == "istio.io-mesh-controller":
		return component{"waypoint", 2}, true
	case l["gateway.istio.io/managed"] == "istio.io-gateway-controller":
		return component{"gateway", 2}, true
	case slices.Contains([]string{"ingressgateway", "egressgateway", "eastwestgateway"}, l["istio"]):
		return component{l["istio"], 2}, true
	}
	return component{}, false
}

func classifyLinkerd(s *subject) (component, bool) {
	l := s.labels
	if c := l["linkerd.io/control-plane-component"]; c != "" {
		rank := 1
		if c == "destination" || c == "controller" {
			rank = 0
		}
		return component{c, rank}, true
	}
	if e := l["linkerd.io/extension"]; e != "" {
		c := l["component"]
		if c == "" {
			c = s.name
		}
		return component{e + "/" + c, 3}, true
	}
	return component{}, false
}

func classifyKuma(s *subject) (component, bool) {
	l := s.labels
	switch {
	case l["app"] == "kuma-control-plane" || l["app"] == "kong-mesh-control-plane" || s.hasImage("kuma-cp"):
		return component{"control-plane", 0}, true
	case l["app"] == "kuma-ingress" || l["app"] == "kong-mesh-ingress":
		return component{"zone-ingress", 1}, true
	case l["app"] == "kuma-egress" || l["app"] == "kong-mesh-egress":
		return component{"zone-egress", 1}, true
	}
	return component{}, false
}

func classifyConsul(s *subject) (component, bool) {
	l := s.labels
	ranks := map[string]int{"server": 0, "connect-injector": 1}
	rank := func(c string) int {
		if r, ok := ranks[c]; ok {
			return r
		}
		return 2
	}
	// The Helm chart labels everything app=consul with the part in component.
	if l["app"] == "consul" && (l["chart"] != "" || l["component"] != "") {
		c := l["component"]
		if c == "" {
			c = s.name
		}
		return component{c, rank(c)}, true
	}
	switch {
	case s.hasImage("consul-k8s-control-plane") && strings.Contains(s.name, "connect-injector"):
		return component{"connect-injector", 1}, true
	case s.hasImage("consul", "consul-enterprise") && strings.Contains(s.name, "consul-server"):
		return component{"server", 0}, true
	}
	return component{}, false
}

func classifyOSM(s *subject) (component, bool) {
	l := s.labels
	app := l["app"]
	switch app {
	case "osm-controller":
		return component{app, 0}, true
	case "osm-injector", "osm-bootstrap":
		return component{app, 1}, true
	}
	if l["app.kubernetes.io/name"] == "openservicemesh.io" {
		c := app
		if c == "" {
			c = s.name
		}
		return component{c, 2}, true
	}
	return component{}, false
}

func classifyNGINX(s *subject) (component, bool) {
	name := s.labels["app.kubernetes.io/name"]
	if name == "" {
		name = s.name
	}
	main := s.hasImage("nginx-mesh-api", "nginx-mesh-controller") ||
		name == "nginx-mesh-api" || name == "nginx-mesh-controller"
	switch {
	case main:
		return component{name, 0}, true
	case s.labels["app.kubernetes.io/part-of"] == "nginx-service-mesh" || s.hasImage("nginx-mesh-metrics") ||
		strings.HasPrefix(s.name, "nginx-mesh-"):
		return component{name, 1}, true
	}
	return component{}, false
}

func classifyCilium(s *subject) (component, bool) {
	l := s.labels
	switch {
	case l["k8s-app"] == "cilium":
		return component{"agent", 0}, true
	case l["io.cilium/app"] == "operator" || l["name"] == "cilium-operator":
		return component{"operator", 1}, true
	case l["k8s-app"] == "cilium-envoy":
		return component{"envoy", 1}, true
	case l["k8s-app"] == "hubble-relay" || l["k8s-app"] == "hubble-ui":
		return component{l["k8s-app"], 2}, true
	case l["app.kubernetes.io/part-of"] == "cilium" && l["app.kubernetes.io/name"] != "":
		return component{l["app.kubernetes.io/name"], 2}, true
	}
	return component{}, false
}

func classifyTraefik(s *subject) (component, bool) {
	l := s.labels
	if !(l["app"] == "maesh" || l["app.kubernetes.io/name"] == "traefik-mesh" ||
		l["app.kubernetes.io/part-of"] == "traefik-mesh" || s.hasImage("traefik/mesh", "containous/maesh")) {
		return component{}, false
	}
	c := l["component"]
	switch {
	case c == "controller" || s.hasImage("traefik/mesh", "containous/maesh"):
		return component{"controller", 0}, true
	case c == "maesh-mesh" || c == "mesh" || c == "proxy" || strings.HasSuffix(s.name, "-proxy") || strings.HasSuffix(s.name, "-mesh"):
		return component{"proxy", 1}, true
	case c != "":
		return component{c, 2}, true
	}
	return component{s.name, 2}, true
}

// sidecarContainers are containers a mesh injects into pods, its own control plane's
// included (Linkerd meshes its control plane); a component's version is not read from them.
var sidecarContainers = []string{
	"istio-proxy", "istio-init", "istio-validation",
	"linkerd-proxy", "linkerd-init", "linkerd-network-validator",
	"kuma-sidecar", "kuma-init",
	"consul-dataplane", "consul-connect-inject-init",
	"nginx-mesh-sidecar", "nginx-mesh-init",
}

// version is the subject's release: the tag of the container running one of the mesh's
// release images, else of the first container the mesh did not inject, else a version
// label.
func (sig *signature) version(s *subject) string {
	for _, c := range s.containers {
		if repositoryIs(c.Image, sig.images...) {
			if v := ImageVersion(c.Image); v != "" {
				return v
			}
		}
	}
	for _, c := range s.containers {
		if !slices.Contains(sidecarContainers, c.Name) {
			if v := ImageVersion(c.Image); v != "" {
				return v
			}
			break
		}
	}
	for _, k := range []string{"app.kubernetes.io/version", "operator.istio.io/version", "version"} {
		if v := s.labels[k]; v != "" {
			return v
		}
	}
	return s.annotations["linkerd.io/proxy-version"]
}
