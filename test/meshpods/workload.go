// Package meshpods puts meshed workloads on the simulated cluster's real node: real pods shaped
// the way Istio's injector shapes them (an nginx app container and an `istio-proxy` sidecar
// container running a real proxy under UID 1337, Istio's labels and annotations, optionally the
// sidecar as a native sidecar), with Istio-style traffic interception applied from the node
// into each pod's network namespace the way a mesh CNI plugin does it.
//
// Everything it creates lives in the cluster (objects), in containerd (images, containers), or
// inside the pods' network namespaces (iptables rules), so the cluster's Stop removes it all.
package meshpods

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

// Container names, as Istio's injector names them.
const (
	AppContainer     = "app"
	SidecarContainer = "istio-proxy"
)

// ProxyKind picks the program in the sidecar container.
type ProxyKind int

const (
	// ProxyNginx is Debian's nginx as a reverse proxy (the default).
	ProxyNginx ProxyKind = iota
	// ProxyDelay is the known-delay proxy (DelayProxyPackage), which adds Proxy.Delay per
	// request and logs its own residency to Proxy.LogFile.
	ProxyDelay
)

// Proxy configures the sidecar's program.
type Proxy struct {
	Kind ProxyKind
	// Delay is the known-delay proxy's added delay per request.
	Delay time.Duration
	// LogFile is where the known-delay proxy logs per-request residency, inside the sidecar
	// container (default /tmp/delayproxy.log, on the sidecar's emptyDir; read it with
	// ReadSidecarFile).
	LogFile string
}

// Options configure Deploy.
type Options struct {
	// Namespace is created if missing. Default "meshed".
	Namespace string
	// Name of the Deployment and Service, and the pods' app label. Default "web".
	Name string
	// Replicas defaults to 1.
	Replicas int32
	// NativeSidecar puts the sidecar among the init containers with restartPolicy Always, as
	// Istio does with ENABLE_NATIVE_SIDECARS.
	NativeSidecar bool
	Proxy         Proxy
	// InboundPorts limits interception to these ports; nil captures every inbound TCP port
	// except the sidecar's own (Istio's includeInboundPorts "*").
	InboundPorts []int
	// NoInterception leaves the pods without iptables rules; Intercept applies them later.
	NoInterception bool
	// SidecarResources sets Istio's default sidecar requests and limits (cpu 100m / 2,
	// memory 128Mi / 1Gi), which makes the pods Burstable. Off, the pods are BestEffort.
	SidecarResources bool
	// KwokNodes spreads the Deployment: Replicas pods on the real node and Replicas on each
	// of these kwok nodes, where stand-in processes play the containers as in DeployFake
	// (ProxyNginx only). One Deployment then spans real and simulated nodes.
	KwokNodes []string
	// Log receives progress lines with timings; nil discards them.
	Log io.Writer
}

func (o *Options) defaults() {
	if o.Namespace == "" {
		o.Namespace = "meshed"
	}
	if o.Name == "" {
		o.Name = "web"
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Proxy.Kind == ProxyDelay && o.Proxy.LogFile == "" {
		o.Proxy.LogFile = "/tmp/delayproxy.log"
	}
}

// Workload is a deployed meshed Deployment and its Service.
type Workload struct {
	c    *simcluster.Cluster
	cs   kubernetes.Interface
	opts Options
	pods []*Pod
	// pauseBin holds the stand-in pods' network namespaces (KwokNodes only).
	pauseBin string
}

// replicas is the Deployment's pod count over every node it spans.
func (w *Workload) replicas() int32 { return w.opts.Replicas * int32(1+len(w.opts.KwokNodes)) }

// Deploy creates the meshed Deployment and its Service on the real node, waits until every
// pod is Running with all containers ready, and (unless NoInterception) applies interception
// to each pod. It needs a cluster with a real node.
func Deploy(ctx context.Context, c *simcluster.Cluster, opts Options) (*Workload, error) {
	opts.defaults()
	if c.RealNodeName() == "" {
		return nil, errors.New("meshpods: the cluster has no real node (simcluster.Options.RealNode)")
	}
	cs, err := kubernetes.NewForConfig(c.RESTConfig())
	if err != nil {
		return nil, err
	}
	began := time.Now()
	if err := ensureImages(ctx, c, opts.Proxy); err != nil {
		return nil, err
	}
	w := &Workload{c: c, cs: cs, opts: opts}
	if len(opts.KwokNodes) > 0 {
		if opts.Proxy.Kind != ProxyNginx {
			return nil, errors.New("meshpods: pods on kwok nodes run the nginx sidecar only")
		}
		for _, n := range opts.KwokNodes {
			if !slices.Contains(c.KwokNodeNames(), n) {
				return nil, fmt.Errorf("meshpods: %q is not a kwok node of the cluster", n)
			}
		}
		if w.pauseBin, err = c.GoBinary(ctx, "./test/simcluster/pause"); err != nil {
			return nil, err
		}
	}
	w.logf("images ready after %s", time.Since(began).Round(time.Millisecond))
	if err := w.createNamespaceAndService(ctx); err != nil {
		return nil, err
	}
	if _, err := cs.AppsV1().Deployments(opts.Namespace).Create(ctx, w.deployment(), metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("meshpods: create Deployment: %w", err)
	}
	if err := w.waitReady(ctx); err != nil {
		return nil, err
	}
	w.logf("%d pods ready after %s", len(w.pods), time.Since(began).Round(time.Millisecond))
	if !opts.NoInterception {
		if err := w.Intercept(ctx); err != nil {
			return nil, err
		}
		w.logf("interception applied after %s", time.Since(began).Round(time.Millisecond))
	}
	return w, nil
}

// createNamespaceAndService creates the workload's namespace (labelled for injection, as
// an Istio user would) unless it exists, and its Service.
func (w *Workload) createNamespaceAndService(ctx context.Context) error {
	if _, err := w.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: w.opts.Namespace, Labels: map[string]string{"istio-injection": "enabled"},
	}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := w.cs.CoreV1().Services(w.opts.Namespace).Create(ctx, w.service(), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("meshpods: create Service: %w", err)
	}
	return nil
}

func (w *Workload) logf(format string, args ...any) {
	fmt.Fprintf(w.opts.Log, "meshpods: %s/%s: "+format+"\n", append([]any{w.opts.Namespace, w.opts.Name}, args...)...)
}

// Namespace of the Deployment and Service.
func (w *Workload) Namespace() string { return w.opts.Namespace }

// Name of the Deployment and Service.
func (w *Workload) Name() string { return w.opts.Name }

// Options are the options Deploy used, defaults filled in.
func (w *Workload) Options() Options { return w.opts }

// Pods are the workload's running pods, as found when Deploy returned.
func (w *Workload) Pods() []*Pod { return slices.Clone(w.pods) }

// Intercept applies Istio-style interception to every pod (idempotent).
func (w *Workload) Intercept(ctx context.Context) error {
	for _, p := range w.pods {
		if err := p.Intercept(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes the Deployment and Service and waits until the pods are gone; on a kwok node
// it also kills the stand-in processes (their cgroups stay until the cluster stops).
func (w *Workload) Delete(ctx context.Context) error {
	for _, p := range w.pods {
		if p.Node != w.c.RealNodeName() {
			for _, cg := range []string{p.App.Cgroup, p.Sidecar.Cgroup, filepath.Join(filepath.Dir(p.App.Cgroup), p.SandboxID)} {
				pids, _ := cgroupPIDs(cg)
				for _, pid := range pids {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	}
	policy := metav1.DeletePropagationForeground
	err := errors.Join(
		w.cs.AppsV1().Deployments(w.opts.Namespace).Delete(ctx, w.opts.Name, metav1.DeleteOptions{PropagationPolicy: &policy}),
		w.cs.CoreV1().Services(w.opts.Namespace).Delete(ctx, w.opts.Name, metav1.DeleteOptions{}),
	)
	if err != nil {
		return err
	}
	return poll(ctx, "pods of "+w.opts.Name+" gone", func(ctx context.Context) error {
		pods, err := w.cs.CoreV1().Pods(w.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + w.opts.Name})
		if err != nil {
			return err
		}
		if n := len(pods.Items); n > 0 {
			return fmt.Errorf("%d pods left", n)
		}
		return nil
	})
}

func (w *Workload) labels() map[string]string {
	return map[string]string{
		"app":                                   w.opts.Name,
		"version":                               "v1",
		"security.istio.io/tlsMode":             "istio",
		"service.istio.io/canonical-name":       w.opts.Name,
		"service.istio.io/canonical-revision":   "v1",
		"sidecar.istio.io/inject":               "true",
		"meshpods.kubectl-mesh.io/sidecar-kind": w.kindLabel(),
	}
}

func (w *Workload) kindLabel() string {
	k := "nginx"
	if w.opts.Proxy.Kind == ProxyDelay {
		k = "delay"
	}
	if w.opts.NativeSidecar {
		k += "-native"
	}
	return k
}

// sidecarStatus is Istio's sidecar.istio.io/status annotation: what the injector added.
type sidecarStatus struct {
	InitContainers   []string `json:"initContainers"`
	Containers       []string `json:"containers"`
	Volumes          []string `json:"volumes"`
	ImagePullSecrets []string `json:"imagePullSecrets"`
	Revision         string   `json:"revision"`
}

func (w *Workload) annotations() map[string]string {
	st := sidecarStatus{Volumes: []string{"istio-envoy"}, Revision: "default"}
	if w.opts.NativeSidecar {
		st.InitContainers = []string{SidecarContainer}
	} else {
		st.Containers = []string{SidecarContainer}
	}
	status, _ := json.Marshal(st)
	include := "*"
	if w.opts.InboundPorts != nil {
		var ps []string
		for _, p := range w.opts.InboundPorts {
			ps = append(ps, fmt.Sprint(p))
		}
		include = strings.Join(ps, ",")
	}
	return map[string]string{
		"sidecar.istio.io/status":                          string(status),
		"sidecar.istio.io/interceptionMode":                "REDIRECT",
		"traffic.sidecar.istio.io/includeInboundPorts":     include,
		"traffic.sidecar.istio.io/excludeInboundPorts":     "15020",
		"traffic.sidecar.istio.io/includeOutboundIPRanges": "",
		"kubectl.kubernetes.io/default-container":          AppContainer,
		"kubectl.kubernetes.io/default-logs-container":     AppContainer,
		"istio.io/rev": "default",
	}
}

func (w *Workload) service() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: w.opts.Name, Namespace: w.opts.Namespace, Labels: map[string]string{"app": w.opts.Name}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": w.opts.Name},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(AppPort),
				Protocol: corev1.ProtocolTCP}},
		},
	}
}

func (w *Workload) sidecar() corev1.Container {
	uid := int64(ProxyUID)
	yes, no := true, false
	ctr := corev1.Container{
		Name:            SidecarContainer,
		ImagePullPolicy: corev1.PullNever,
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &uid,
			RunAsGroup:               &uid,
			RunAsNonRoot:             &yes,
			Privileged:               &no,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
		VolumeMounts: []corev1.VolumeMount{{Name: "istio-envoy", MountPath: "/tmp"}},
	}
	if w.opts.SidecarResources {
		ctr.Resources = corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("1Gi")},
		}
	}
	switch p := w.opts.Proxy; p.Kind {
	case ProxyNginx:
		ctr.Image = SidecarImage
		ctr.Ports = []corev1.ContainerPort{{Name: "http-health", ContainerPort: ReadinessPort, Protocol: corev1.ProtocolTCP}}
		ready := corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz/ready", Port: intstr.FromInt32(ReadinessPort)}}
		// A fast startup probe for quick pods, then readiness probes rare enough to add
		// little traffic of their own to the proxy being measured.
		ctr.StartupProbe = &corev1.Probe{ProbeHandler: ready, PeriodSeconds: 1, FailureThreshold: 60}
		ctr.ReadinessProbe = &corev1.Probe{ProbeHandler: ready, PeriodSeconds: 10, FailureThreshold: 3}
	case ProxyDelay:
		ctr.Image = DelayProxyImage
		ctr.Args = []string{
			"--listen", fmt.Sprintf(":%d", InboundCapturePort),
			"--upstream", fmt.Sprintf("127.0.0.1:%d", AppPort),
			"--delay", p.Delay.String(),
			"--log", p.LogFile,
		}
		// Only until it listens (its log file exists by then): a connection from the probe
		// is traffic the proxy would otherwise see throughout.
		ctr.StartupProbe = &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(InboundCapturePort)}},
			PeriodSeconds:    1,
			FailureThreshold: 60,
		}
	}
	return ctr
}

func (w *Workload) deployment() *appsv1.Deployment {
	labels := w.labels()
	zero := int64(0)
	app := corev1.Container{
		Name:            AppContainer,
		Image:           AppImage,
		ImagePullPolicy: corev1.PullNever,
		Ports:           []corev1.ContainerPort{{Name: "http", ContainerPort: AppPort, Protocol: corev1.ProtocolTCP}},
	}
	spec := corev1.PodSpec{
		// The kwok nodes cannot run containers; nodeName also skips the scheduler.
		NodeName:                      w.c.RealNodeName(),
		TerminationGracePeriodSeconds: &zero,
		EnableServiceLinks:            new(bool),
		Volumes: []corev1.Volume{{Name: "istio-envoy", VolumeSource: corev1.VolumeSource{
			EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}},
	}
	sc := w.sidecar()
	if w.opts.NativeSidecar {
		always := corev1.ContainerRestartPolicyAlways
		sc.RestartPolicy = &always
		spec.InitContainers = []corev1.Container{sc}
		spec.Containers = []corev1.Container{app}
	} else {
		// The injector puts the sidecar first, so that it starts before the app.
		spec.Containers = []corev1.Container{sc, app}
	}
	if len(w.opts.KwokNodes) > 0 {
		// The scheduler places the pods: only on these nodes, evenly.
		spec.NodeName = ""
		nodes := append([]string{w.c.RealNodeName()}, w.opts.KwokNodes...)
		spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: nodes}},
			}}},
		}}
		spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
			MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.DoNotSchedule,
			LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": w.opts.Name}},
		}}
		spec.Tolerations = []corev1.Toleration{{Key: "kwok.x-k8s.io/node", Operator: corev1.TolerationOpExists}}
	}
	replicas := w.replicas()
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: w.opts.Name, Namespace: w.opts.Namespace, Labels: map[string]string{"app": w.opts.Name}},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": w.opts.Name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: w.annotations()},
				Spec:       spec,
			},
		},
	}
}

// waitReady waits for Replicas pods that are Running with every container ready, then reads
// each pod's containers, cgroups, processes and network namespace from the node.
func (w *Workload) waitReady(ctx context.Context) error {
	var ready []corev1.Pod
	err := poll(ctx, fmt.Sprintf("%d ready pods of %s/%s", w.replicas(), w.opts.Namespace, w.opts.Name), func(ctx context.Context) error {
		pods, err := w.cs.CoreV1().Pods(w.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=" + w.opts.Name})
		if err != nil {
			return err
		}
		ready = ready[:0]
		var states []string
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && podReady(&p) {
				ready = append(ready, p)
				continue
			}
			states = append(states, describePod(&p))
		}
		if int32(len(ready)) < w.replicas() {
			return fmt.Errorf("%d ready; not ready: %s", len(ready), strings.Join(states, "; "))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := range ready {
		if node := ready[i].Spec.NodeName; node != w.c.RealNodeName() {
			p, err := w.startFakePod(ctx, &ready[i], node, w.pauseBin)
			if err != nil {
				return err
			}
			w.pods = append(w.pods, p)
			continue
		}
		p, err := newPod(w.c, &ready[i])
		if err != nil {
			return err
		}
		if w.opts.Proxy.Kind == ProxyDelay {
			p.DelayLogFile = w.opts.Proxy.LogFile
		}
		w.pods = append(w.pods, p)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// describePod says why a pod is not ready, for the timeout message.
func describePod(p *corev1.Pod) string {
	s := fmt.Sprintf("%s %s", p.Name, p.Status.Phase)
	for _, cs := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		switch {
		case cs.State.Waiting != nil:
			s += fmt.Sprintf(" %s=waiting(%s: %s)", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
		case cs.State.Terminated != nil:
			s += fmt.Sprintf(" %s=terminated(%s, exit %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
		case !cs.Ready:
			s += fmt.Sprintf(" %s=running,unready", cs.Name)
		}
	}
	return s
}

// poll calls check until it succeeds or ctx ends (default bound: 2 minutes).
func poll(ctx context.Context, what string, check func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
	}
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("meshpods: timed out waiting for %s: %v", what, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
