package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/smp"
	"github.com/kubectl-mesh/kubectl-mesh/test/chromium"
	"github.com/kubectl-mesh/kubectl-mesh/test/meshpods"
	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestMeshStatusOverheadAndPerf is issue 4's end-to-end path on the demo's cluster: two
// meshed nodes (real pods on the real node, stand-in pods on a kwok node) and an unmeshed
// one, through the real binary.
func TestMeshStatusOverheadAndPerf(t *testing.T) {
	c := simcluster.New(t, simcluster.Options{RealNode: true, KwokNodes: 2})
	kc := c.Kubeconfig()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w, err := meshpods.DeployDemo(ctx, c, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	meshedNode := c.KwokNodeNames()[0]
	meshed := []string{c.RealNodeName(), meshedNode}
	slices.Sort(meshed)
	if r := kubectl(t, kc, nil, "mesh", "agent", "install", "--image", agentImage, "--timeout", "3m"); r.code != 0 {
		t.Fatalf("install: %s", r)
	}
	// Runs are stored under the XDG data directory; keep them in the test's own.
	dataHome := t.TempDir()
	mesh := func(t *testing.T, args ...string) result {
		t.Helper()
		return kubectlEnv(t, kc, []string{"XDG_DATA_HOME=" + dataHome}, append([]string{"mesh"}, args...)...)
	}
	ns := meshpods.DemoNamespace
	target := "deploy/" + meshpods.DemoName

	t.Run("status finds the Istio-shaped mesh with its version", func(t *testing.T) {
		r := mesh(t, "status", "-o", "json")
		var rep struct {
			Meshes []struct {
				Name, Version, Namespace string
				DataPlane                []struct {
					Namespace string
					Sidecars  int
				}
			}
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil || len(rep.Meshes) != 1 {
			t.Fatalf("status: %s", r)
		}
		m := rep.Meshes[0]
		if m.Name != "istio" || m.Version != meshpods.DemoIstioVersion || m.Namespace != meshpods.IstioNamespace {
			t.Errorf("mesh %+v, want istio %s in %s", m, meshpods.DemoIstioVersion, meshpods.IstioNamespace)
		}
		if i := slices.IndexFunc(m.DataPlane, func(d struct {
			Namespace string
			Sidecars  int
		}) bool {
			return d.Namespace == ns
		}); i < 0 || m.DataPlane[i].Sidecars != 2 {
			t.Errorf("data plane %+v, want 2 sidecars in %s", m.DataPlane, ns)
		}
		if table := mesh(t, "status"); table.code != 0 || !strings.Contains(table.stdout, "Istio") || !strings.Contains(table.stdout, meshpods.DemoIstioVersion) {
			t.Errorf("status table: %s", table)
		}
	})

	t.Run("overhead shows the two meshed nodes and the unmeshed one", func(t *testing.T) {
		r := mesh(t, "overhead", "-o", "json", "--window", "1s")
		var rep struct {
			Nodes []struct {
				Node                  string
				Meshes                []string
				Sidecars              int
				CPUMillicores         float64
				MemoryWorkingSetBytes uint64
				Error                 string
			}
			Total struct{ Sidecars int }
		}
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &rep) != nil {
			t.Fatalf("overhead: %s", r)
		}
		if len(rep.Nodes) != 3 || rep.Total.Sidecars != 2 {
			t.Fatalf("overhead nodes %+v total %+v", rep.Nodes, rep.Total)
		}
		for _, n := range rep.Nodes {
			want := 0
			if slices.Contains(meshed, n.Node) {
				want = 1
			}
			if n.Error != "" || n.Sidecars != want {
				t.Errorf("%s: %+v, want %d sidecars", n.Node, n, want)
			}
			if want == 1 && (!slices.Equal(n.Meshes, []string{"istio"}) || n.MemoryWorkingSetBytes == 0) {
				t.Errorf("%s: meshed node without figures: %+v", n.Node, n)
			}
		}
		table := mesh(t, "overhead", "--window", "500ms")
		if table.code != 0 || !strings.Contains(table.stdout, "% OF NODE CPU") || !strings.Contains(table.stdout, "TOTAL") {
			t.Errorf("overhead table: %s", table)
		}
		pods := mesh(t, "overhead", "--pods", "-n", ns, "--window", "500ms")
		if pods.code != 0 || strings.Count(pods.stdout, meshpods.DemoName+"-") != 2 {
			t.Errorf("overhead --pods: %s", pods)
		}
	})

	outDir := t.TempDir()
	var firstID string
	t.Run("perf run measures both meshed nodes and writes SMP documents that read back", func(t *testing.T) {
		r := mesh(t, "perf", "run", target, "-n", ns, "--rate", "500", "--duration", "10s", "--warmup", "1s", "-o", "json", "--out", outDir)
		if r.code != 0 {
			t.Fatalf("perf run: %s", r)
		}
		run, err := perfrun.Unmarshal([]byte(r.stdout))
		if err != nil {
			t.Fatalf("perf run -o json: %v", err)
		}
		firstID = run.GetId()
		nodes, total := perfrun.Summarize(run)
		var got []string
		for _, n := range nodes {
			got = append(got, n.Node)
			d, ok := n.ABDelta(0.5)
			if n.Failed || !ok || d.Value <= 0 {
				t.Errorf("%s: failed %v, A/B p50 %v (measured %v); problems %q", n.Node, n.Failed, d.Value, ok, n.Problems)
			}
			if n.SidecarCPU <= 0 || n.CPUPer1kRPS <= 0 {
				t.Errorf("%s: sidecar CPU %v, per 1k req/s %v", n.Node, n.SidecarCPU, n.CPUPer1kRPS)
			}
		}
		if !slices.Equal(got, meshed) {
			t.Errorf("nodes %v, want %v", got, meshed)
		}
		if d, ok := total.ABDelta(0.5); !ok || d.Value <= 0 || run.GetMesh().GetVersion() != meshpods.DemoIstioVersion {
			t.Errorf("whole run: A/B p50 %v, mesh %v", d, run.GetMesh())
		}
		docs, err := smp.ReadDir(outDir, run.GetId())
		if err != nil {
			t.Fatalf("SMP documents do not read back: %v", err)
		}
		if got := docs.Mesh.GetSidecar().GetCount(); got != 2 {
			t.Errorf("SMP sidecar count %d, want 2", got)
		}
		yml := mesh(t, "perf", "show", firstID[:8], "-o", "smp-yaml")
		if _, err := smp.Read([]byte(yml.stdout)); yml.code != 0 || err != nil {
			t.Errorf("perf show -o smp-yaml does not read back (%v): %s", err, yml)
		}
	})

	t.Run("bad input gets a precise error", func(t *testing.T) {
		foreign := filepath.Join(t.TempDir(), "foreign.json")
		if err := os.WriteFile(foreign, []byte(`{"apiVersion": "v1", "kind": "ConfigMap"}`), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"perf", "run", "deploy/nope", "-n", ns}, `deployment "nope" not found`},
			{[]string{"perf", "run", "-l", "app=nothing", "-n", ns}, "matches no pods"},
			{[]string{"perf", "run", target, "-n", ns, "--port", "9999"}, "port 9999 is not exposed"},
			{[]string{"perf", "run", "deploy/istiod", "-n", meshpods.IstioNamespace, "--port", "15010"}, "is not meshed"},
			{[]string{"perf", "run", target, "-n", ns, "--rate", "1e9"}, "rate"},
			{[]string{"perf", "run", target, "-n", ns, "--duration", "3h"}, "duration"},
			{[]string{"perf", "run", target, "-n", ns, "--protocol", "quic"}, "invalid --protocol"},
			{[]string{"perf", "show", foreign}, "not a kubectl-mesh run"},
			{[]string{"perf", "compare", firstID, filepath.Join(t.TempDir(), "missing.json")}, "no such file"},
			{[]string{"overhead", "--window", "1h"}, "invalid --window"},
		} {
			r := mesh(t, tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("%v: want a non-zero exit saying %q, got %s", tc.args, tc.want, r)
			}
		}
	})

	t.Run("a dead agent mid-run gives a partial report naming the node", func(t *testing.T) {
		cmd, stderr := startMesh(t, kc, dataHome, "perf", "run", target, "-n", ns, "--rate", "200", "--duration", "8s", "--warmup", "1s", "-o", "json")
		// The node's agent is killed while it sends load.
		waitFor(t, stderr, regexp.MustCompile(regexp.QuoteMeta(meshedNode)+` [1-9][0-9]* req/s`), 30*time.Second)
		if err := c.StopKwokAgent(meshedNode); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := c.StartKwokAgent(meshedNode); err != nil {
				t.Error(err)
			}
		}()
		code, stdout := wait(t, cmd)
		t.Logf("stderr:\n%s", stderr)
		if code == 0 || !strings.Contains(stderr.String(), meshedNode) {
			t.Fatalf("exit %d with a dead agent; stderr:\n%s", code, stderr)
		}
		run, err := perfrun.Unmarshal(stdout)
		if err != nil {
			t.Fatalf("no partial run printed: %v\nstderr:\n%s", err, stderr)
		}
		for _, n := range run.GetNodes() {
			switch {
			case n.GetNode() == meshedNode && n.GetError() == "":
				t.Errorf("%s: the dead agent's node has no error", n.GetNode())
			case n.GetNode() != meshedNode && (n.GetError() != "" || len(n.GetResult().GetPods()) == 0):
				t.Errorf("%s: the live node lost its result: %v", n.GetNode(), n.GetError())
			}
		}
	})
	if t.Failed() {
		return
	}
	waitAgentsHealthy(t, kc)

	t.Run("Ctrl-C stops the load on every node within 2 s and saves the run", func(t *testing.T) {
		cmd, stderr := startMesh(t, kc, dataHome, "perf", "run", target, "-n", ns, "--rate", "200", "--duration", "60s", "--warmup", "1s", "-o", "json")
		waitFor(t, stderr, regexp.MustCompile(`elapsed [3-9]s`), 60*time.Second)
		if err := cmd.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		interrupted := time.Now()
		code, stdout := wait(t, cmd)
		// After 2 s the apps must have stopped counting: two reads a second apart differ
		// only by the reads themselves.
		time.Sleep(time.Until(interrupted.Add(2 * time.Second)))
		for _, p := range w.Pods() {
			a, err := p.AppRequests(ctx)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second)
			b, err := p.AppRequests(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if b-a > 1 {
				t.Errorf("%s on %s served %d requests between 2 s and 3 s after Ctrl-C", p.Name, p.Node, b-a-1)
			}
		}
		run, err := perfrun.Unmarshal(stdout)
		if err != nil || !run.GetInterrupted() || code == 0 {
			t.Fatalf("exit %d, run %v (%v); stderr:\n%s", code, run.GetId(), err, stderr)
		}
		if _, total := perfrun.Summarize(run); total.Requests == 0 {
			t.Errorf("the interrupted run kept no figures: %+v", total)
		}
	})

	t.Run("perf compare and the HTML report in Chromium", func(t *testing.T) {
		list := mesh(t, "perf", "list")
		if list.code != 0 || strings.Count(list.stdout, "\n") < 4 {
			t.Fatalf("perf list: %s", list)
		}
		second := mesh(t, "perf", "run", target, "-n", ns, "--rate", "300", "--duration", "5s", "--warmup", "1s", "-o", "json", "--store", "cluster")
		run, err := perfrun.Unmarshal([]byte(second.stdout))
		if second.code != 0 || err != nil {
			t.Fatalf("second run: %v %s", err, second)
		}
		// Kept in the cluster too: a teammate with an empty store finds it there.
		teammate := kubectlEnv(t, kc, []string{"XDG_DATA_HOME=" + t.TempDir()}, "mesh", "perf", "show", run.GetId()[:8], "--store", "cluster", "-o", "json")
		if back, err := perfrun.Unmarshal([]byte(teammate.stdout)); err != nil || back.GetId() != run.GetId() {
			t.Fatalf("the run is not in the cluster store (%v): %s", err, teammate)
		}
		cmp := mesh(t, "perf", "compare", firstID, run.GetId())
		if cmp.code != 0 || !strings.Contains(cmp.stdout, "added_p50") || !strings.Contains(cmp.stdout, "significant") {
			t.Fatalf("perf compare: %s", cmp)
		}
		for _, n := range meshed {
			if !strings.Contains(cmp.stdout, n) {
				t.Errorf("perf compare has no rows for %s", n)
			}
		}
		html := mesh(t, "perf", "export", run.GetId()[:6], "--format", "html")
		if html.code != 0 {
			t.Fatalf("export html: %s", html)
		}
		page := filepath.Join(t.TempDir(), "report.html")
		if err := os.WriteFile(page, []byte(html.stdout), 0o644); err != nil {
			t.Fatal(err)
		}
		shot := chromium.Render(t, page)
		for _, n := range meshed {
			if !strings.Contains(shot.DOM, n) {
				t.Errorf("the rendered report does not name node %s", n)
			}
		}
		if shot.SVGs < 3 || shot.InkFraction < 0.02 {
			t.Errorf("the report rendered %d charts with %.1f%% ink", shot.SVGs, shot.InkFraction*100)
		}
	})
}

// kubectlEnv is kubectl with extra environment variables.
func kubectlEnv(t *testing.T, kubeconfig string, env []string, args ...string) result {
	t.Helper()
	return kubectlWith(t, kubeconfig, env, nil, args...)
}

// lockedBuffer collects a running command's output for a test that reads it meanwhile.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startMesh starts kubectl-mesh itself (not through kubectl, so that a signal reaches it
// directly, as Ctrl-C on a terminal reaches the whole foreground process group).
func startMesh(t *testing.T, kubeconfig, dataHome string, args ...string) (*runningCmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "kubectl-mesh"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "XDG_DATA_HOME="+dataHome)
	rc := &runningCmd{cmd: cmd}
	stderr := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = &rc.stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	t.Logf("$ kubectl-mesh %s (started, pid %d)", strings.Join(args, " "), cmd.Process.Pid)
	return rc, stderr
}

type runningCmd struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
}

// wait ends the command and returns its exit code and stdout.
func wait(t *testing.T, r *runningCmd) (int, []byte) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		_ = r.cmd.Process.Kill()
		<-done
		t.Fatal("kubectl-mesh did not end within 3 minutes")
	}
	return r.cmd.ProcessState.ExitCode(), r.stdout.Bytes()
}

// waitFor waits until the output matches re.
func waitFor(t *testing.T, out *lockedBuffer, re *regexp.Regexp, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(out.String()))
		for sc.Scan() {
			if re.MatchString(sc.Text()) {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no %q in the output after %s:\n%s", re, timeout, out)
}

// waitAgentsHealthy waits until every agent answers again (after one was restarted).
func waitAgentsHealthy(t *testing.T, kubeconfig string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		r := kubectl(t, kubeconfig, nil, "mesh", "agent", "status")
		if r.code == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents still unhealthy: %s", r)
		}
		time.Sleep(2 * time.Second)
	}
}
