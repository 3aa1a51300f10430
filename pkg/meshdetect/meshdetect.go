// Package meshdetect finds the service meshes installed in a cluster from what their installs
// leave in the API: control-plane workloads and pods, the API groups of their CRDs, sidecar
// injection webhooks, and the sidecars (or, for Istio ambient, the redirection marks) in pods.
//
// It reads only: pods, Deployments, DaemonSets, StatefulSets and MutatingWebhookConfigurations
// cluster-wide, and the discovery API. A list the caller may not make is a warning in the
// report, not a failure, so that a namespace-scoped account still learns what it can.
package meshdetect

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sdiscovery "k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
)

// Report is what Detect found. Every list in it is sorted.
type Report struct {
	Meshes []Mesh `json:"meshes"`
	// Warnings name what could not be read (RBAC) and so is missing from the report.
	Warnings []string `json:"warnings,omitempty"`
}

// Mesh is one detected mesh. A mesh installed twice (Istio revisions, several OSM meshes)
// is one Mesh whose components and versions show both. Gateways and waypoints the mesh runs
// are listed among its control-plane components, not counted in its data plane; so are
// control-plane pods that are themselves meshed (Linkerd's).
type Mesh struct {
	// Name is the mesh id (istio, linkerd, kuma, consul, osm, nginx, cilium, traefik), as
	// the agent's sidecar discovery names meshes.
	Name        discovery.Mesh `json:"name"`
	DisplayName string         `json:"displayName"`
	// Namespace is where the main control-plane component runs.
	Namespace string `json:"namespace,omitempty"`
	// Version is the main component's release (the most common when revisions differ).
	Version string `json:"version,omitempty"`
	// Versions lists every release of the main component, most pods first, when there is
	// more than one (a canary upgrade).
	Versions     []string          `json:"versions,omitempty"`
	ControlPlane []ControlPlanePod `json:"controlPlane"`
	Workloads    []Workload        `json:"workloads"`
	DataPlane    []NamespaceData   `json:"dataPlane"`
	Evidence     Evidence          `json:"evidence"`
	// Notes explain an incomplete picture (CRDs without a control plane, and so on).
	Notes []string `json:"notes,omitempty"`
}

// ControlPlanePod is a running (not completed) pod of the control plane.
type ControlPlanePod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Component string `json:"component"`
	Version   string `json:"version,omitempty"`
	Node      string `json:"node,omitempty"`
	Phase     string `json:"phase"`
	// ReadyContainers of Containers (regular and native sidecar containers) are ready.
	ReadyContainers int   `json:"readyContainers"`
	Containers      int   `json:"containers"`
	Restarts        int32 `json:"restarts"`
}

// Ready is the kubectl-style "ready/total".
func (p ControlPlanePod) Ready() string { return fmt.Sprintf("%d/%d", p.ReadyContainers, p.Containers) }

// Workload is a control-plane Deployment, DaemonSet or StatefulSet.
type Workload struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Component string `json:"component"`
	Version   string `json:"version,omitempty"`
	Desired   int32  `json:"desired"`
	Ready     int32  `json:"ready"`
}

// NamespaceData is a mesh's data plane in one namespace.
type NamespaceData struct {
	Namespace string `json:"namespace"`
	// MeshedPods counts pods with a sidecar and, for Istio ambient, pods whose traffic is
	// redirected to the node's ztunnel.
	MeshedPods    int `json:"meshedPods"`
	Sidecars      int `json:"sidecars"`
	ReadySidecars int `json:"readySidecars"`
	// ProxyVersions are the sidecars' image releases.
	ProxyVersions []string `json:"proxyVersions,omitempty"`
}

// Evidence is what the mesh was recognised by.
type Evidence struct {
	// Workloads as "Kind namespace/name".
	Workloads []string `json:"workloads,omitempty"`
	// APIGroups served by the apiserver that belong to the mesh, and their resources as
	// CRD names ("virtualservices.networking.istio.io").
	APIGroups []string `json:"apiGroups,omitempty"`
	Resources []string `json:"resources,omitempty"`
	// Webhooks are the mesh's MutatingWebhookConfigurations.
	Webhooks []string `json:"webhooks,omitempty"`
	// Sidecars is the number of injected sidecars found in pods.
	Sidecars int `json:"sidecars"`
}

// Options tune Detect.
type Options struct {
	// SidecarContainers maps further container names to meshes, for proxies injected under
	// another name (as the agent's --sidecar flag).
	SidecarContainers map[string]discovery.Mesh
	// PageSize bounds each list request. Default 500.
	PageSize int64
}

// inventory is everything Detect read.
type inventory struct {
	pods         []corev1.Pod
	deployments  []appsv1.Deployment
	daemonSets   []appsv1.DaemonSet
	statefulSets []appsv1.StatefulSet
	webhooks     []admissionv1.MutatingWebhookConfiguration
	groups       []metav1.APIGroup
	// which lists succeeded
	podsOK, workloadsOK bool

	mu       sync.Mutex
	warnings []string
}

func (inv *inventory) warn(format string, args ...any) {
	inv.mu.Lock()
	defer inv.mu.Unlock()
	inv.warnings = append(inv.warnings, fmt.Sprintf(format, args...))
}

// tolerable errors are the ones one kind of object can have alone: not allowed to list it,
// or the server does not serve it. Anything else (the apiserver unreachable, the context
// done) fails Detect.
func tolerable(err error) bool {
	return apierrors.IsForbidden(err) || apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err)
}

// listAll pages through a list.
func listAll[T any](ctx context.Context, size int64, list func(context.Context, metav1.ListOptions) ([]T, string, error)) ([]T, error) {
	var out []T
	opts := metav1.ListOptions{Limit: size}
	for {
		items, next, err := list(ctx, opts)
		if err != nil {
			return nil, err
		}
		out = append(out, items...)
		if next == "" {
			return out, nil
		}
		opts.Continue = next
	}
}

// Detect reads the cluster and reports the meshes found, sorted by mesh id.
func Detect(ctx context.Context, cs kubernetes.Interface, opts Options) (*Report, error) {
	if opts.PageSize <= 0 {
		opts.PageSize = 500
	}
	inv, err := gather(ctx, cs, opts.PageSize)
	if err != nil {
		return nil, err
	}
	r := analyse(inv, cs.Discovery(), opts)
	return r, nil
}

func gather(ctx context.Context, cs kubernetes.Interface, size int64) (*inventory, error) {
	inv := &inventory{}
	g, ctx := errgroup.WithContext(ctx)
	// each runs one list; a tolerable error becomes a warning saying what is missing.
	each := func(what, missing string, ok *bool, run func() error) {
		g.Go(func() error {
			err := run()
			switch {
			case err == nil:
				if ok != nil {
					*ok = true
				}
				return nil
			case tolerable(err):
				inv.warn("cannot list %s (%s): %s", what, reason(err), missing)
				return nil
			}
			return fmt.Errorf("meshdetect: list %s: %w", what, err)
		})
	}
	var depOK, dsOK, stsOK bool
	each("pods", "control-plane pods and the data plane are not shown", &inv.podsOK, func() (err error) {
		inv.pods, err = listAll(ctx, size, func(ctx context.Context, o metav1.ListOptions) ([]corev1.Pod, string, error) {
			l, err := cs.CoreV1().Pods("").List(ctx, o)
			if err != nil {
				return nil, "", err
			}
			return l.Items, l.Continue, nil
		})
		return err
	})
	each("deployments.apps", "control-plane Deployments are not shown", &depOK, func() (err error) {
		inv.deployments, err = listAll(ctx, size, func(ctx context.Context, o metav1.ListOptions) ([]appsv1.Deployment, string, error) {
			l, err := cs.AppsV1().Deployments("").List(ctx, o)
			if err != nil {
				return nil, "", err
			}
			return l.Items, l.Continue, nil
		})
		return err
	})
	each("daemonsets.apps", "control-plane DaemonSets are not shown", &dsOK, func() (err error) {
		inv.daemonSets, err = listAll(ctx, size, func(ctx context.Context, o metav1.ListOptions) ([]appsv1.DaemonSet, string, error) {
			l, err := cs.AppsV1().DaemonSets("").List(ctx, o)
			if err != nil {
				return nil, "", err
			}
			return l.Items, l.Continue, nil
		})
		return err
	})
	each("statefulsets.apps", "control-plane StatefulSets are not shown", &stsOK, func() (err error) {
		inv.statefulSets, err = listAll(ctx, size, func(ctx context.Context, o metav1.ListOptions) ([]appsv1.StatefulSet, string, error) {
			l, err := cs.AppsV1().StatefulSets("").List(ctx, o)
			if err != nil {
				return nil, "", err
			}
			return l.Items, l.Continue, nil
		})
		return err
	})
	each("mutatingwebhookconfigurations.admissionregistration.k8s.io", "injection webhooks are not shown", nil, func() (err error) {
		inv.webhooks, err = listAll(ctx, size, func(ctx context.Context, o metav1.ListOptions) ([]admissionv1.MutatingWebhookConfiguration, string, error) {
			l, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, o)
			if err != nil {
				return nil, "", err
			}
			return l.Items, l.Continue, nil
		})
		return err
	})
	each("API groups", "CRD groups are not shown", nil, func() error {
		// Discovery takes no context; it is bounded by the client's timeout.
		gl, err := cs.Discovery().ServerGroups()
		if gl != nil {
			inv.groups = gl.Groups
		}
		if err != nil && k8sdiscovery.IsGroupDiscoveryFailedError(err) {
			inv.warn("API discovery incomplete: %v", err)
			return nil
		}
		return err
	})
	if err := g.Wait(); err != nil {
		return nil, err
	}
	inv.workloadsOK = depOK && dsOK && stsOK
	return inv, nil
}

func reason(err error) string {
	if r := apierrors.ReasonForError(err); r != metav1.StatusReasonUnknown {
		return strings.ToLower(string(r))
	}
	return err.Error()
}

// builder accumulates one mesh.
type builder struct {
	sig  *signature
	mesh Mesh
	// main-component versions and namespaces, by rank, counted per pod or workload.
	versions   map[int]map[string]int
	namespaces map[int]map[string]int
	// from pods rather than workloads: pods win, as they show what runs
	podRanks  map[int]bool
	data      map[string]*NamespaceData
	proxyVers map[string]map[string]bool
	hookNS    map[string]int
	groups    bool // mesh-specific groups found
	shared    []string
	sharedRes []string
}

func newBuilder(sig *signature) *builder {
	return &builder{
		sig:        sig,
		mesh:       Mesh{Name: sig.mesh, DisplayName: sig.display},
		versions:   map[int]map[string]int{},
		namespaces: map[int]map[string]int{},
		podRanks:   map[int]bool{},
		data:       map[string]*NamespaceData{},
		proxyVers:  map[string]map[string]bool{},
		hookNS:     map[string]int{},
	}
}

func count(m map[int]map[string]int, rank int, key string) {
	if m[rank] == nil {
		m[rank] = map[string]int{}
	}
	m[rank][key]++
}

// claim finds the mesh and component of a subject.
func claim(s *subject) (*signature, component, bool) {
	for i := range signatures {
		if c, ok := signatures[i].classify(s); ok {
			return &signatures[i], c, true
		}
	}
	return nil, component{}, false
}

func analyse(inv *inventory, disc k8sdiscovery.DiscoveryInterface, opts Options) *Report {
	builders := map[discovery.Mesh]*builder{}
	get := func(sig *signature) *builder {
		b, ok := builders[sig.mesh]
		if !ok {
			b = newBuilder(sig)
			builders[sig.mesh] = b
		}
		return b
	}

	// Control-plane workloads.
	addWorkload := func(kind string, meta metav1.ObjectMeta, tmpl corev1.PodTemplateSpec, desired, ready int32) {
		s := &subject{namespace: meta.Namespace, name: meta.Name, labels: merged(meta.Labels, tmpl.Labels),
			annotations: tmpl.Annotations, containers: append(slices.Clone(tmpl.Spec.Containers), tmpl.Spec.InitContainers...)}
		sig, c, ok := claim(s)
		if !ok {
			return
		}
		b := get(sig)
		v := sig.version(s)
		b.mesh.Workloads = append(b.mesh.Workloads, Workload{Kind: kind, Namespace: meta.Namespace, Name: meta.Name,
			Component: c.name, Version: v, Desired: desired, Ready: ready})
		b.mesh.Evidence.Workloads = append(b.mesh.Evidence.Workloads, kind+" "+meta.Namespace+"/"+meta.Name)
		if v != "" {
			count(b.versions, c.rank, "w:"+v)
		}
		count(b.namespaces, c.rank, "w:"+meta.Namespace)
	}
	for _, d := range inv.deployments {
		desired := int32(1)
		if d.Spec.Replicas != nil {
			desired = *d.Spec.Replicas
		}
		addWorkload("Deployment", d.ObjectMeta, d.Spec.Template, desired, d.Status.ReadyReplicas)
	}
	for _, d := range inv.daemonSets {
		addWorkload("DaemonSet", d.ObjectMeta, d.Spec.Template, d.Status.DesiredNumberScheduled, d.Status.NumberReady)
	}
	for _, d := range inv.statefulSets {
		desired := int32(1)
		if d.Spec.Replicas != nil {
			desired = *d.Spec.Replicas
		}
		addWorkload("StatefulSet", d.ObjectMeta, d.Spec.Template, desired, d.Status.ReadyReplicas)
	}

	// Pods: control plane first, the rest is data plane.
	for i := range inv.pods {
		p := &inv.pods[i]
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		s := &subject{namespace: p.Namespace, name: ownerName(p), labels: p.Labels, annotations: p.Annotations,
			containers: append(slices.Clone(p.Spec.Containers), p.Spec.InitContainers...)}
		if sig, c, ok := claim(s); ok {
			b := get(sig)
			v := sig.version(s)
			ready, total := containerReadiness(p)
			b.mesh.ControlPlane = append(b.mesh.ControlPlane, ControlPlanePod{
				Namespace: p.Namespace, Name: p.Name, Component: c.name, Version: v, Node: p.Spec.NodeName,
				Phase: string(p.Status.Phase), ReadyContainers: ready, Containers: total, Restarts: restarts(p),
			})
			if v != "" {
				count(b.versions, c.rank, "p:"+v)
			}
			count(b.namespaces, c.rank, "p:"+p.Namespace)
			b.podRanks[c.rank] = true
			continue
		}
		rec, err := discovery.Recognize(p, opts.SidecarContainers)
		switch {
		case err == nil:
			sig := signatureOf(rec.Mesh)
			if sig == nil {
				continue
			}
			b := get(sig)
			nd := b.ns(p.Namespace)
			nd.MeshedPods++
			nd.Sidecars++
			if containerReady(p, rec.Container) {
				nd.ReadySidecars++
			}
			b.mesh.Evidence.Sidecars++
			if v := sidecarVersion(p, rec.Container); v != "" {
				if b.proxyVers[p.Namespace] == nil {
					b.proxyVers[p.Namespace] = map[string]bool{}
				}
				b.proxyVers[p.Namespace][v] = true
			}
		case p.Annotations["ambient.istio.io/redirection"] == "enabled":
			b := get(signatureOf(discovery.MeshIstio))
			b.ns(p.Namespace).MeshedPods++
		}
	}

	// Injection webhooks.
	for _, wc := range inv.webhooks {
		for i := range signatures {
			sig := &signatures[i]
			if ns, ok := sig.matchWebhook(&wc); ok {
				b := get(sig)
				b.mesh.Evidence.Webhooks = append(b.mesh.Evidence.Webhooks, wc.Name)
				if ns != "" {
					b.hookNS[ns]++
				}
				break
			}
		}
	}

	// API groups. Shared groups are kept aside until the mesh is known to be there.
	for _, g := range inv.groups {
		for i := range signatures {
			sig := &signatures[i]
			own, shared := groupIn(g.Name, sig.groups), groupIn(g.Name, sig.sharedGroups)
			if !own && !shared {
				continue
			}
			res := groupResources(disc, g)
			if own {
				b := get(sig)
				b.groups = true
				b.mesh.Evidence.APIGroups = append(b.mesh.Evidence.APIGroups, g.Name)
				b.mesh.Evidence.Resources = append(b.mesh.Evidence.Resources, res...)
				break
			}
			b := get(sig)
			b.shared = append(b.shared, g.Name)
			b.sharedRes = append(b.sharedRes, res...)
		}
	}

	r := &Report{Meshes: []Mesh{}, Warnings: inv.warnings}
	for _, b := range builders {
		if m, ok := b.finish(inv); ok {
			r.Meshes = append(r.Meshes, m)
		}
	}
	sort.Slice(r.Meshes, func(i, j int) bool { return r.Meshes[i].Name < r.Meshes[j].Name })
	sort.Strings(r.Warnings)
	return r
}

func (b *builder) ns(name string) *NamespaceData {
	nd, ok := b.data[name]
	if !ok {
		nd = &NamespaceData{Namespace: name}
		b.data[name] = nd
	}
	return nd
}

// finish completes the mesh, or drops it when nothing but shared API groups pointed at it.
func (b *builder) finish(inv *inventory) (Mesh, bool) {
	m := b.mesh
	hasCP := len(m.ControlPlane) > 0 || len(m.Workloads) > 0
	if !hasCP && !b.groups && len(m.Evidence.Webhooks) == 0 && len(b.data) == 0 {
		return Mesh{}, false
	}
	m.Evidence.APIGroups = append(m.Evidence.APIGroups, b.shared...)
	m.Evidence.Resources = append(m.Evidence.Resources, b.sharedRes...)

	// The main component: the lowest rank seen, preferring what pods show over workloads.
	ranks := slices.Sorted(maps.Keys(b.namespaces))
	if len(ranks) > 0 {
		rank := ranks[0]
		prefix := "w:"
		if b.podRanks[rank] {
			prefix = "p:"
		}
		if ns := byCount(b.namespaces[rank], prefix); len(ns) > 0 {
			m.Namespace = ns[0]
		}
		m.Versions = byCount(b.versions[rank], prefix)
		if len(m.Versions) > 0 {
			m.Version = m.Versions[0]
		}
		if len(m.Versions) < 2 {
			m.Versions = nil
		}
	} else if ns := byCount(map[string]int(b.hookNS), ""); len(ns) > 0 {
		m.Namespace = ns[0]
	}

	m.ControlPlane = orEmpty(m.ControlPlane)
	slices.SortFunc(m.ControlPlane, func(a, c ControlPlanePod) int {
		return cmp.Or(cmp.Compare(a.Namespace, c.Namespace), cmp.Compare(a.Component, c.Component), cmp.Compare(a.Name, c.Name))
	})
	m.Workloads = orEmpty(m.Workloads)
	slices.SortFunc(m.Workloads, func(a, c Workload) int {
		return cmp.Or(cmp.Compare(a.Namespace, c.Namespace), cmp.Compare(a.Kind, c.Kind), cmp.Compare(a.Name, c.Name))
	})
	m.DataPlane = []NamespaceData{}
	for ns, nd := range b.data {
		nd.ProxyVersions = slices.Sorted(maps.Keys(b.proxyVers[ns]))
		m.DataPlane = append(m.DataPlane, *nd)
	}
	slices.SortFunc(m.DataPlane, func(a, c NamespaceData) int { return cmp.Compare(a.Namespace, c.Namespace) })
	for _, l := range []*[]string{&m.Evidence.Workloads, &m.Evidence.APIGroups, &m.Evidence.Resources, &m.Evidence.Webhooks} {
		slices.Sort(*l)
		*l = slices.Compact(*l)
	}

	// Only claim absence where the lists that would show a control plane were read.
	if !hasCP && inv.podsOK && inv.workloadsOK {
		switch {
		case len(b.data) > 0:
			m.Notes = append(m.Notes, "meshed pods but no control plane in this cluster: it runs elsewhere (multi-cluster), or the mesh was removed and these pods not restarted")
		case len(m.Evidence.Webhooks) > 0:
			m.Notes = append(m.Notes, "an injection webhook is registered but no control plane runs: pod creation in injected namespaces may fail or go uninjected")
		default:
			m.Notes = append(m.Notes, "API groups are served but no control plane runs: CRDs left behind by an uninstall")
		}
	}
	return m, true
}

// byCount returns the keys with the prefix (stripped), most counted first, ties by name.
func byCount(m map[string]int, prefix string) []string {
	var out []string
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
	for i := range out {
		out[i] = strings.TrimPrefix(out[i], prefix)
	}
	return out
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func merged(a, b map[string]string) map[string]string {
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

// ownerName is the name of the workload that owns a pod: a ReplicaSet's name less its
// pod-template-hash is its Deployment's.
func ownerName(p *corev1.Pod) string {
	for _, o := range p.OwnerReferences {
		if o.Controller == nil || !*o.Controller {
			continue
		}
		if o.Kind == "ReplicaSet" {
			if h := p.Labels["pod-template-hash"]; h != "" {
				if n, ok := strings.CutSuffix(o.Name, "-"+h); ok {
					return n
				}
			}
		}
		return o.Name
	}
	return p.Name
}

// containerReadiness counts the pod's long-running containers (regular and native
// sidecars) and those ready.
func containerReadiness(p *corev1.Pod) (ready, total int) {
	long := map[string]bool{}
	for _, c := range p.Spec.Containers {
		long[c.Name] = true
	}
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			long[c.Name] = true
		}
	}
	for _, st := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		if long[st.Name] && st.Ready {
			ready++
		}
	}
	return ready, len(long)
}

func restarts(p *corev1.Pod) int32 {
	var n int32
	for _, st := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		n += st.RestartCount
	}
	return n
}

func containerReady(p *corev1.Pod, name string) bool {
	for _, st := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		if st.Name == name {
			return st.Ready
		}
	}
	return false
}

func sidecarVersion(p *corev1.Pod, name string) string {
	for _, c := range append(slices.Clone(p.Spec.Containers), p.Spec.InitContainers...) {
		if c.Name == name {
			if v := ImageVersion(c.Image); v != "" {
				return v
			}
		}
	}
	return p.Annotations["linkerd.io/proxy-version"]
}

// matchWebhook reports whether a webhook configuration is the mesh's injector, and the
// namespace of the service it calls.
func (sig *signature) matchWebhook(wc *admissionv1.MutatingWebhookConfiguration) (string, bool) {
	match := false
	for _, p := range sig.hookConfigs {
		if strings.HasPrefix(wc.Name, p) {
			match = true
		}
	}
	ns := ""
	for _, h := range wc.Webhooks {
		for _, suf := range sig.hookNames {
			if h.Name == suf || strings.HasSuffix(h.Name, "."+suf) {
				match = true
			}
		}
		if svc := h.ClientConfig.Service; svc != nil {
			for _, n := range sig.hookServices {
				if nameIs(svc.Name, n) {
					match = true
				}
			}
			if ns == "" {
				ns = svc.Namespace
			}
		}
	}
	return ns, match
}

// groupIn reports whether group is one of suffixes or a subdomain of one.
func groupIn(group string, suffixes []string) bool {
	for _, s := range suffixes {
		if group == s || strings.HasSuffix(group, "."+s) {
			return true
		}
	}
	return false
}

// groupResources names a group's top-level resources the way CRDs are named. A group whose
// resources cannot be read is still evidence by its name.
func groupResources(disc k8sdiscovery.DiscoveryInterface, g metav1.APIGroup) []string {
	gv := g.PreferredVersion.GroupVersion
	if gv == "" && len(g.Versions) > 0 {
		gv = g.Versions[0].GroupVersion
	}
	if gv == "" {
		return nil
	}
	rl, err := disc.ServerResourcesForGroupVersion(gv)
	if err != nil || rl == nil {
		return nil
	}
	var out []string
	for _, r := range rl.APIResources {
		if !strings.Contains(r.Name, "/") {
			out = append(out, r.Name+"."+g.Name)
		}
	}
	return out
}

// ErrNotDetected is returned by Find for a mesh the report does not hold.
var ErrNotDetected = errors.New("mesh not detected")

// Find returns the report's mesh with the id, or an error naming the meshes that were found.
func (r *Report) Find(id discovery.Mesh) (*Mesh, error) {
	var found []string
	for i := range r.Meshes {
		if r.Meshes[i].Name == id {
			return &r.Meshes[i], nil
		}
		found = append(found, string(r.Meshes[i].Name))
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("%w: %s (no mesh found in the cluster)", ErrNotDetected, id)
	}
	return nil, fmt.Errorf("%w: %s (found: %s)", ErrNotDetected, id, strings.Join(found, ", "))
}
