package manifests

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestRenderGolden(t *testing.T) {
	cases := []struct {
		name string
		opts Options
	}{
		{"default", Options{Image: "ghcr.io/kubectl-mesh/mesh-agent:v1.2.3"}},
		{"custom", Options{
			Image:        "registry.example:5000/team/mesh-agent@sha256:" + strings.Repeat("ab", 32),
			Namespace:    "perf",
			NodeSelector: map[string]string{"mesh.example/measure": "true", "kubernetes.io/os": "linux"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Render(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			got, err := YAML(objs)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.name+".golden.yaml")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./manifests -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Errorf("rendered manifests differ from %s; run go test ./manifests -update and review the diff\n--- got ---\n%s", path, got)
			}
		})
	}
}

// The fixed names in embed.go and the YAML must agree, and every object must decode into its
// typed form without unknown fields, or the API server would drop or refuse them.
func TestManifestsMatchConventions(t *testing.T) {
	objs, err := Render(Options{Image: "example.com/ab:c", Namespace: "ns1", NodeSelector: map[string]string{"pool": "perf"}})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, u := range objs {
		kinds = append(kinds, u.GetKind())
		for k, v := range map[string]string{LabelName: AgentName, LabelManagedBy: "kubectl-mesh", LabelPartOf: "kubectl-mesh"} {
			if u.GetLabels()[k] != v {
				t.Errorf("%s/%s: label %s=%q, want %q", u.GetKind(), u.GetName(), k, u.GetLabels()[k], v)
			}
		}
	}
	if want := []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"}; !slices.Equal(kinds, want) {
		t.Fatalf("kinds %v, want %v in apply order", kinds, want)
	}

	var ns corev1.Namespace
	strictConvert(t, objs[0], &ns)
	if ns.Name != "ns1" || ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace %s labels %v", ns.Name, ns.Labels)
	}
	var sa corev1.ServiceAccount
	strictConvert(t, objs[1], &sa)
	if sa.Name != AgentName || sa.Namespace != "ns1" {
		t.Errorf("service account %s/%s", sa.Namespace, sa.Name)
	}
	var role rbacv1.ClusterRole
	strictConvert(t, objs[2], &role)
	for _, r := range role.Rules {
		for _, v := range r.Verbs {
			if v != "get" && v != "list" && v != "watch" {
				t.Errorf("ClusterRole grants %q; the agent only reads", v)
			}
		}
	}
	var crb rbacv1.ClusterRoleBinding
	strictConvert(t, objs[3], &crb)
	if crb.Subjects[0].Namespace != "ns1" || crb.RoleRef.Name != role.Name {
		t.Errorf("binding %+v", crb)
	}

	var ds appsv1.DaemonSet
	strictConvert(t, objs[4], &ds)
	if ds.Name != AgentName || ds.Namespace != "ns1" {
		t.Errorf("daemonset %s/%s", ds.Namespace, ds.Name)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostPID || pod.HostNetwork || pod.ServiceAccountName != sa.Name {
		t.Errorf("hostPID %v hostNetwork %v serviceAccount %q", pod.HostPID, pod.HostNetwork, pod.ServiceAccountName)
	}
	if pod.NodeSelector["pool"] != "perf" || pod.NodeSelector["kubernetes.io/os"] != "linux" {
		t.Errorf("nodeSelector %v", pod.NodeSelector)
	}
	if ds.Spec.Template.Labels[LabelName] != AgentName || ds.Spec.Selector.MatchLabels[LabelName] != AgentName {
		t.Errorf("pods must be found by %s", AgentPodSelector)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists || pod.Tolerations[0].Key != "" {
		t.Errorf("tolerations %+v, want one Exists toleration for every taint", pod.Tolerations)
	}
	if len(pod.Containers) != 1 || pod.Containers[0].Name != ContainerName {
		t.Fatalf("containers %+v", pod.Containers)
	}
	c := pod.Containers[0]
	if c.Image != "example.com/ab:c" {
		t.Errorf("image %q", c.Image)
	}
	if !slices.Equal(c.Args, []string{"--listen", "127.0.0.1:9460"}) {
		t.Errorf("args %v", c.Args)
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "grpc" || c.Ports[0].ContainerPort != GRPCPort {
		t.Errorf("ports %+v", c.Ports)
	}
	if len(c.Env) != 1 || c.Env[0].Name != "NODE_NAME" || c.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("env %+v", c.Env)
	}
	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		if p == nil || p.Exec == nil || !slices.Equal(p.Exec.Command, []string{"/mesh-agent", "probe", "--addr", "127.0.0.1:9460"}) {
			t.Errorf("probe %+v", p)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext.capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("drop %v", sc.Capabilities.Drop)
	}
	if want := []corev1.Capability{"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_ADMIN"}; !slices.Equal(sc.Capabilities.Add, want) {
		t.Errorf("add %v, want %v", sc.Capabilities.Add, want)
	}
	// runc on some hosts fails to start a container adding SYS_RESOURCE.
	for _, bad := range []corev1.Capability{"SYS_RESOURCE", "CAP_SYS_RESOURCE"} {
		if slices.Contains(sc.Capabilities.Add, bad) {
			t.Errorf("capability %s must not be added", bad)
		}
	}
	// The API server rejects allowPrivilegeEscalation=false together with SYS_ADMIN.
	if sc.AllowPrivilegeEscalation == nil || !*sc.AllowPrivilegeEscalation || sc.Privileged == nil || *sc.Privileged {
		t.Error("want allowPrivilegeEscalation=true (required with SYS_ADMIN) and privileged=false")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("want readOnlyRootFilesystem")
	}
	if c.Resources.Requests.Cpu().String() != "50m" || c.Resources.Requests.Memory().String() != "64Mi" ||
		c.Resources.Limits.Cpu().String() != "500m" || c.Resources.Limits.Memory().String() != "256Mi" {
		t.Errorf("resources %+v", c.Resources)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		if !m.ReadOnly {
			t.Errorf("mount %s is writable", m.MountPath)
		}
		mounts[m.Name] = m.MountPath
	}
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath == nil {
			t.Errorf("volume %s is not a hostPath", v.Name)
			continue
		}
		hostPaths[mounts[v.Name]] = v.HostPath.Path
	}
	for in, host := range map[string]string{"/host/proc": "/proc", "/sys/fs/cgroup": "/sys/fs/cgroup", "/sys/kernel/tracing": "/sys/kernel/tracing"} {
		if hostPaths[in] != host {
			t.Errorf("mount %s comes from %q, want host %s", in, hostPaths[in], host)
		}
	}
}

func strictConvert(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, into, true); err != nil {
		t.Fatalf("%s/%s: %v", u.GetKind(), u.GetName(), err)
	}
}

func TestRenderDefaults(t *testing.T) {
	objs, err := Render(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if objs[0].GetName() != DefaultNamespace {
		t.Errorf("namespace %q", objs[0].GetName())
	}
	img, _, _ := unstructured.NestedSlice(objs[4].Object, "spec", "template", "spec", "containers")
	if got := img[0].(map[string]any)["image"]; got != DefaultImage() {
		t.Errorf("image %v, want %s", got, DefaultImage())
	}
	// Rendering must not change the embedded objects seen by the next caller.
	again, _ := Render(Options{Namespace: "other", Image: "x/y:z"})
	if again[0].GetName() != "other" || objs[0].GetName() != DefaultNamespace {
		t.Error("renders share state")
	}
}

func TestValidateImage(t *testing.T) {
	good := []string{
		"ghcr.io/kubectl-mesh/mesh-agent:dev",
		"mesh-agent",
		"localhost:5000/mesh-agent:v1",
		"ghcr.io/a/b@sha256:" + strings.Repeat("0", 64),
		"ghcr.io/a/b:v1@sha256:" + strings.Repeat("0", 64),
	}
	for _, s := range good {
		if err := ValidateImage(s); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
	bad := map[string]string{
		"":                          "empty",
		"Ghcr.io/UPPER/case:v1":     "repository",
		"ghcr.io/a/b:bad tag":       "tag",
		"ghcr.io/a/b@sha256:1234":   "digest",
		"ghcr.io/a/b:":              "tag",
		" ghcr.io/a/b:v1":           "spaces",
		"ghcr.io/a/b:" + "x/y":      "repository",
		"ghcr.io/a/b:" + "t" + "\n": "spaces",
		"ghcr.io/a/b@md5:" + "00aa": "digest",
		"ghcr.io//b:v1":             "repository",
		"ghcr.io/a/b:" + "-leading": "tag",
	}
	for s, want := range bad {
		err := ValidateImage(s)
		if err == nil {
			t.Errorf("%q accepted", s)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %q does not mention %q", s, err, want)
		}
	}
}

func TestParseNodeSelector(t *testing.T) {
	got, err := ParseNodeSelector("a=b, example.com/pool=perf")
	if err != nil || len(got) != 2 || got["a"] != "b" || got["example.com/pool"] != "perf" {
		t.Fatalf("%v %v", got, err)
	}
	if got, err := ParseNodeSelector(""); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v %v", got, err)
	}
	bad := map[string]string{
		"a":                            "key=value",
		"a!=b":                         "key=value",
		"a==b":                         "key=value",
		"a=b,a=c":                      "twice",
		"-a=b":                         "label key",
		"a=b c":                        "label value",
		"a=b,":                         "key=value",
		"a in (b)":                     "key=value",
		"x/y/z=1":                      "label key",
		"a=" + strings.Repeat("v", 64): "label value",
	}
	for s, want := range bad {
		_, err := ParseNodeSelector(s)
		if err == nil {
			t.Errorf("%q accepted", s)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %q does not mention %q", s, err, want)
		}
	}
}

func TestRenderRejectsBadOptions(t *testing.T) {
	for _, o := range []Options{
		{Namespace: "Bad_NS"},
		{Image: "UPPER/x"},
		{NodeSelector: map[string]string{"a": "b c"}},
	} {
		if _, err := Render(o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

func TestKinds(t *testing.T) {
	kinds, err := Kinds()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range kinds {
		names = append(names, k.GroupKind().String())
	}
	want := []string{"Namespace", "ServiceAccount", "ClusterRole.rbac.authorization.k8s.io", "ClusterRoleBinding.rbac.authorization.k8s.io", "DaemonSet.apps"}
	if !slices.Equal(names, want) {
		t.Errorf("%v, want %v", names, want)
	}
}
