package simcluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxSlots bounds how many clusters can run at once on one machine. The slot number picks every
// host-wide name and address of a cluster (bridge, subnets, cgroup root), so two clusters (a test
// and `make demo`) never collide.
const maxSlots = 8

// state is written to <dir>/state.json as the cluster comes up, so that a cluster can be torn down
// by another process: `simcluster stop`, or a later Start that finds a crashed cluster's remains.
type state struct {
	Slot int    `json:"slot"`
	Dir  string `json:"dir"`
	// OwnerPID is the process that owns the children (a test binary or the supervisor daemon).
	OwnerPID   int    `json:"ownerPID"`
	OwnerStart uint64 `json:"ownerStart"` // start time of OwnerPID, to tell a reused PID apart
	Daemon     bool   `json:"daemon"`

	Bridge      string `json:"bridge"`
	NodeIP      string `json:"nodeIP"`
	PodCIDR     string `json:"podCIDR"`
	ServiceCIDR string `json:"serviceCIDR"`
	CgroupRoot  string `json:"cgroupRoot"`

	ContainerdSocket string `json:"containerdSocket,omitempty"`
	// NATRule is the iptables nat PREROUTING rule (arguments after -A PREROUTING) that stands in for
	// kube-proxy for the one Service pods need: kubernetes.default.
	NATRule []string `json:"natRule,omitempty"`
	// CreatedDirs are host directories outside Dir that did not exist before this cluster.
	CreatedDirs []string `json:"createdDirs,omitempty"`

	Kubeconfig string       `json:"kubeconfig"`
	Server     string       `json:"server"`
	RealNode   string       `json:"realNode,omitempty"`
	KwokNodes  []string     `json:"kwokNodes,omitempty"`
	Agents     []agentAddrs `json:"agents,omitempty"`
	Procs      []procRecord `json:"procs"`

	sandboxes []string // pod sandbox and container IDs, gathered during teardown
}

// agentAddrs are the loopback addresses of the local mesh-agent that plays a kwok node's agent.
type agentAddrs struct {
	Node    string `json:"node"`
	Listen  string `json:"listen"`
	Metrics string `json:"metrics"`
}

func slotDir(cacheDir string, slot int) string {
	return filepath.Join(cacheDir, "clusters", fmt.Sprintf("sim-%d", slot))
}

// lockDir holds the slot locks. They are machine-wide, not per cache directory, because the
// slot picks machine-wide names (bridge, subnets, cgroup root): two caches (MESH_SIM_CACHE) must
// not hand out the same slot. Each lock file holds the directory of the cluster that last
// claimed the slot, so that its remains can be found after a crash.
const lockDir = "/run/lock"

func slotLock(slot int) string {
	return filepath.Join(lockDir, fmt.Sprintf("kubectl-mesh-simcluster-%d.lock", slot))
}

// slotOwnerDir returns the cluster directory recorded in a slot's lock file, or "".
func slotOwnerDir(slot int) string {
	b, err := os.ReadFile(slotLock(slot))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func newState(slot int, dir string) *state {
	return &state{
		Slot:        slot,
		Dir:         dir,
		OwnerPID:    os.Getpid(),
		OwnerStart:  procStartTime(os.Getpid()),
		Bridge:      fmt.Sprintf("meshsim%d", slot),
		NodeIP:      fmt.Sprintf("198.18.%d.1", 128+slot),
		PodCIDR:     fmt.Sprintf("198.18.%d.0/24", 128+slot),
		ServiceCIDR: fmt.Sprintf("198.18.%d.0/24", 64+slot),
		CgroupRoot:  fmt.Sprintf("/meshsim%d", slot),
	}
}

// kwokPodCIDR is where kwok draws the (unrouted) pod IPs of fake pods.
func (s *state) kwokPodCIDR() string { return fmt.Sprintf("198.18.%d.0/24", 192+s.Slot) }

// serviceIP is the ClusterIP the apiserver gives the kubernetes.default Service.
func (s *state) serviceIP() string { return fmt.Sprintf("198.18.%d.1", 64+s.Slot) }

func readState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "state.json"), err)
	}
	return &s, nil
}

func (c *Cluster) saveState() error {
	c.mu.Lock()
	b, err := json.MarshalIndent(c.state, "", "  ")
	c.mu.Unlock()
	if err != nil {
		return err
	}
	path := filepath.Join(c.dir, "state.json")
	if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}
