package simcluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCommandStartStop drives the simcluster command the way `make demo` does: start in the
// background, use the cluster with kubectl, stop. It also kills the supervisor outright and
// checks that `stop` still removes everything from the recorded state.
func TestCommandStartStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	shared, err := ResolveCacheDir("")
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureBuilt(ctx, shared); err != nil {
		t.Fatal(err)
	}
	// A cache of its own, so that `stop` cannot touch a demo cluster running from the shared
	// one; the built binaries and images are shared through symlinks.
	cache := filepath.Join(t.TempDir(), "cache")
	for _, d := range []string{"bin", "images"} {
		if err := os.MkdirAll(cache, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(shared, d), filepath.Join(cache, d)); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(t.TempDir(), "simcluster")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/simcluster").CombinedOutput(); err != nil {
		t.Fatalf("build command: %v\n%s", err, out)
	}
	simcluster := func(args ...string) (string, error) {
		// Not ctx: the cleanup's stop runs after a failing test has already cancelled it.
		cmd := exec.Command(bin, append(args, "--cache", cache)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		t.Logf("simcluster %s:\n%s", strings.Join(args, " "), stderr.String())
		return strings.TrimSpace(stdout.String()), err
	}
	t.Cleanup(func() { _, _ = simcluster("stop") })

	kubectl := func(kubeconfig string, stdin string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The crash round has a real node with a running container, so that the recovery has
	// shims, container processes, mounts, a netns and cgroups to find.
	for _, crash := range []bool{true, false} {
		began := time.Now()
		args := []string{"start", "--kwok-nodes", "1"}
		if !crash {
			args = append(args, "--no-real-node")
		}
		kubeconfig, err := simcluster(args...)
		if err != nil {
			t.Fatalf("start: %v", err)
		}
		t.Logf("start took %s", time.Since(began).Round(time.Millisecond))
		if out := kubectl(kubeconfig, "", "get", "node", "kwok-node-0", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`); out != "True" {
			t.Fatalf("kwok-node-0 Ready=%q", out)
		}
		if crash {
			kubectl(kubeconfig, fmt.Sprintf(`{"apiVersion": "v1", "kind": "Pod",
				"metadata": {"name": "sleeper", "namespace": "default"},
				"spec": {"nodeName": "real-node", "terminationGracePeriodSeconds": 0, "containers": [{"name": "agent",
					"image": %q, "imagePullPolicy": "Never", "command": ["/mesh-agent", "--listen", "127.0.0.1:9460"]}]}}`, AgentImage),
				"apply", "-f", "-")
			kubectl(kubeconfig, "", "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=90s")
		}
		st, err := readState(filepath.Dir(kubeconfig))
		if err != nil {
			t.Fatal(err)
		}
		if !st.Daemon || !strings.HasPrefix(st.Dir, cache) {
			t.Fatalf("state: daemon %v, dir %s", st.Daemon, st.Dir)
		}
		if crash {
			// As if the supervisor were OOM-killed: its children die with it (Pdeathsig), the
			// rest must be found from the state file.
			if err := syscall.Kill(st.OwnerPID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 100 && syscall.Kill(st.OwnerPID, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
		began = time.Now()
		if _, err := simcluster("stop"); err != nil {
			t.Errorf("stop (after crash: %v): %v", crash, err)
		}
		t.Logf("stop took %s", time.Since(began).Round(time.Millisecond))
		assertNothingLeft(t, st, st.Procs)
		if syscall.Kill(st.OwnerPID, 0) == nil {
			t.Errorf("supervisor %d still running", st.OwnerPID)
		}
		if logs, _ := filepath.Glob(filepath.Join(cache, "clusters", "supervisor-*.log")); len(logs) > 0 {
			t.Errorf("supervisor log left: %v", logs)
		}
	}
}
