package simcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	kwokcrd "sigs.k8s.io/kwok/kustomize/crd"
	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodelease "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
	"sigs.k8s.io/yaml"
)

const (
	// agentSelector finds the agent pods (the fixed label of every kubectl-mesh agent object).
	agentSelector = "app.kubernetes.io/name=mesh-agent"
	agentGRPCPort = 9460
	agentMetrics  = 9461
)

var (
	crdGVR         = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	portForwardGVR = schema.GroupVersionResource{Group: "kwok.x-k8s.io", Version: "v1alpha1", Resource: "portforwards"}
)

// startKwok starts one kwok process that plays the kubelet of every fake node, creates the fake
// nodes, starts a local mesh-agent per fake node, and starts the watcher that points each fake
// node's agent pod at that node's agent process.
func (c *Cluster) startKwok(ctx context.Context) error {
	st := c.state
	dyn, err := dynamic.NewForConfig(c.restCfg)
	if err != nil {
		return err
	}
	if err := c.installPortForwardCRD(ctx, dyn); err != nil {
		return err
	}
	port, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	// The apiserver verifies kubelet serving certificates against the cluster CA, kwok's too.
	cert, key, err := c.pki.issue(certSpec{name: "kwok-serving", cn: "kwok", server: true,
		ips: []net.IP{net.ParseIP("127.0.0.1")}, dns: []string{"localhost"}})
	if err != nil {
		return err
	}
	// The standalone kwok ships no stages; these are the ones kwokctl installs by default.
	stages := strings.Join([]string{nodefast.DefaultNodeInit, nodelease.DefaultNodeHeartbeatWithLease,
		podfast.DefaultPodReady, podfast.DefaultPodComplete, podfast.DefaultPodDelete}, "\n---\n")
	home := filepath.Join(c.dir, "kwok")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return err
	}
	confPath := filepath.Join(home, "stages.yaml")
	if err := os.WriteFile(confPath, []byte(stages), 0o644); err != nil {
		return err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// HOME points into the cluster directory so that a ~/.kwok/kwok.yaml of the user is not read.
	if _, err := c.startProc("kwok", []string{"HOME=" + home}, c.art.tool("kwok"),
		"--kubeconfig", st.Kubeconfig,
		"--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
		"--server-address", addr,
		"--node-ip", "127.0.0.1", "--node-port", strconv.Itoa(port), "--node-name", "localhost",
		"--tls-cert-file", cert, "--tls-private-key-file", key,
		"--cidr", st.kwokPodCIDR(),
		"--node-lease-duration-seconds", "40",
		"--enable-crds", "PortForward",
		"--config", confPath,
	); err != nil {
		return err
	}
	for i := 0; i < c.opts.KwokNodes; i++ {
		name := fmt.Sprintf("%s%d", kwokNodePrefix, i)
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        name,
				Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
				Labels: map[string]string{"type": "kwok", "kubernetes.io/hostname": name,
					"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
			},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: "kwok.x-k8s.io/node", Value: "fake", Effect: corev1.TaintEffectNoSchedule}}},
		}
		if _, err := c.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create kwok node %s: %w", name, err)
		}
		listen, err := freePort("127.0.0.1")
		if err != nil {
			return err
		}
		metrics, err := freePort("127.0.0.1")
		if err != nil {
			return err
		}
		st.KwokNodes = append(st.KwokNodes, name)
		st.Agents = append(st.Agents, agentAddrs{Node: name,
			Listen: fmt.Sprintf("127.0.0.1:%d", listen), Metrics: fmt.Sprintf("127.0.0.1:%d", metrics)})
	}
	if err := c.saveState(); err != nil {
		return err
	}
	for _, a := range st.Agents {
		if c.opts.NoKwokAgents {
			break
		}
		if err := c.StartKwokAgent(a.Node); err != nil {
			return err
		}
	}
	return c.startPortForwardWatcher(dyn)
}

func (c *Cluster) installPortForwardCRD(ctx context.Context, dyn dynamic.Interface) error {
	var obj map[string]any
	if err := yaml.Unmarshal(kwokcrd.PortForward, &obj); err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: obj}
	if _, err := dyn.Resource(crdGVR).Create(ctx, u, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("install kwok PortForward CRD: %w", err)
	}
	return waitFor(ctx, "PortForward CRD established", nil, func(ctx context.Context) error {
		got, err := dyn.Resource(crdGVR).Get(ctx, u.GetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return nil
			}
		}
		return errors.New("not established")
	})
}

func (c *Cluster) agentAddrs(node string) (agentAddrs, bool) {
	for _, a := range c.state.Agents {
		if a.Node == node {
			return a, true
		}
	}
	return agentAddrs{}, false
}

// StartKwokAgent starts the local mesh-agent process of a kwok node (again, after
// StopKwokAgent) on the node's fixed loopback addresses, and waits until it serves gRPC health.
func (c *Cluster) StartKwokAgent(node string) error {
	a, ok := c.agentAddrs(node)
	if !ok {
		return fmt.Errorf("simcluster: %q is not a kwok node of this cluster", node)
	}
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return fmt.Errorf("simcluster: cluster is stopped")
	}
	if p := c.agents[node]; p != nil && !p.exited() {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	// The agent runs outside any pod, so it gets the admin kubeconfig instead of in-cluster
	// credentials, and its node name from the flag as well as the env the DaemonSet would set.
	p, err := c.startProc("agent-"+node, []string{"NODE_NAME=" + node, "KUBECONFIG=" + c.state.Kubeconfig},
		c.art.agentBin, "--node-name", node, "--listen", a.Listen, "--metrics-listen", a.Metrics)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.agents[node] = p
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return waitFor(ctx, "mesh-agent of "+node+" serving", p, func(ctx context.Context) error {
		return grpcHealth(ctx, a.Listen)
	})
}

// StopKwokAgent kills the local mesh-agent of a kwok node, so that the node's agent pod looks
// alive to the API but its agent does not answer (a "dead agent").
func (c *Cluster) StopKwokAgent(node string) error {
	if _, ok := c.agentAddrs(node); !ok {
		return fmt.Errorf("simcluster: %q is not a kwok node of this cluster", node)
	}
	c.mu.Lock()
	p := c.agents[node]
	delete(c.agents, node)
	c.mu.Unlock()
	if p != nil {
		p.stop(5 * time.Second)
	}
	return nil
}

// grpcHealth runs the standard gRPC health check against addr and wants SERVING.
func grpcHealth(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health %s", resp.Status)
	}
	return nil
}

// startPortForwardWatcher keeps one kwok PortForward per agent pod on a kwok node. kwok routes
// pods/portforward for a pod to the PortForward named like the pod, so agent pods (whose names
// the DaemonSet controller picks) reach their node's local mesh-agent. The PortForward is owned
// by the pod, so the garbage collector removes it with the pod.
func (c *Cluster) startPortForwardWatcher(dyn dynamic.Interface) error {
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.cancel = cancel
	c.mu.Unlock()
	factory := informers.NewSharedInformerFactoryWithOptions(c.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = agentSelector }))
	inf := factory.Core().V1().Pods().Informer()
	// Only the informer's single handler goroutine touches applied.
	applied := map[string]bool{}
	sync := func(obj any) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || pod.Spec.NodeName == "" || pod.DeletionTimestamp != nil || applied[string(pod.UID)] {
			return
		}
		a, ok := c.agentAddrs(pod.Spec.NodeName)
		if !ok {
			return
		}
		if err := applyPortForward(ctx, dyn, pod, a); err != nil {
			if ctx.Err() == nil {
				c.logf("PortForward for %s/%s: %v", pod.Namespace, pod.Name, err)
			}
			return
		}
		applied[string(pod.UID)] = true
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    sync,
		UpdateFunc: func(_, obj any) { sync(obj) },
	}); err != nil {
		cancel()
		return err
	}
	c.bgDone.Add(1)
	go func() {
		defer c.bgDone.Done()
		inf.Run(ctx.Done())
	}()
	return nil
}

// applyPortForward points the agent pod's gRPC port (9460, and any other container port) at the
// node's agent and its metrics port (9461, or a port named like "metrics") at the agent's
// metrics listener.
func applyPortForward(ctx context.Context, dyn dynamic.Interface, pod *corev1.Pod, a agentAddrs) error {
	grpcPort, _ := strconv.Atoi(a.Listen[strings.LastIndex(a.Listen, ":")+1:])
	metricsPort, _ := strconv.Atoi(a.Metrics[strings.LastIndex(a.Metrics, ":")+1:])
	toGRPC := []any{int64(agentGRPCPort)}
	toMetrics := []any{int64(agentMetrics)}
	for _, ct := range pod.Spec.Containers {
		for _, p := range ct.Ports {
			if p.ContainerPort == agentGRPCPort || p.ContainerPort == agentMetrics {
				continue
			}
			if strings.Contains(p.Name, "metric") {
				toMetrics = append(toMetrics, int64(p.ContainerPort))
			} else {
				toGRPC = append(toGRPC, int64(p.ContainerPort))
			}
		}
	}
	target := func(port int) map[string]any {
		return map[string]any{"address": "127.0.0.1", "port": int64(port)}
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "kwok.x-k8s.io/v1alpha1",
		"kind":       "PortForward",
		"metadata": map[string]any{
			"name":      pod.Name,
			"namespace": pod.Namespace,
			"labels":    map[string]any{"app.kubernetes.io/managed-by": "simcluster"},
			"ownerReferences": []any{map[string]any{
				"apiVersion": "v1", "kind": "Pod", "name": pod.Name, "uid": string(pod.UID),
			}},
		},
		"spec": map[string]any{
			"forwards": []any{
				map[string]any{"ports": toGRPC, "target": target(grpcPort)},
				map[string]any{"ports": toMetrics, "target": target(metricsPort)},
			},
		},
	}}
	_, err := dyn.Resource(portForwardGVR).Namespace(pod.Namespace).Apply(ctx, pod.Name, obj,
		metav1.ApplyOptions{FieldManager: "simcluster", Force: true})
	return err
}
