package simcluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// startContainerd starts a containerd of the cluster's own (config, root, state and socket under
// the cluster directory) and imports the pause and agent images into its k8s.io namespace.
func (c *Cluster) startContainerd(ctx context.Context) error {
	st := c.state
	c.noteHostDirs()
	base := filepath.Join(c.dir, "containerd")
	cniConf := filepath.Join(c.dir, "cni", "net.d")
	for _, d := range []string{base, cniConf} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := c.writeCNIConfig(cniConf); err != nil {
		return err
	}
	sock := filepath.Join(base, "containerd.sock")
	// restrict_oom_score_adj: this VM forbids lowering oom_score_adj (no CAP_SYS_RESOURCE).
	// netns_mounts_under_state_dir and runc's Root keep pod network namespaces and runc state
	// inside the cluster directory instead of /var/run/netns and /run/containerd/runc.
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[7]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[8]q
`, filepath.Join(base, "root"), filepath.Join(base, "state"), sock, sock+".ttrpc",
		filepath.Join(base, "opt"), pauseImage, filepath.Join(base, "runc"), cniConf)
	confPath := filepath.Join(base, "config.toml")
	if err := os.WriteFile(confPath, []byte(config), 0o644); err != nil {
		return err
	}
	st.ContainerdSocket = sock
	if err := c.saveState(); err != nil {
		return err
	}
	p, err := c.startProc("containerd", nil, "containerd", "--config", confPath)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "containerd socket", p, func(ctx context.Context) error {
		return exec.CommandContext(ctx, "ctr", "-a", sock, "version").Run()
	}); err != nil {
		return err
	}
	for _, img := range []string{c.art.pauseImage, c.art.agentImage} {
		// Without --all-platforms ctr silently filters the import down to nothing.
		out, err := exec.CommandContext(ctx, "ctr", "-a", sock, "-n", "k8s.io", "images", "import", "--all-platforms", img).CombinedOutput()
		if err != nil {
			return fmt.Errorf("import %s into containerd: %w: %s", img, err, strings.TrimSpace(string(out)))
		}
	}
	c.logf("containerd up, images %s and %s imported", pauseImage, AgentImage)
	return nil
}

// writeCNIConfig writes a bridge + host-local network on the cluster's bridge. The bridge already
// carries the gateway (the node IP), so isGateway is off: with it on, the plugin would also turn
// on net.ipv4.ip_forward for the whole host, which pods that talk only to this host do not need.
// ipMasq is off so that the plugin adds no iptables rules; host-local keeps its allocations in
// the cluster directory instead of /var/lib/cni.
func (c *Cluster) writeCNIConfig(dir string) error {
	st := c.state
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       st.Bridge,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      st.Bridge,
				"isGateway":   false,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": st.PodCIDR, "gateway": st.NodeIP}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0", "gw": st.NodeIP}},
					"dataDir": filepath.Join(c.dir, "cni", "ipam"),
				},
			},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "10-meshsim.conflist"), b, 0o644)
}

// startKubelet starts the real node's kubelet. It authenticates as system:node:<name> (group
// system:nodes), so the Node authorizer and NodeRestriction apply to it as in a real cluster.
func (c *Cluster) startKubelet() error {
	st := c.state
	st.RealNode = realNodeName
	p := c.pki
	cert, key, err := p.issue(certSpec{name: "kubelet-client", cn: "system:node:" + realNodeName, orgs: []string{"system:nodes"}, client: true})
	if err != nil {
		return err
	}
	srv, srvKey, err := p.issue(certSpec{name: "kubelet-serving", cn: realNodeName, server: true,
		ips: []net.IP{net.ParseIP(st.NodeIP)}, dns: []string{realNodeName}})
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(c.dir, "kubelet.kubeconfig")
	if err := writeKubeconfig(kubeconfig, st.Server, p.path("ca.crt"), cert, key, "system:node:"+realNodeName); err != nil {
		return err
	}
	if err := c.makeCgroupRoot(); err != nil {
		return err
	}
	if err := c.addServiceNAT(); err != nil {
		return err
	}
	port, err := freePort(st.NodeIP)
	if err != nil {
		return err
	}
	healthz, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	root := filepath.Join(c.dir, "kubelet")
	if err := os.MkdirAll(root, 0o750); err != nil {
		return err
	}
	// Eviction and image GC thresholds are relaxed so that a busy disk on the host never taints
	// the node; makeIPTablesUtilChains is off so that the kubelet leaves iptables alone.
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: %[2]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %[3]d
tlsCertFile: %[4]s
tlsPrivateKeyFile: %[5]s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %[6]s
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
cgroupRoot: %[7]s
failSwapOn: false
failCgroupV1: false
makeIPTablesUtilChains: false
containerRuntimeEndpoint: unix://%[8]s
podLogsDir: %[9]s
volumePluginDir: %[10]s
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
registerNode: true
maxPods: 110
`, st.NodeIP, port, healthz, srv, srvKey, p.path("ca.crt"), st.CgroupRoot, st.ContainerdSocket,
		filepath.Join(c.dir, "pod-logs"), filepath.Join(root, "volume-plugins"))
	confPath := filepath.Join(c.dir, "kubelet-config.yaml")
	if err := os.WriteFile(confPath, []byte(config), 0o644); err != nil {
		return err
	}
	if err := c.saveState(); err != nil {
		return err
	}
	c.kubelet, err = c.startProc("kubelet", nil, c.art.tool("kubelet"),
		"--config", confPath,
		"--kubeconfig", kubeconfig,
		"--hostname-override", realNodeName,
		"--node-ip", st.NodeIP,
		"--root-dir", root,
		"--cert-dir", filepath.Join(root, "pki"),
		"--v=1",
	)
	return err
}

// makeCgroupRoot creates the kubelet's cgroup root in every hierarchy. A root per cluster keeps
// two real nodes (a test and the demo) from sharing /kubepods, and makes teardown a matter of
// removing one subtree.
func (c *Cluster) makeCgroupRoot() error {
	for _, h := range cgroupHierarchies() {
		d := filepath.Join(h, c.state.CgroupRoot)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if filepath.Base(h) == "cpuset" {
			// A new v1 cpuset starts empty and accepts no tasks until given CPUs and memory nodes.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(d, f), err)
				}
			}
		}
	}
	return nil
}

// cgroupHierarchies lists the mounted cgroup hierarchies (v1 controllers, named ones, and the
// unified v2 tree), from /proc/self/mountinfo.
func cgroupHierarchies() []string {
	var out []string
	for _, m := range mounts() {
		if m.FSType == "cgroup" || m.FSType == "cgroup2" {
			out = append(out, m.Mountpoint)
		}
	}
	return out
}

// addServiceNAT stands in for kube-proxy for the kubernetes.default Service only, so that pods
// on the real node reach the apiserver with in-cluster configuration.
func (c *Cluster) addServiceNAT() error {
	st := c.state
	port := st.Server[strings.LastIndex(st.Server, ":")+1:]
	if _, err := strconv.Atoi(port); err != nil {
		return fmt.Errorf("apiserver address %q: %w", st.Server, err)
	}
	st.NATRule = []string{"-s", st.PodCIDR, "-d", st.serviceIP() + "/32", "-p", "tcp", "--dport", "443",
		"-m", "comment", "--comment", st.Bridge, "-j", "DNAT", "--to-destination", st.NodeIP + ":" + port}
	if err := c.saveState(); err != nil {
		return err
	}
	return run("iptables", append([]string{"-w", "-t", "nat", "-A", "PREROUTING"}, st.NATRule...)...)
}

// fixedHostDirs are paths the kubelet, containerd and CNI use whatever they are configured with:
// the kubelet's container log links and device-plugin socket, containerd's shim socket directory,
// and libcni's result cache.
var fixedHostDirs = []string{"/var/log/containers", "/var/lib/kubelet", "/run/containerd", "/var/lib/cni", "/usr/libexec/kubernetes"}

// noteHostDirs records which of fixedHostDirs do not exist yet, so that teardown removes them
// (when empty of anything not ours) and leaves pre-existing ones alone.
func (c *Cluster) noteHostDirs() {
	for _, d := range fixedHostDirs {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			c.state.CreatedDirs = append(c.state.CreatedDirs, d)
		}
	}
}
