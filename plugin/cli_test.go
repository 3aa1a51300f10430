package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/version"
)

// deadAPIServer is a loopback port nothing listens on (port 1 needs root to bind, and no
// test binds it), so a command that gets past validation fails fast instead of reaching a
// real cluster.
const deadAPIServer = "https://127.0.0.1:1"

// TestMain points the kubeconfig at deadAPIServer.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kubectl-mesh-test")
	if err != nil {
		panic(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters:
- name: dead
  cluster:
    server: `+deadAPIServer+`
contexts:
- name: dead
  context:
    cluster: dead
    user: nobody
current-context: dead
users:
- name: nobody
  user:
    token: not-a-token
`), 0o600); err != nil {
		panic(err)
	}
	os.Setenv("KUBECONFIG", kubeconfig)
	os.Setenv("HOME", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestFlagValidation(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"agent", "install", "--image", "Bad/Image:v1"}, "invalid --image"},
		{[]string{"agent", "install", "--image", "ghcr.io/a/b:bad tag"}, "tag"},
		{[]string{"agent", "install", "--image", "ghcr.io/a/b@sha256:12"}, "digest"},
		{[]string{"agent", "install", "--node-selector", "pool"}, "invalid --node-selector"},
		{[]string{"agent", "install", "--node-selector", "pool in (a)"}, "key=value"},
		{[]string{"agent", "install", "--node-selector", "a=b,a=c"}, "twice"},
		{[]string{"agent", "install", "-o", "yaml"}, "-o only applies with --dry-run"},
		{[]string{"agent", "install", "--dry-run=client"}, "--dry-run=client needs -o yaml"},
		{[]string{"agent", "install", "--dry-run"}, "--dry-run=client needs -o yaml"},
		{[]string{"agent", "install", "--dry-run=client", "-o", "xml"}, `invalid --output "xml"`},
		{[]string{"agent", "install", "--dry-run=maybe", "-o", "yaml"}, `invalid --dry-run "maybe"`},
		{[]string{"agent", "install", "-n", "Not_A_Namespace"}, "invalid -n"},
		{[]string{"agent", "install", "--timeout", "0s"}, "invalid --timeout"},
		{[]string{"agent", "install", "--timeout", "soon"}, `invalid argument "soon" for "--timeout"`},
		{[]string{"agent", "uninstall", "--cascade", "orphan"}, `invalid --cascade "orphan"`},
		{[]string{"agent", "status", "-o", "xml"}, `invalid --output "xml"`},
		{[]string{"agent", "status", "--concurrency", "0"}, "invalid --concurrency"},
		{[]string{"agent", "status", "--node-selector", "a in (b"}, "invalid --node-selector"},
		{[]string{"agent", "status", "--timeout", "-1s"}, "invalid --timeout"},
		{[]string{"version", "-o", "table"}, `invalid --output "table"`},
		{[]string{"agent", "install", "extra-arg"}, "unknown command"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := runCLI(t, tc.args...)
			if code != exitFailure {
				t.Errorf("exit %d, want %d", code, exitFailure)
			}
			if out != "" {
				t.Errorf("stdout %q, want nothing", out)
			}
			if !strings.HasPrefix(errOut, "error: ") || !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q, want an error mentioning %q", errOut, tc.want)
			}
			if strings.Contains(errOut, "cannot reach") {
				t.Errorf("validation reached the cluster setup: %q", errOut)
			}
		})
	}
}

func TestUnknownFlagAndCommand(t *testing.T) {
	code, _, errOut := runCLI(t, "agent", "install", "--imgae", "x")
	if code != exitFailure || !strings.Contains(errOut, "unknown flag: --imgae") || !strings.Contains(errOut, "See 'kubectl mesh agent install --help' for usage.") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "agnet")
	if code != exitFailure || !strings.Contains(errOut, `unknown command "agnet" for "kubectl mesh"`) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = runCLI(t, "agent", "instal")
	if code != exitFailure || !strings.Contains(errOut, `unknown command "instal" for "kubectl mesh agent"`) || !strings.Contains(errOut, `"install"`) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestHelpUsesKubectlName(t *testing.T) {
	code, out, _ := runCLI(t, "agent", "install", "--help")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"kubectl mesh agent install [flags]", "kubectl mesh agent install --dry-run=client -o yaml", "--node-selector", "--kubeconfig"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCLI(t)
	if code != exitOK || !strings.Contains(out, "kubectl mesh [command]") {
		t.Errorf("bare invocation: exit %d\n%s", code, out)
	}
}

func TestDryRunClientPrintsManifests(t *testing.T) {
	code, out, errOut := runCLI(t, "agent", "install", "--dry-run=client", "-o", "yaml",
		"--image", "ghcr.io/kubectl-mesh/mesh-agent:dev", "-n", "perf", "--node-selector", "pool=perf")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	objs, err := manifests.Render(manifests.Options{Image: "ghcr.io/kubectl-mesh/mesh-agent:dev", Namespace: "perf", NodeSelector: map[string]string{"pool": "perf"}})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := manifests.YAML(objs)
	if out != string(want) {
		t.Errorf("stdout differs from the rendered manifests:\n%s", out)
	}
	if errOut != "" {
		t.Errorf("stderr %q", errOut)
	}

	code, out, errOut = runCLI(t, "agent", "install", "--dry-run=client", "-o", "json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var list struct {
		Kind  string
		Items []map[string]any
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || list.Kind != "List" || len(list.Items) != 5 {
		t.Errorf("json: %v kind %q items %d", err, list.Kind, len(list.Items))
	}
	if !strings.Contains(out, manifests.DefaultImage()) {
		t.Errorf("default image %s missing", manifests.DefaultImage())
	}
}

func TestUnreachableClusterIsOneLine(t *testing.T) {
	for _, args := range [][]string{{"agent", "status"}, {"agent", "install"}, {"agent", "uninstall"}, {"version"}} {
		code, out, errOut := runCLI(t, args...)
		if code != exitFailure {
			t.Errorf("%v: exit %d", args, code)
		}
		if strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "error: cannot reach the cluster at "+deadAPIServer+": ") || !strings.Contains(errOut, "connection refused") {
			t.Errorf("%v: stderr %q", args, errOut)
		}
		if args[0] == "version" {
			if out != "Client Version: "+version.Version+"\n" {
				t.Errorf("version must print the client version before failing; stdout %q", out)
			}
		} else if out != "" {
			t.Errorf("%v: stdout %q", args, out)
		}
	}
}

func TestVersionClient(t *testing.T) {
	code, out, errOut := runCLI(t, "version", "--client")
	if code != exitOK || out != "Client Version: "+version.Version+"\n" || errOut != "" {
		t.Errorf("exit %d stdout %q stderr %q", code, out, errOut)
	}
	code, out, _ = runCLI(t, "version", "--client", "-o", "json")
	var r VersionReport
	if code != exitOK || json.Unmarshal([]byte(out), &r) != nil || r.ClientVersion != version.Version || r.Agents != nil {
		t.Errorf("exit %d stdout %q", code, out)
	}
}

func TestCompletion(t *testing.T) {
	code, out, _ := runCLI(t, "__complete", "agent", "status", "-o", "")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"table\n", "wide\n", "json\n", "yaml\n", ":4\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("completion of -o lacks %q:\n%s", want, out)
		}
	}
	_, out, _ = runCLI(t, "__complete", "agent", "install", "--dry-run=")
	if !strings.Contains(out, "client\n") || !strings.Contains(out, "server\n") {
		t.Errorf("--dry-run completion:\n%s", out)
	}
	_, out, _ = runCLI(t, "__complete", "agent", "")
	for _, want := range []string{"install", "uninstall", "status"} {
		if !strings.Contains(out, want) {
			t.Errorf("subcommand completion lacks %q:\n%s", want, out)
		}
	}
	// Without a cluster, namespace completion offers nothing rather than file names.
	_, out, _ = runCLI(t, "__complete", "agent", "status", "-n", "")
	if !strings.HasSuffix(strings.TrimSpace(out), ":4") {
		t.Errorf("-n completion:\n%s", out)
	}
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		code, out, _ := runCLI(t, "completion", shell)
		if code != exitOK || !strings.Contains(out, "kubectl-mesh") {
			t.Errorf("completion %s: exit %d, %d bytes", shell, code, len(out))
		}
	}
}

func TestCompletionShim(t *testing.T) {
	fi, err := os.Stat("kubectl_complete-mesh")
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&0o111 == 0 {
		t.Error("kubectl_complete-mesh must be executable: kubectl only runs executables from PATH")
	}
	b, _ := os.ReadFile("kubectl_complete-mesh")
	if !strings.HasPrefix(string(b), "#!") || !strings.Contains(string(b), `kubectl mesh __complete "$@"`) {
		t.Errorf("shim:\n%s", b)
	}
}
