package simcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// createBridge makes the cluster's bridge and gives it the node IP. The apiserver needs a
// non-loopback address to advertise (Endpoints refuse loopback) and the kubelet refuses a
// loopback node IP; this kernel has no dummy interfaces, so a bridge carries the address. The
// real node's pod network is the same bridge, and the node IP is the pod subnet's gateway.
func (c *Cluster) createBridge() error {
	br := c.state.Bridge
	if err := run("ip", "link", "add", br, "type", "bridge"); err != nil {
		return err
	}
	if err := run("ip", "addr", "add", c.state.NodeIP+"/24", "dev", br); err != nil {
		return err
	}
	return run("ip", "link", "set", br, "up")
}

func (c *Cluster) startEtcd(ctx context.Context) error {
	client, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	peer, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	cu := fmt.Sprintf("http://127.0.0.1:%d", client)
	pu := fmt.Sprintf("http://127.0.0.1:%d", peer)
	c.etcdURL = cu
	_, err = c.startProc("etcd", nil, "etcd",
		"--name", "simcluster",
		"--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", cu, "--advertise-client-urls", cu,
		"--listen-peer-urls", pu, "--initial-advertise-peer-urls", pu,
		"--initial-cluster", "simcluster="+pu,
		"--log-level", "warn",
	)
	return err
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	st := c.state
	port, err := freePort(st.NodeIP)
	if err != nil {
		return err
	}
	p := c.pki
	ip := net.ParseIP(st.NodeIP)
	serving, servingKey, err := p.issue(certSpec{name: "apiserver", cn: "kube-apiserver", server: true,
		ips: []net.IP{ip, net.ParseIP("127.0.0.1"), net.ParseIP(st.serviceIP())},
		dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}})
	if err != nil {
		return err
	}
	kc, kcKey, err := p.issue(certSpec{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, client: true})
	if err != nil {
		return err
	}
	admin, adminKey, err := p.issue(certSpec{name: "admin", cn: "kubernetes-admin", orgs: []string{"system:masters"}, client: true})
	if err != nil {
		return err
	}
	saPub, saKey, err := p.serviceAccountKeys()
	if err != nil {
		return err
	}
	c.saKey = saKey
	st.Server = fmt.Sprintf("https://%s", net.JoinHostPort(st.NodeIP, strconv.Itoa(port)))
	st.Kubeconfig = filepath.Join(c.dir, "admin.kubeconfig")
	if err := writeKubeconfig(st.Kubeconfig, st.Server, p.path("ca.crt"), admin, adminKey, "admin"); err != nil {
		return err
	}
	if err := c.saveState(); err != nil {
		return err
	}
	certDir := filepath.Join(c.dir, "apiserver")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return err
	}
	c.apiserver, err = c.startProc("kube-apiserver", nil, c.art.tool("kube-apiserver"),
		"--etcd-servers", c.etcdURL,
		"--bind-address", st.NodeIP,
		"--advertise-address", st.NodeIP,
		"--secure-port", strconv.Itoa(port),
		"--cert-dir", certDir,
		"--tls-cert-file", serving, "--tls-private-key-file", servingKey,
		"--client-ca-file", p.path("ca.crt"),
		"--service-account-key-file", saPub,
		"--service-account-signing-key-file", saKey,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-cluster-ip-range", st.ServiceCIDR,
		"--authorization-mode", "Node,RBAC",
		"--enable-admission-plugins", "NodeRestriction",
		"--allow-privileged=true",
		"--kubelet-client-certificate", kc, "--kubelet-client-key", kcKey,
		"--kubelet-certificate-authority", p.path("ca.crt"),
		"--kubelet-preferred-address-types", "InternalIP,Hostname,ExternalIP",
		"--profiling=false",
		"--v=1",
	)
	return err
}

func (c *Cluster) waitAPIServer(ctx context.Context) error {
	if err := c.loadRESTConfig(); err != nil {
		return err
	}
	return waitFor(ctx, "kube-apiserver /readyz", c.apiserver, func(ctx context.Context) error {
		body, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(body)))
		}
		return nil
	})
}

// startControllers starts the controller-manager and scheduler with the admin identity (they run
// on the host as trusted components; per-component identities add nothing to these tests).
func (c *Cluster) startControllers() error {
	kcmPort, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	schedPort, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	kc := c.state.Kubeconfig
	if _, err := c.startProc("kube-controller-manager", nil, c.art.tool("kube-controller-manager"),
		"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(kcmPort),
		"--cert-dir", filepath.Join(c.dir, "controller-manager"),
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file", c.saKey,
		"--root-ca-file", c.pki.path("ca.crt"),
		"--cluster-signing-cert-file", c.pki.path("ca.crt"),
		"--cluster-signing-key-file", c.pki.path("ca.key"),
		"--service-cluster-ip-range", c.state.ServiceCIDR,
		"--controllers", "*,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
		// The default is under /usr/libexec, which the controller-manager would create.
		"--flex-volume-plugin-dir", filepath.Join(c.dir, "controller-manager", "flexvolume"),
		// The defaults (20/s) take a minute to create a DaemonSet's pods on a thousand nodes.
		"--kube-api-qps", "500", "--kube-api-burst", "1000",
		"--v=1",
	); err != nil {
		return err
	}
	_, err = c.startProc("kube-scheduler", nil, c.art.tool("kube-scheduler"),
		"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(schedPort),
		"--leader-elect=false",
		"--kube-api-qps", "500", "--kube-api-burst", "1000",
		"--v=1",
	)
	return err
}

// waitNodesReady waits until every node of this cluster is registered and Ready.
func (c *Cluster) waitNodesReady(ctx context.Context) error {
	want := append([]string{}, c.state.KwokNodes...)
	if c.state.RealNode != "" {
		want = append(want, c.state.RealNode)
	}
	return waitFor(ctx, fmt.Sprintf("nodes %v Ready", want), c.kubelet, func(ctx context.Context) error {
		for _, p := range c.procsSnapshot() {
			if p.exited() {
				return fatal{fmt.Errorf("%s exited (%v) while waiting for nodes; log %s:\n%s", p.rec.Name, p.err, p.rec.Log, tail(p.rec.Log, 30))}
			}
		}
		nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		ready := map[string]bool{}
		for _, n := range nodes.Items {
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					ready[n.Name] = true
				}
			}
		}
		var notReady []string
		for _, n := range want {
			if !ready[n] {
				notReady = append(notReady, n)
			}
		}
		if len(notReady) > 0 {
			return fmt.Errorf("not Ready yet: %v", notReady)
		}
		return nil
	})
}

func (c *Cluster) procsSnapshot() []*proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*proc{}, c.procs...)
}
