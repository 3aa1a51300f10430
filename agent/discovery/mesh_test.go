package discovery

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestRecognize(t *testing.T) {
	id := "containerd://" + hexID("9")
	tests := []struct {
		name      string
		opts      []podOpt
		overrides map[string]Mesh
		mesh      Mesh
		container string
		kind      ContainerKind
		native    bool
		in, out   uint32
		uid       uint32
		intercept []uint32
		appPorts  []uint32
	}{
		{name: "istio injected",
			opts: []podOpt{annotate("sidecar.istio.io/status", istioStatus), initContainer("istio-init", istioInitArgs...),
				container("app", id, 8080), container("istio-proxy", id, 15090)},
			mesh: MeshIstio, container: "istio-proxy", kind: KindRegular, in: 15006, out: 15001, uid: 1337, appPorts: []uint32{8080}},
		{name: "istio custom iptables args and include/exclude annotations",
			opts: []podOpt{annotate("sidecar.istio.io/status", istioStatus),
				annotate("traffic.sidecar.istio.io/includeInboundPorts", "80,8080,9090"),
				annotate("traffic.sidecar.istio.io/excludeInboundPorts", "9090"),
				initContainer("istio-init", "istio-iptables", "--envoy-port=16001", "--inbound-capture-port", "16006", "--proxy-uid=1500"),
				container("app", id, 80, 8080), container("istio-proxy", id)},
			mesh: MeshIstio, container: "istio-proxy", kind: KindRegular, in: 16006, out: 16001, uid: 1500,
			intercept: []uint32{80, 8080}, appPorts: []uint32{80, 8080}},
		{name: "istio native sidecar with runAsUser",
			opts: []podOpt{annotate("sidecar.istio.io/status", istioStatus), nativeSidecar("istio-proxy", id), runAs("istio-proxy", 1400),
				container("app", id, 80)},
			mesh: MeshIstio, container: "istio-proxy", kind: KindInit, native: true, in: 15006, out: 15001, uid: 1400, appPorts: []uint32{80}},
		{name: "linkerd defaults",
			opts: []podOpt{annotate("linkerd.io/proxy-version", "edge-25.1.1"), container("linkerd-proxy", id), container("app", id, 8080)},
			mesh: MeshLinkerd, container: "linkerd-proxy", kind: KindRegular, in: 4143, out: 4140, uid: 2102, appPorts: []uint32{8080}},
		{name: "linkerd ports from proxy env",
			opts: []podOpt{container("linkerd-proxy", id), env("linkerd-proxy", "LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "0.0.0.0:5143"),
				env("linkerd-proxy", "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:5140")},
			mesh: MeshLinkerd, container: "linkerd-proxy", kind: KindRegular, in: 5143, out: 5140, uid: 2102},
		{name: "kuma with annotations",
			opts: []podOpt{annotate("kuma.io/sidecar-injected", "true"), annotate("kuma.io/transparent-proxying-inbound-port", "15106"),
				container("app", id, 80), container("kuma-sidecar", id)},
			mesh: MeshKuma, container: "kuma-sidecar", kind: KindRegular, in: 15106, out: 15001, uid: 5678, appPorts: []uint32{80}},
		{name: "consul dataplane",
			opts: []podOpt{annotate("consul.hashicorp.com/connect-inject-status", "injected"), container("app", id, 9090), container("consul-dataplane", id)},
			mesh: MeshConsul, container: "consul-dataplane", kind: KindRegular, in: 20000, out: 15001, uid: 5995, appPorts: []uint32{9090}},
		{name: "osm envoy with label",
			opts: []podOpt{label("osm-proxy-uuid", "0b1f"), container("app", id, 80), container("envoy", id)},
			mesh: MeshOSM, container: "envoy", kind: KindRegular, in: 15003, out: 15001, uid: 1500, appPorts: []uint32{80}},
		{name: "nginx service mesh",
			opts: []podOpt{container("app", id, 80), container("nginx-mesh-sidecar", id)},
			mesh: MeshNGINX, container: "nginx-mesh-sidecar", kind: KindRegular, appPorts: []uint32{80}},
		{name: "override names a custom container",
			opts:      []podOpt{container("app", id, 80), container("my-proxy", id)},
			overrides: map[string]Mesh{"my-proxy": MeshKuma},
			mesh:      MeshKuma, container: "my-proxy", kind: KindRegular, in: 15006, out: 15001, uid: 5678, appPorts: []uint32{80}},
		{name: "override on an ephemeral container",
			opts:      []podOpt{container("app", id, 80), ephemeral("debug-proxy", id)},
			overrides: map[string]Mesh{"debug-proxy": MeshIstio},
			mesh:      MeshIstio, container: "debug-proxy", kind: KindEphemeral, in: 15006, out: 15001, uid: 1337, appPorts: []uint32{80}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPod("ns", "p", "u", "n1", tt.opts...)
			r, err := Recognize(p, tt.overrides)
			if err != nil {
				t.Fatal(err)
			}
			if r.Mesh != tt.mesh || r.Container != tt.container || r.Kind != tt.kind || r.Native != tt.native {
				t.Errorf("got mesh=%s container=%s kind=%s native=%v", r.Mesh, r.Container, r.Kind, r.Native)
			}
			if r.InboundPort != tt.in || r.OutboundPort != tt.out || r.ConfiguredUID != tt.uid {
				t.Errorf("got in=%d out=%d uid=%d, want %d %d %d", r.InboundPort, r.OutboundPort, r.ConfiguredUID, tt.in, tt.out, tt.uid)
			}
			if !reflect.DeepEqual(r.InboundInterceptPorts, tt.intercept) {
				t.Errorf("intercept ports %v, want %v", r.InboundInterceptPorts, tt.intercept)
			}
			var ports []uint32
			for _, ap := range r.AppPorts {
				ports = append(ports, ap.Port)
			}
			if !reflect.DeepEqual(ports, tt.appPorts) {
				t.Errorf("app ports %v, want %v", ports, tt.appPorts)
			}
		})
	}
}

func TestRecognizeNoSidecar(t *testing.T) {
	id := "containerd://" + hexID("9")
	for _, tt := range []struct {
		name   string
		opts   []podOpt
		reason string
	}{
		{"plain pod", []podOpt{container("app", id, 80)}, "no known sidecar"},
		{"a container called envoy without OSM marks", []podOpt{container("envoy", id, 10000)}, "no known sidecar"},
		{"annotated but proxy missing", []podOpt{annotate("sidecar.istio.io/status", istioStatus), container("app", id)}, "annotated for istio"},
		// An ordinary init container has exited before the pod runs.
		{"non-native init container", []podOpt{initContainer("istio-proxy"), container("app", id)}, "no known sidecar"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Recognize(newPod("ns", "p", "u", "n1", tt.opts...), nil)
			if !errors.Is(err, ErrNoSidecar) || !strings.Contains(err.Error(), tt.reason) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestParseSidecarFlag(t *testing.T) {
	name, m, err := ParseSidecarFlag("my-proxy=Istio")
	if err != nil || name != "my-proxy" || m != MeshIstio {
		t.Fatalf("got %q %q %v", name, m, err)
	}
	for _, bad := range []string{"my-proxy", "=istio", "x=cilium"} {
		if _, _, err := ParseSidecarFlag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestClassifyProcesses(t *testing.T) {
	proc := func(comm string, uid uint32, argv ...string) Process {
		return Process{Comm: comm, UID: uid, Cmdline: argv}
	}
	tests := []struct {
		name  string
		mesh  Mesh
		procs []Process
		roles []Role
		uid   uint32
	}{
		{"istio envoy vs pilot-agent", MeshIstio,
			[]Process{proc("pilot-agent", 1337, "/usr/local/bin/pilot-agent", "proxy", "sidecar"), proc("envoy", 1337, "/usr/local/bin/envoy", "-c", "x")},
			[]Role{RoleHelper, RoleProxy}, 1337},
		{"linkerd proxy vs identity (comm truncated)", MeshLinkerd,
			[]Process{proc("linkerd2-proxy-", 2102, "/usr/lib/linkerd/linkerd2-proxy-identity"), proc("linkerd2-proxy", 2102, "/usr/lib/linkerd/linkerd2-proxy")},
			[]Role{RoleHelper, RoleProxy}, 2102},
		{"nginx master as root and workers as the proxy UID", MeshNGINX,
			[]Process{proc("nginx", 0, "nginx: master process nginx"), proc("nginx", 1337, "nginx: worker process"), proc("nginx", 1337, "nginx: worker process")},
			[]Role{RoleProxy, RoleProxy, RoleProxy}, 1337},
		{"kuma-dp, envoy and coredns", MeshKuma,
			[]Process{proc("kuma-dp", 5678, "kuma-dp", "run"), proc("envoy", 5678, "/usr/bin/envoy"), proc("coredns", 5678, "/usr/bin/coredns")},
			[]Role{RoleHelper, RoleProxy, RoleHelper}, 5678},
		{"unknown stand-in proxy behind a shell", MeshIstio,
			[]Process{proc("sh", 0, "/bin/sh", "-c", "exec delayproxy"), proc("delayproxy", 1337, "/usr/local/bin/delayproxy")},
			[]Role{RoleHelper, RoleProxy}, 1337},
		{"unknown process beside a known proxy", MeshConsul,
			[]Process{proc("consul-dataplan", 5995, "consul-dataplane"), proc("envoy", 5995, "envoy"), proc("promtail", 0, "promtail")},
			[]Role{RoleHelper, RoleProxy, RoleHelper}, 5995},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ClassifyProcesses(tt.mesh, tt.procs)
			for i, p := range tt.procs {
				if p.Role != tt.roles[i] {
					t.Errorf("%s (%v): role %s, want %s", p.Comm, p.Cmdline, p.Role, tt.roles[i])
				}
			}
			if u, ok := observedProxyUID(tt.procs); !ok || u != tt.uid {
				t.Errorf("proxy uid %d, %v; want %d", u, ok, tt.uid)
			}
		})
	}
}
