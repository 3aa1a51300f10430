package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

const agentImage = "ghcr.io/kubectl-mesh/mesh-agent:dev"

// nodeStatus mirrors the rows of `kubectl mesh agent status -o json`, read the way a user's
// script would read them.
type nodeStatus struct {
	Node         string   `json:"node"`
	Pod          string   `json:"pod"`
	Ready        bool     `json:"ready"`
	Healthy      bool     `json:"healthy"`
	Version      string   `json:"version"`
	Kernel       string   `json:"kernel"`
	EBPFTier     string   `json:"ebpfTier"`
	Cgroups      string   `json:"cgroups"`
	Capabilities []string `json:"capabilities"`
	HostPID      bool     `json:"hostPID"`
	Error        string   `json:"error"`
}

func agentStatus(t *testing.T, kubeconfig string) ([]nodeStatus, result) {
	t.Helper()
	r := kubectl(t, kubeconfig, nil, "mesh", "agent", "status", "-o", "json")
	var out struct {
		Nodes []nodeStatus `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("agent status -o json is not JSON: %v\n%s", err, r)
	}
	return out.Nodes, r
}

// TestAgentLifecycle is issue 2's end-to-end path: install to N/N, status from every agent
// through the real port-forward, a dead agent, uninstall, and the bad inputs around them.
func TestAgentLifecycle(t *testing.T) {
	c := simcluster.New(t, simcluster.Options{RealNode: true, KwokNodes: 2})
	kc := c.Kubeconfig()
	allNodes := append([]string{c.RealNodeName()}, c.KwokNodeNames()...)
	slices.Sort(allNodes)

	t.Run("status before install says how to install", func(t *testing.T) {
		r := kubectl(t, kc, nil, "mesh", "agent", "status")
		if r.code == 0 || !strings.Contains(r.stderr, "kubectl mesh agent install") {
			t.Fatalf("want a non-zero exit pointing at `agent install`, got %s", r)
		}
	})

	t.Run("install without rights names the missing verb and applies nothing", func(t *testing.T) {
		r := kubectl(t, kc, nil, "mesh", "agent", "install", "--image", agentImage,
			"--as", "system:serviceaccount:default:nobody")
		if r.code == 0 || !strings.Contains(r.stderr, "create") || !strings.Contains(r.stderr, "namespaces") {
			t.Fatalf("want a non-zero exit naming the missing create on namespaces, got %s", r)
		}
		if got := kubectl(t, kc, nil, "get", "namespace", "mesh-system", "--ignore-not-found", "-o", "name"); got.stdout != "" {
			t.Fatalf("a refused install left the namespace behind: %s", got.stdout)
		}
	})

	t.Run("install waits until every agent is ready", func(t *testing.T) {
		r := kubectl(t, kc, nil, "mesh", "agent", "install", "--image", agentImage, "--timeout", "3m")
		if r.code != 0 {
			t.Fatalf("install failed: %s", r)
		}
		want := fmt.Sprintf("%d/%d agents ready", len(allNodes), len(allNodes))
		if !strings.Contains(r.stderr, want) {
			t.Fatalf("install did not report %q: %s", want, r)
		}
	})

	t.Run("dry-run output is accepted by a server-side dry run", func(t *testing.T) {
		r := kubectl(t, kc, nil, "mesh", "agent", "install", "--image", agentImage, "--dry-run=client", "-o", "yaml")
		if r.code != 0 || !strings.Contains(r.stdout, "kind: DaemonSet") {
			t.Fatalf("dry run printed no manifests: %s", r)
		}
		apply := kubectl(t, kc, []byte(r.stdout), "apply", "--server-side", "--field-manager", "kubectl-mesh",
			"--dry-run=server", "-f", "-")
		if apply.code != 0 {
			t.Fatalf("the apiserver refused the printed manifests: %s", apply)
		}
	})

	t.Run("status reaches every agent", func(t *testing.T) {
		rows, r := agentStatus(t, kc)
		if r.code != 0 {
			t.Fatalf("status failed with every agent up: %s", r)
		}
		var nodes []string
		for _, row := range rows {
			nodes = append(nodes, row.Node)
			if !row.Healthy || !row.Ready || row.Error != "" {
				t.Errorf("%s: unhealthy: %+v", row.Node, row)
			}
			if row.Kernel == "" || row.Cgroups == "" || row.EBPFTier == "" || row.Version == "" || !row.HostPID {
				t.Errorf("%s: incomplete row: %+v", row.Node, row)
			}
		}
		if !slices.Equal(nodes, allNodes) {
			t.Fatalf("status rows for %v, want %v", nodes, allNodes)
		}
		// The real node's row must come from the agent container, which holds only the
		// capabilities the DaemonSet grants; the kwok nodes' agents are root processes.
		for _, row := range rows {
			if row.Node != c.RealNodeName() {
				continue
			}
			want := []string{"BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}
			got := slices.Sorted(slices.Values(row.Capabilities))
			if !slices.Equal(got, want) {
				t.Errorf("real node's agent has capabilities %v, want the DaemonSet's %v", got, want)
			}
			if row.EBPFTier == "none" {
				t.Errorf("the agent container could not attach any eBPF tier on a kernel that allows tp_btf")
			}
		}
		table := kubectl(t, kc, nil, "mesh", "agent", "status")
		for _, col := range []string{"NODE", "AGENT POD", "READY", "VERSION", "KERNEL", "BTF", "EBPF TIER", "CGROUPS", "CAPABILITIES"} {
			if !strings.Contains(table.stdout, col) {
				t.Errorf("table lacks column %s:\n%s", col, table.stdout)
			}
		}
	})

	t.Run("version lists every agent", func(t *testing.T) {
		r := kubectl(t, kc, nil, "mesh", "version")
		if r.code != 0 {
			t.Fatalf("version failed: %s", r)
		}
		if strings.Contains(r.stderr, "warning") {
			t.Errorf("plugin and agents are built from one source, yet version warns of skew: %s", r.stderr)
		}
		for _, n := range allNodes {
			if !strings.Contains(r.stdout, n) {
				t.Errorf("version output lacks node %s", n)
			}
		}
	})

	t.Run("a dead agent is a row with its reason and a non-zero exit", func(t *testing.T) {
		dead := c.KwokNodeNames()[0]
		if err := c.StopKwokAgent(dead); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := c.StartKwokAgent(dead); err != nil {
				t.Error(err)
			}
		}()
		start := time.Now()
		rows, r := agentStatus(t, kc)
		if r.code == 0 {
			t.Fatalf("status exited 0 with a dead agent: %s", r)
		}
		if !strings.Contains(r.stderr, "unhealthy") {
			t.Errorf("no next-step line on stderr: %s", r.stderr)
		}
		if len(rows) != len(allNodes) {
			t.Fatalf("%d rows, want %d", len(rows), len(allNodes))
		}
		for _, row := range rows {
			switch {
			case row.Node == dead && (row.Healthy || row.Error == ""):
				t.Errorf("dead agent's row shows no reason: %+v", row)
			case row.Node != dead && (!row.Healthy || row.Kernel == "" || row.Cgroups == ""):
				t.Errorf("%s: a dead neighbour spoiled this row: %+v", row.Node, row)
			}
		}
		t.Logf("status with one dead agent took %s", time.Since(start))
	})

	t.Run("uninstall leaves no labelled object and no agent container", func(t *testing.T) {
		r := kubectl(t, kc, nil, "mesh", "agent", "uninstall", "--timeout", "2m")
		if r.code != 0 {
			t.Fatalf("uninstall failed: %s", r)
		}
		left := kubectl(t, kc, nil, "get", "namespaces,serviceaccounts,clusterroles,clusterrolebindings,daemonsets,pods",
			"-A", "-l", "app.kubernetes.io/managed-by=kubectl-mesh", "-o", "name")
		if strings.TrimSpace(left.stdout) != "" {
			t.Fatalf("objects left after uninstall:\n%s", left.stdout)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for {
			out, err := exec.CommandContext(ctx, "ctr", "-a", c.ContainerdSocket(), "-n", "k8s.io",
				"containers", "ls", "image=="+agentImage).CombinedOutput()
			if err != nil {
				t.Fatalf("ctr containers ls: %v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) <= 1 { // the header only
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("agent containers left on the real node:\n%s", out)
			}
			time.Sleep(time.Second)
		}
	})
}

// TestBadInput: each mistake is a precise one-line error and a non-zero exit.
func TestBadInput(t *testing.T) {
	unreachable := fmt.Sprintf("https://127.0.0.1:%d", closedPort(t))
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"mesh", "agent", "status", "--frobnicate"}, "unknown flag: --frobnicate"},
		{"malformed image", []string{"mesh", "agent", "install", "--image", "Not A/Valid::Image", "--server", unreachable}, "--image"},
		{"unreachable cluster", []string{"mesh", "agent", "status", "--server", unreachable, "--insecure-skip-tls-verify"}, "cannot reach the cluster"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := kubectl(t, "/dev/null", nil, tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want a non-zero exit mentioning %q, got %s", tc.want, r)
			}
		})
	}
}
