package server

import (
	"path/filepath"
	"strconv"
	"testing"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
)

func TestDetectNamespaceRootsFixture(t *testing.T) {
	proc, mount := t.TempDir(), t.TempDir()
	const self = 4242
	agentScope := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podagent.slice/cri-containerd-agent.scope"
	// The agent's own container cgroup is the namespace root, so it reads its own as "/"
	// and the host's init (four levels up, then init.scope) through "..".
	writeFile(t, filepath.Join(proc, "1", "cgroup"), "0::/../../../../init.scope\n")
	writeFile(t, filepath.Join(proc, strconv.Itoa(self), "cgroup"), "0::/\n")
	writeFile(t, filepath.Join(mount, agentScope, "cgroup.procs"), "17\n4242\n")
	// A decoy at the same depth that does not hold the agent.
	writeFile(t, filepath.Join(mount, "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podother.slice/cri-containerd-x.scope/cgroup.procs"), "99\n")
	writeFile(t, filepath.Join(mount, "init.scope", "cgroup.procs"), "1\n")

	ns, err := DetectNamespaceRoots(proc, self, map[string]string{discovery.Unified: mount, "cpu": filepath.Join(mount, "nocpu")})
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 1 || ns[discovery.Unified] != agentScope {
		t.Fatalf("roots %v, want unified at %s", ns, agentScope)
	}
	sidecar := "/../../kubepods-besteffort-podweb.slice/cri-containerd-abc.scope"
	if got := ns.Resolve(discovery.Unified, sidecar); got != "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-podweb.slice/cri-containerd-abc.scope" {
		t.Errorf("resolved %q", got)
	}
	if got := ns.Resolve("cpu", sidecar); got != sidecar {
		t.Errorf("hierarchy without a root changed a path: %q", got)
	}
	if got := hostPaths(map[string]string{discovery.Unified: sidecar, "memory": "/kubepods/x"}, ns); got.Unified != ns.Resolve(discovery.Unified, sidecar) || got.V1["memory"] != "/kubepods/x" {
		t.Errorf("hostPaths %+v", got)
	}

	// Sharing the host's namespace: no roots, paths as read.
	writeFile(t, filepath.Join(proc, "1", "cgroup"), "0::/init.scope\n")
	if ns, err := DetectNamespaceRoots(proc, self, map[string]string{discovery.Unified: mount}); err != nil || len(ns) != 0 {
		t.Errorf("host namespace: %v, %v", ns, err)
	}

	// Two candidates holding the PID is ambiguous, and said so rather than guessed.
	writeFile(t, filepath.Join(proc, "1", "cgroup"), "0::/../../../../init.scope\n")
	writeFile(t, filepath.Join(mount, "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podother.slice/cri-containerd-x.scope/cgroup.procs"), "4242\n")
	if _, err := DetectNamespaceRoots(proc, self, map[string]string{discovery.Unified: mount}); err == nil {
		t.Error("ambiguous root accepted")
	}
}
