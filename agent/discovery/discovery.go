package discovery

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// PodRef names a pod.
type PodRef struct {
	Namespace, Name, UID string
}

func (r PodRef) String() string { return r.Namespace + "/" + r.Name }

// Sidecar is a meshed pod's sidecar resolved down to its processes.
type Sidecar struct {
	Pod    PodRef
	PodIPs []string
	Recognition
	// ContainerID is the runtime ID without its "containerd://" style prefix.
	ContainerID string
	// Runtime is the prefix of the status ID: "containerd", "cri-o" or "docker".
	Runtime string
	// CgroupPaths of the container per controller (Unified for cgroup v2), as procfs
	// shows them to the agent.
	CgroupPaths map[string]string
	Processes   []Process
	// ProxyUID is the UID the proxy processes run as, or ConfiguredUID when none was seen.
	ProxyUID uint32
	// CapturePorts are the redirect ports (inbound, outbound) that are known.
	CapturePorts []uint32
}

// PodError is a problem with one pod, reported beside the sidecars that did resolve.
type PodError struct {
	Pod PodRef
	Err error
}

func (e PodError) Error() string { return e.Pod.String() + ": " + e.Err.Error() }

// Snapshot is the node's meshed pods at one moment.
type Snapshot struct {
	Sidecars []Sidecar
	Errors   []PodError
}

var (
	// ErrPodNotFound is returned for a pod that is not on this node.
	ErrPodNotFound = errors.New("pod not found on this node")
	// ErrNotRunning is returned for a sidecar with no container ID yet or no process.
	ErrNotRunning = errors.New("sidecar container not running")
)

// Options tune a Discoverer.
type Options struct {
	// ProcRoot is the host's procfs; empty means DefaultProcRoot.
	ProcRoot string
	// SidecarContainers maps container names to meshes, beside the built-in names
	// (agent flag --sidecar-container name=mesh).
	SidecarContainers map[string]Mesh
	// Resync is the informer's resync period; zero disables it.
	Resync time.Duration
}

// Discoverer keeps the node's pods current from a node-scoped watch and resolves their
// sidecars to processes on demand.
type Discoverer struct {
	node    string
	opts    Options
	scanner Scanner
	factory informers.SharedInformerFactory
	lister  listersv1.PodLister
	synced  cache.InformerSynced

	mu      sync.Mutex
	started bool
}

// New returns a Discoverer for the pods scheduled to node.
func New(client kubernetes.Interface, node string, opts Options) *Discoverer {
	sel := fields.OneTermEqualSelector("spec.nodeName", node).String()
	f := informers.NewSharedInformerFactoryWithOptions(client, opts.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = sel }))
	pods := f.Core().V1().Pods()
	return &Discoverer{
		node:    node,
		opts:    opts,
		scanner: Scanner{Root: opts.ProcRoot},
		factory: f,
		lister:  pods.Lister(),
		synced:  pods.Informer().HasSynced,
	}
}

// Node is the node whose pods are watched.
func (d *Discoverer) Node() string { return d.node }

// Start runs the watch until ctx ends and waits for the first full list.
func (d *Discoverer) Start(ctx context.Context) error {
	d.mu.Lock()
	if d.started {
		d.mu.Unlock()
		return errors.New("discoverer already started")
	}
	d.started = true
	d.mu.Unlock()
	d.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), d.synced) {
		return fmt.Errorf("pod watch for node %s did not sync: %w", d.node, ctx.Err())
	}
	return nil
}

// Pods returns this node's pods as the watch last saw them, sorted by namespace and name.
// The API server filters by node; the filter is repeated here so that a source that
// ignores field selectors cannot leak other nodes' pods in.
func (d *Discoverer) Pods() []*corev1.Pod {
	all, _ := d.lister.List(labels.Everything())
	out := all[:0:0]
	for _, p := range all {
		if p.Spec.NodeName == d.node {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Snapshot recognizes every meshed pod on the node and resolves its sidecar to processes
// with one scan of procfs. Pods without a sidecar are left out; meshed pods whose sidecar
// cannot be resolved are in Errors.
func (d *Discoverer) Snapshot() (Snapshot, error) {
	type cand struct {
		pod *corev1.Pod
		rec Recognition
	}
	var cands []cand
	for _, p := range d.Pods() {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		rec, err := Recognize(p, d.opts.SidecarContainers)
		if err != nil {
			continue
		}
		cands = append(cands, cand{p, rec})
	}
	var snap Snapshot
	if len(cands) == 0 {
		return snap, nil
	}
	want := map[string]bool{}
	for _, c := range cands {
		if _, id := sidecarStatusID(c.pod, c.rec); id != "" {
			want[id] = true
		}
	}
	procs, err := d.scanner.Scan(func(id string) bool { return want[id] })
	if err != nil {
		return snap, err
	}
	for _, c := range cands {
		sc, err := resolve(c.pod, c.rec, procs)
		if err != nil {
			snap.Errors = append(snap.Errors, PodError{Pod: podRef(c.pod), Err: err})
			continue
		}
		snap.Sidecars = append(snap.Sidecars, sc)
	}
	return snap, nil
}

// Lookup resolves one pod's sidecar; the error says why there is none (ErrPodNotFound,
// ErrNoSidecar, ErrNotRunning, each wrapped with detail).
func (d *Discoverer) Lookup(namespace, name string) (Sidecar, error) {
	p, err := d.lister.Pods(namespace).Get(name)
	if err != nil || p.Spec.NodeName != d.node {
		return Sidecar{}, fmt.Errorf("%w: %s/%s on node %s", ErrPodNotFound, namespace, name, d.node)
	}
	rec, err := Recognize(p, d.opts.SidecarContainers)
	if err != nil {
		return Sidecar{}, err
	}
	_, id := sidecarStatusID(p, rec)
	procs, err := d.scanner.Scan(func(cid string) bool { return cid == id })
	if err != nil {
		return Sidecar{}, err
	}
	return resolve(p, rec, procs)
}

func podRef(p *corev1.Pod) PodRef {
	return PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)}
}

// sidecarStatusID finds the sidecar's status in the list that matches where it is
// declared (init containers' statuses for native sidecars, and so on).
func sidecarStatusID(p *corev1.Pod, rec Recognition) (runtime, id string) {
	var list []corev1.ContainerStatus
	switch rec.Kind {
	case KindInit:
		list = p.Status.InitContainerStatuses
	case KindEphemeral:
		list = p.Status.EphemeralContainerStatuses
	default:
		list = p.Status.ContainerStatuses
	}
	for _, s := range list {
		if s.Name == rec.Container {
			return StatusContainerID(s.ContainerID)
		}
	}
	return "", ""
}

func resolve(p *corev1.Pod, rec Recognition, procs map[string]*ContainerProcs) (Sidecar, error) {
	sc := Sidecar{Pod: podRef(p), Recognition: rec}
	for _, ip := range p.Status.PodIPs {
		sc.PodIPs = append(sc.PodIPs, ip.IP)
	}
	sc.Runtime, sc.ContainerID = sidecarStatusID(p, rec)
	if sc.ContainerID == "" {
		return sc, fmt.Errorf("%w: %s sidecar %q has no container ID in the pod status yet", ErrNotRunning, rec.Mesh, rec.Container)
	}
	cp := procs[sc.ContainerID]
	if cp == nil || len(cp.Processes) == 0 {
		return sc, fmt.Errorf("%w: no process found in the cgroup of %s sidecar %q (container %s)", ErrNotRunning, rec.Mesh, rec.Container, shortID(sc.ContainerID))
	}
	if cp.PodUID != "" && cp.PodUID != string(p.UID) {
		return sc, fmt.Errorf("container %s is in the cgroup of pod UID %s, not %s", shortID(sc.ContainerID), cp.PodUID, p.UID)
	}
	sc.CgroupPaths = cp.CgroupPaths
	sc.Processes = append([]Process(nil), cp.Processes...)
	ClassifyProcesses(rec.Mesh, sc.Processes)
	sc.ProxyUID = rec.ConfiguredUID
	if u, ok := observedProxyUID(sc.Processes); ok {
		sc.ProxyUID = u
	}
	for _, port := range []uint32{rec.InboundPort, rec.OutboundPort} {
		if port != 0 {
			sc.CapturePorts = append(sc.CapturePorts, port)
		}
	}
	return sc, nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
