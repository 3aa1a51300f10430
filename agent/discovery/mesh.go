package discovery

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Mesh names a service mesh. The values are the ones agentapi.Sidecar.mesh carries.
type Mesh string

const (
	MeshIstio   Mesh = "istio"
	MeshLinkerd Mesh = "linkerd"
	MeshKuma    Mesh = "kuma"
	MeshConsul  Mesh = "consul"
	MeshOSM     Mesh = "osm"
	MeshNGINX   Mesh = "nginx"
)

// Meshes lists the meshes discovery knows, in the order they are tried.
var Meshes = []Mesh{MeshIstio, MeshLinkerd, MeshKuma, MeshConsul, MeshOSM, MeshNGINX}

// ErrNoSidecar is returned (wrapped, with the reason) for a pod that has no sidecar.
var ErrNoSidecar = errors.New("pod has no mesh sidecar")

// profile is what is known about how a mesh injects its sidecar. Defaults are the
// documented ones of each project's injector.
type profile struct {
	mesh      Mesh
	container string
	// evidence reports whether the pod carries the injector's own marks.
	evidence func(*corev1.Pod) bool
	// generic container names (OSM's "envoy") count only with evidence, so that a pod that
	// merely runs a container called envoy is not taken for a meshed one.
	needEvidence bool
	proxies      []string
	helpers      []string
	inbound      uint32
	outbound     uint32
	uid          uint32
}

func annotationIs(key, value string) func(*corev1.Pod) bool {
	return func(p *corev1.Pod) bool {
		v, ok := p.Annotations[key]
		return ok && (value == "" || strings.EqualFold(v, value))
	}
}

var profiles = map[Mesh]profile{
	// Istio: sidecar injector writes sidecar.istio.io/status; Envoy is started by pilot-agent
	// in the same container; istio-iptables defaults -z 15006 -p 15001 -u 1337.
	MeshIstio: {
		mesh: MeshIstio, container: "istio-proxy",
		evidence: annotationIs("sidecar.istio.io/status", ""),
		proxies:  []string{"envoy"}, helpers: []string{"pilot-agent"},
		inbound: 15006, outbound: 15001, uid: 1337,
	},
	// Linkerd: the injector sets linkerd.io/proxy-version; inbound 4143, outbound 4140,
	// proxy UID 2102. Old releases started the proxy through linkerd2-proxy-identity.
	MeshLinkerd: {
		mesh: MeshLinkerd, container: "linkerd-proxy",
		evidence: annotationIs("linkerd.io/proxy-version", ""),
		proxies:  []string{"linkerd2-proxy"}, helpers: []string{"linkerd2-proxy-identity", "linkerd2-proxy-", "linkerd-await"},
		inbound: 4143, outbound: 4140, uid: 2102,
	},
	// Kuma: kuma.io/sidecar-injected: "true"; kuma-dp runs Envoy and its DNS (coredns);
	// redirect ports 15006/15001, sidecar UID 5678.
	MeshKuma: {
		mesh: MeshKuma, container: "kuma-sidecar",
		evidence: annotationIs("kuma.io/sidecar-injected", "true"),
		proxies:  []string{"envoy"}, helpers: []string{"kuma-dp", "coredns"},
		inbound: 15006, outbound: 15001, uid: 5678,
	},
	// Consul: consul.hashicorp.com/connect-inject-status: injected; consul-dataplane runs
	// Envoy; transparent proxy inbound is the public listener 20000, outbound 15001; the
	// dataplane runs as 5995.
	MeshConsul: {
		mesh: MeshConsul, container: "consul-dataplane",
		evidence: annotationIs("consul.hashicorp.com/connect-inject-status", "injected"),
		proxies:  []string{"envoy"}, helpers: []string{"consul-dataplane", "consul-dataplan"},
		inbound: 20000, outbound: 15001, uid: 5995,
	},
	// OSM: the injector labels pods osm-proxy-uuid; users annotate
	// openservicemesh.io/sidecar-injection. Envoy inbound 15003, outbound 15001, UID 1500.
	MeshOSM: {
		mesh: MeshOSM, container: "envoy",
		evidence: func(p *corev1.Pod) bool {
			_, l := p.Labels["osm-proxy-uuid"]
			_, a := p.Annotations["openservicemesh.io/sidecar-injection"]
			return l || a
		},
		needEvidence: true,
		proxies:      []string{"envoy"},
		inbound:      15003, outbound: 15001, uid: 1500,
	},
	// NGINX Service Mesh: nginx master and workers are all proxy. Its redirect ports and
	// UID are not documented as fixed defaults, so they come only from the pod spec.
	MeshNGINX: {
		mesh: MeshNGINX, container: "nginx-mesh-sidecar",
		evidence: func(p *corev1.Pod) bool {
			for k := range p.Annotations {
				if strings.HasSuffix(k, ".nsm.nginx.com") || strings.Contains(k, ".nsm.nginx.com/") {
					return true
				}
			}
			return false
		},
		proxies: []string{"nginx"}, helpers: []string{"nginx-mesh-sidecar", "nginx-mesh-side", "agent"},
	},
}

// genericProxies and genericHelpers classify processes in any sidecar container, so that a
// stand-in proxy (nginx in an istio-proxy container, as in the simulated cluster) and
// wrappers are told apart without naming every combination.
var (
	genericProxies = []string{"envoy", "nginx", "linkerd2-proxy", "haproxy"}
	genericHelpers = []string{"pilot-agent", "kuma-dp", "coredns", "consul-dataplane", "consul-dataplan",
		"linkerd2-proxy-identity", "linkerd-await", "sh", "bash", "dash", "ash", "tini", "dumb-init", "pause", "sleep"}
)

// ParseMesh accepts a mesh name as used in flags ("istio", "linkerd", ...).
func ParseMesh(s string) (Mesh, error) {
	m := Mesh(strings.ToLower(strings.TrimSpace(s)))
	if _, ok := profiles[m]; ok {
		return m, nil
	}
	return "", fmt.Errorf("unknown mesh %q (known: istio, linkerd, kuma, consul, osm, nginx)", s)
}

// ParseSidecarFlag parses an agent flag value "container=mesh" (e.g. "my-proxy=istio")
// into an entry for Options.SidecarContainers.
func ParseSidecarFlag(v string) (container string, mesh Mesh, err error) {
	name, m, ok := strings.Cut(v, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" {
		return "", "", fmt.Errorf("sidecar container %q: want name=mesh", v)
	}
	mesh, err = ParseMesh(m)
	if err != nil {
		return "", "", fmt.Errorf("sidecar container %q: %w", v, err)
	}
	return name, mesh, nil
}

// ContainerKind is where in the pod spec a container is declared.
type ContainerKind string

const (
	KindRegular   ContainerKind = "container"
	KindInit      ContainerKind = "init"
	KindEphemeral ContainerKind = "ephemeral"
)

// Recognition is which container of a pod is its mesh sidecar, and the mesh's settings
// for it taken from the pod spec (before any process is looked at).
type Recognition struct {
	Mesh      Mesh
	Container string
	Kind      ContainerKind
	// Native is true for an init container with restartPolicy Always.
	Native bool
	// InboundPort and OutboundPort are where the mesh's interception redirects traffic.
	InboundPort, OutboundPort uint32
	// InboundInterceptPorts are the app ports redirected inbound when the mesh is told to
	// redirect only some (Istio includeInboundPorts); nil means all.
	InboundInterceptPorts []uint32
	// ConfiguredUID is the proxy UID from the pod spec (securityContext, the mesh's init
	// arguments or annotations) or the mesh's default; 0 when none is known.
	ConfiguredUID uint32
	// AppPorts are the container ports of the pod's other containers.
	AppPorts []AppPort
}

// AppPort is a container port of a non-sidecar container.
type AppPort struct {
	Container string
	Name      string
	Port      uint32
	Protocol  string
}

type specContainer struct {
	c    *corev1.Container
	kind ContainerKind
	// running-style: regular containers, native sidecars and ephemeral ones; plain init
	// containers have exited by the time the pod runs and cannot be a sidecar.
	longLived bool
	native    bool
}

func podContainers(p *corev1.Pod) []specContainer {
	var out []specContainer
	for i := range p.Spec.InitContainers {
		c := &p.Spec.InitContainers[i]
		native := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		out = append(out, specContainer{c: c, kind: KindInit, longLived: native, native: native})
	}
	for i := range p.Spec.Containers {
		out = append(out, specContainer{c: &p.Spec.Containers[i], kind: KindRegular, longLived: true})
	}
	for i := range p.Spec.EphemeralContainers {
		c := corev1.Container(p.Spec.EphemeralContainers[i].EphemeralContainerCommon)
		out = append(out, specContainer{c: &c, kind: KindEphemeral, longLived: true})
	}
	return out
}

// Recognize finds the pod's sidecar. overrides maps container names to meshes and wins
// over the built-in names (for proxies injected under another name). A pod whose mesh
// annotations are present but whose sidecar container cannot be found gets an error
// wrapping ErrNoSidecar that says so.
func Recognize(p *corev1.Pod, overrides map[string]Mesh) (Recognition, error) {
	cs := podContainers(p)
	pick := func(sc specContainer, m Mesh) Recognition {
		r := Recognition{Mesh: m, Container: sc.c.Name, Kind: sc.kind, Native: sc.native}
		fillSettings(&r, p, sc.c, profiles[m])
		r.AppPorts = appPorts(cs, sc.c.Name)
		return r
	}
	for _, sc := range cs {
		if m, ok := overrides[sc.c.Name]; ok && sc.longLived {
			return pick(sc, m), nil
		}
	}
	for _, m := range Meshes {
		prof := profiles[m]
		name := prof.container
		// Istio records the names it injected; honour a renamed proxy container.
		if m == MeshIstio {
			if n := istioStatusProxy(p); n != "" {
				name = n
			}
		}
		for _, sc := range cs {
			if sc.c.Name != name || !sc.longLived {
				continue
			}
			if prof.needEvidence && !prof.evidence(p) {
				continue
			}
			return pick(sc, m), nil
		}
	}
	for _, m := range Meshes {
		if prof := profiles[m]; prof.evidence(p) {
			return Recognition{}, fmt.Errorf("%w: annotated for %s but no running %q container", ErrNoSidecar, m, prof.container)
		}
	}
	return Recognition{}, fmt.Errorf("%w: no known sidecar container (%s)", ErrNoSidecar, knownContainers())
}

func knownContainers() string {
	var names []string
	for _, m := range Meshes {
		names = append(names, profiles[m].container)
	}
	return strings.Join(names, ", ")
}

// istioStatusProxy returns the proxy container named in sidecar.istio.io/status, whose
// JSON lists the injected containers and init containers.
func istioStatusProxy(p *corev1.Pod) string {
	raw, ok := p.Annotations["sidecar.istio.io/status"]
	if !ok {
		return ""
	}
	var st struct {
		Containers     []string `json:"containers"`
		InitContainers []string `json:"initContainers"`
	}
	if json.Unmarshal([]byte(raw), &st) != nil {
		return ""
	}
	for _, list := range [][]string{st.Containers, st.InitContainers} {
		for _, n := range list {
			if n == "istio-proxy" {
				return n
			}
		}
	}
	for _, n := range st.Containers {
		if strings.Contains(n, "proxy") {
			return n
		}
	}
	return ""
}

func appPorts(cs []specContainer, sidecar string) []AppPort {
	var out []AppPort
	for _, sc := range cs {
		if sc.c.Name == sidecar || !sc.longLived || sc.kind == KindEphemeral {
			continue
		}
		for _, cp := range sc.c.Ports {
			proto := string(cp.Protocol)
			if proto == "" {
				proto = string(corev1.ProtocolTCP)
			}
			out = append(out, AppPort{Container: sc.c.Name, Name: cp.Name, Port: uint32(cp.ContainerPort), Protocol: proto})
		}
	}
	return out
}

// fillSettings sets capture ports and the configured proxy UID. Each mesh's explicit
// configuration (init container arguments, annotations, proxy environment) beats its
// defaults; a securityContext runAsUser beats everything, as it is what the proxy really
// runs as.
func fillSettings(r *Recognition, p *corev1.Pod, c *corev1.Container, prof profile) {
	r.InboundPort, r.OutboundPort, r.ConfiguredUID = prof.inbound, prof.outbound, prof.uid
	switch r.Mesh {
	case MeshIstio:
		if args := initArgs(p, "istio-init", "istio-validation"); args != nil {
			setPort(&r.OutboundPort, args["p"], args["envoy-port"])
			setPort(&r.InboundPort, args["z"], args["inbound-capture-port"])
			setPort(&r.ConfiguredUID, args["u"], args["proxy-uid"])
			if v, ok := first(args["b"], args["inbound-ports"]); ok {
				r.InboundInterceptPorts = portList(v)
			}
		}
		if v, ok := p.Annotations["traffic.sidecar.istio.io/includeInboundPorts"]; ok {
			r.InboundInterceptPorts = portList(v)
		}
		if ex, ok := p.Annotations["traffic.sidecar.istio.io/excludeInboundPorts"]; ok && r.InboundInterceptPorts != nil {
			r.InboundInterceptPorts = without(r.InboundInterceptPorts, portList(ex))
		}
	case MeshLinkerd:
		if args := initArgs(p, "linkerd-init"); args != nil {
			setPort(&r.InboundPort, args["incoming-proxy-port"])
			setPort(&r.OutboundPort, args["outgoing-proxy-port"])
			setPort(&r.ConfiguredUID, args["proxy-uid"])
		}
		for _, e := range c.Env {
			switch e.Name {
			case "LINKERD2_PROXY_INBOUND_LISTEN_ADDR":
				setPort(&r.InboundPort, addrPort(e.Value))
			case "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR":
				setPort(&r.OutboundPort, addrPort(e.Value))
			}
		}
		setPort(&r.ConfiguredUID, p.Annotations["config.linkerd.io/proxy-uid"])
	case MeshKuma:
		if args := initArgs(p, "kuma-init"); args != nil {
			setPort(&r.InboundPort, args["redirect-inbound-port"])
			setPort(&r.OutboundPort, args["redirect-outbound-port"])
			setPort(&r.ConfiguredUID, args["kuma-dp-uid"])
		}
		setPort(&r.InboundPort, p.Annotations["kuma.io/transparent-proxying-inbound-port"])
		setPort(&r.OutboundPort, p.Annotations["kuma.io/transparent-proxying-outbound-port"])
	}
	if u := runAsUser(p, c); u != nil && *u >= 0 {
		r.ConfiguredUID = uint32(*u)
	}
}

func runAsUser(p *corev1.Pod, c *corev1.Container) *int64 {
	if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
		return c.SecurityContext.RunAsUser
	}
	if p.Spec.SecurityContext != nil {
		return p.Spec.SecurityContext.RunAsUser
	}
	return nil
}

// initArgs parses the command line of the first init container with one of the given
// names into flag → value, accepting "-p 1", "--p=1" and "--p 1".
func initArgs(p *corev1.Pod, names ...string) map[string]string {
	for _, n := range names {
		for i := range p.Spec.InitContainers {
			c := &p.Spec.InitContainers[i]
			if c.Name == n {
				return parseFlags(append(append([]string{}, c.Command...), c.Args...))
			}
		}
	}
	return nil
}

func parseFlags(args []string) map[string]string {
	out := make(map[string]string)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			continue
		}
		a = strings.TrimLeft(a, "-")
		if k, v, ok := strings.Cut(a, "="); ok {
			out[k] = v
			continue
		}
		if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			out[a] = args[i+1]
			i++
			continue
		}
		out[a] = ""
	}
	return out
}

func first(vs ...string) (string, bool) {
	for _, v := range vs {
		if v != "" {
			return v, true
		}
	}
	return "", false
}

// setPort overwrites dst with the first of vs that parses as a non-zero 32-bit number.
func setPort(dst *uint32, vs ...string) {
	for _, v := range vs {
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil && n > 0 {
			*dst = uint32(n)
			return
		}
	}
}

func addrPort(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return ""
	}
	return port
}

// portList parses "80,8080" into ports; "*" (all ports) gives nil.
func portList(s string) []uint32 {
	s = strings.TrimSpace(s)
	if s == "*" {
		return nil
	}
	out := []uint32{}
	for _, f := range strings.Split(s, ",") {
		var n uint32
		setPort(&n, f)
		if n > 0 {
			out = append(out, n)
		}
	}
	return out
}

func without(ports, drop []uint32) []uint32 {
	out := ports[:0:0]
	for _, p := range ports {
		keep := true
		for _, d := range drop {
			if p == d {
				keep = false
			}
		}
		if keep {
			out = append(out, p)
		}
	}
	return out
}

// programNames returns the names a process goes by: its comm (truncated to 15 bytes by
// the kernel), the base name of argv[0], and the part of argv[0] before ':' or ' ' for
// programs that rewrite their argv ("nginx: worker process").
func programNames(p Process) []string {
	names := []string{p.Comm}
	if len(p.Cmdline) > 0 {
		a0 := p.Cmdline[0]
		names = append(names, path.Base(a0))
		if i := strings.IndexAny(a0, ": "); i > 0 {
			names = append(names, path.Base(a0[:i]))
		}
	}
	return names
}

func anyIn(names, set []string) bool {
	for _, n := range names {
		for _, s := range set {
			if n == s {
				return true
			}
		}
	}
	return false
}

// ClassifyProcesses sets each process's Role. Known proxy binaries are proxies, known
// wrappers and agents are helpers; a process known as neither is a helper when a known
// proxy was found beside it and the proxy otherwise (a stand-in proxy of unknown name).
func ClassifyProcesses(m Mesh, procs []Process) {
	prof := profiles[m]
	proxies := append(append([]string{}, prof.proxies...), genericProxies...)
	helpers := append(append([]string{}, prof.helpers...), genericHelpers...)
	known := false
	unknown := []int{}
	for i := range procs {
		names := programNames(procs[i])
		switch {
		case anyIn(names, proxies):
			procs[i].Role = RoleProxy
			known = true
		case anyIn(names, helpers):
			procs[i].Role = RoleHelper
		default:
			unknown = append(unknown, i)
		}
	}
	for _, i := range unknown {
		if known {
			procs[i].Role = RoleHelper
		} else {
			procs[i].Role = RoleProxy
		}
	}
}

// observedProxyUID is the UID most proxy processes run as, preferring non-root: an nginx
// master started as root hands traffic to workers under the proxy UID, and it is the
// workers' outbound sockets the mesh's owner match exempts.
func observedProxyUID(procs []Process) (uint32, bool) {
	count := map[uint32]int{}
	for _, p := range procs {
		if p.Role == RoleProxy {
			count[p.UID]++
		}
	}
	if len(count) == 0 {
		return 0, false
	}
	uids := make([]uint32, 0, len(count))
	for u := range count {
		uids = append(uids, u)
	}
	sort.Slice(uids, func(i, j int) bool {
		a, b := uids[i], uids[j]
		if (a == 0) != (b == 0) {
			return b == 0
		}
		if count[a] != count[b] {
			return count[a] > count[b]
		}
		return a < b
	})
	return uids[0], true
}
