package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/utils/ptr"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
)

const (
	dryRunNone   = "none"
	dryRunClient = "client"
	dryRunServer = "server"
)

// diagnoseTimeout bounds the look at failing pods after a wait has already timed out.
const diagnoseTimeout = 15 * time.Second

// InstallOptions holds `agent install`'s flags and what Complete derives from them.
type InstallOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Image        string
	NodeSelector string
	Wait         bool
	Timeout      time.Duration
	DryRun       string
	Output       string

	namespace    string
	nodeSelector map[string]string
	// newCluster is replaced by tests with fake clients.
	newCluster func() (*cluster, error)
}

func NewInstallOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *InstallOptions {
	return &InstallOptions{
		configFlags: flags,
		IOStreams:   streams,
		Image:       manifests.DefaultImage(),
		Wait:        true,
		Timeout:     2 * time.Minute,
		DryRun:      dryRunNone,
		newCluster:  func() (*cluster, error) { return newCluster(flags) },
	}
}

func NewCmdAgentInstall(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewInstallOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "install [flags]",
		Short: "Install or upgrade the mesh agent DaemonSet and wait until it is ready",
		Long: `Install applies the agent's Namespace, ServiceAccount, ClusterRole, ClusterRoleBinding and
DaemonSet with server-side apply (field manager "` + manifests.FieldManager + `"), then waits until an
agent is ready on every selected node. Running it again upgrades in place.`,
		Example: fmt.Sprintf(`  # Install on every Linux node and wait up to two minutes
  %[1]s agent install

  # Only on nodes labelled pool=perf, with a locally built image
  %[1]s agent install --node-selector pool=perf --image ghcr.io/kubectl-mesh/mesh-agent:dev

  # Print the manifests instead of applying them
  %[1]s agent install --dry-run=client -o yaml > mesh-agent.yaml`, displayName),
		Args: cobra.NoArgs,
		RunE: runE(o),
	}
	f := cmd.Flags()
	f.StringVar(&o.Image, "image", o.Image, "agent container image")
	f.StringVar(&o.NodeSelector, "node-selector", "", "only run agents on nodes with these labels, as key=value[,key=value]")
	f.BoolVar(&o.Wait, "wait", o.Wait, "wait until an agent is ready on every selected node")
	f.DurationVar(&o.Timeout, "timeout", o.Timeout, "how long --wait waits")
	f.StringVar(&o.DryRun, "dry-run", o.DryRun, `"client" prints the manifests without contacting the cluster; "server" sends them for validation without persisting; "none" applies`)
	f.Lookup("dry-run").NoOptDefVal = dryRunClient
	_ = cmd.RegisterFlagCompletionFunc("dry-run", fixedCompletion(dryRunNone, dryRunClient, dryRunServer))
	addOutputFlag(cmd, &o.Output, []string{outputYAML, outputJSON}, "With --dry-run, print the objects in this format.")
	_ = cmd.RegisterFlagCompletionFunc("node-selector", noFileCompletion)
	_ = cmd.RegisterFlagCompletionFunc("image", noFileCompletion)
	return cmd
}

func (o *InstallOptions) Complete(cmd *cobra.Command, _ []string) error {
	o.namespace = agentNamespace(cmd, o.configFlags)
	return nil
}

// Validate checks every flag before anything touches the cluster.
func (o *InstallOptions) Validate() error {
	if err := validateChoice("dry-run", o.DryRun, []string{dryRunNone, dryRunClient, dryRunServer}); err != nil {
		return err
	}
	if o.Output != "" {
		if err := validateChoice("output", o.Output, []string{outputYAML, outputJSON}); err != nil {
			return err
		}
		if o.DryRun == dryRunNone {
			return errors.New("-o only applies with --dry-run; use --dry-run=client -o yaml to print the manifests")
		}
	}
	if o.DryRun == dryRunClient && o.Output == "" {
		return errors.New("--dry-run=client needs -o yaml or -o json: it only prints the manifests")
	}
	if err := manifests.ValidateImage(o.Image); err != nil {
		return fmt.Errorf("invalid --image: %w", err)
	}
	if err := manifests.ValidateNamespace(o.namespace); err != nil {
		return fmt.Errorf("invalid -n: %w", err)
	}
	sel, err := manifests.ParseNodeSelector(o.NodeSelector)
	if err != nil {
		return fmt.Errorf("invalid --node-selector: %w", err)
	}
	o.nodeSelector = sel
	if o.Wait && o.Timeout <= 0 {
		return fmt.Errorf("invalid --timeout %s: must be positive (use --wait=false not to wait)", o.Timeout)
	}
	return nil
}

func (o *InstallOptions) Run(ctx context.Context) error {
	objs, err := manifests.Render(manifests.Options{Image: o.Image, Namespace: o.namespace, NodeSelector: o.nodeSelector})
	if err != nil {
		return err
	}
	if o.DryRun == dryRunClient {
		return printObjects(o.Out, o.Output, objs)
	}

	c, err := o.newCluster()
	if err != nil {
		return err
	}
	if err := c.ping(); err != nil {
		return err
	}
	if err := o.checkSingleInstall(ctx, c.clientset); err != nil {
		return err
	}
	objs, err = o.keepForeignNamespace(ctx, c.clientset, objs)
	if err != nil {
		return err
	}
	needed, err := applyAccess(c.mapper, objs)
	if err != nil {
		return err
	}
	if o.Wait && o.DryRun == dryRunNone {
		for _, verb := range []string{"list", "watch"} {
			needed = append(needed, access{Verb: verb, Group: "apps", Resource: "daemonsets", Namespace: o.namespace})
		}
	}
	if err := checkAccess(ctx, c.clientset, needed); err != nil {
		return err
	}

	applied, err := applyObjects(ctx, c.dynamic, c.mapper, objs, o.DryRun == dryRunServer, o.ErrOut)
	if err != nil {
		return err
	}
	if o.DryRun == dryRunServer {
		if o.Output != "" {
			return printObjects(o.Out, o.Output, applied)
		}
		fmt.Fprintf(o.ErrOut, "server dry run passed: %d objects would be applied\n", len(applied))
		return nil
	}
	if !o.Wait {
		fmt.Fprintf(o.ErrOut, "agent applied in namespace %s; check it with `%s agent status`\n", o.namespace, displayName)
		return nil
	}
	return o.wait(ctx, c, nodeSelectorOf(objs))
}

// checkSingleInstall refuses a second agent in another namespace: the cluster-scoped RBAC
// objects have fixed names, so two installs would fight over them.
func (o *InstallOptions) checkSingleInstall(ctx context.Context, cs kubernetes.Interface) error {
	list, err := cs.AppsV1().DaemonSets(metav1.NamespaceAll).List(ctx, metav1.ListOptions{LabelSelector: manifests.ManagedBySelector})
	if apierrors.IsForbidden(err) {
		return nil // a namespace-bound user cannot look; the apply will still do the right thing
	}
	if err != nil {
		return fmt.Errorf("looking for an existing agent: %w", err)
	}
	for _, ds := range list.Items {
		if ds.Namespace != o.namespace {
			return fmt.Errorf("the agent is already installed in namespace %s; run `%s agent uninstall` first, or pass -n %s to upgrade it", ds.Namespace, displayName, ds.Namespace)
		}
	}
	return nil
}

// keepForeignNamespace leaves out the Namespace object when the namespace exists and was not
// created by the plugin: applying it would label the namespace as ours, and uninstall would
// then delete it with everything in it.
func (o *InstallOptions) keepForeignNamespace(ctx context.Context, cs kubernetes.Interface, objs []*unstructured.Unstructured) ([]*unstructured.Unstructured, error) {
	ns, err := cs.CoreV1().Namespaces().Get(ctx, o.namespace, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
		return objs, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading namespace %s: %w", o.namespace, err)
	}
	if ns.Labels[manifests.LabelManagedBy] == manifests.FieldManager {
		return objs, nil
	}
	fmt.Fprintf(o.ErrOut, "namespace %s exists and is not managed by %s; leaving it as it is (it must admit privileged pods)\n", o.namespace, manifests.FieldManager)
	var out []*unstructured.Unstructured
	for _, u := range objs {
		if u.GetKind() != "Namespace" {
			out = append(out, u)
		}
	}
	return out, nil
}

// applyError says how far an interrupted apply got, so the user knows what is in the cluster.
type applyError struct {
	failed  string
	applied []string
	pending []string
	err     error
}

func (e *applyError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "applying %s: %v", e.failed, e.err)
	if len(e.applied) > 0 {
		fmt.Fprintf(&b, "; applied: %s", strings.Join(e.applied, ", "))
	} else {
		b.WriteString("; nothing was applied")
	}
	fmt.Fprintf(&b, "; not applied: %s", strings.Join(append([]string{e.failed}, e.pending...), ", "))
	b.WriteString("; fix the cause and run the install again (it is safe to repeat)")
	return b.String()
}

func (e *applyError) Unwrap() error { return e.err }

func objectRef(u *unstructured.Unstructured) string {
	if u.GetNamespace() != "" {
		return fmt.Sprintf("%s %s/%s", u.GetKind(), u.GetNamespace(), u.GetName())
	}
	return u.GetKind() + " " + u.GetName()
}

// applyObjects server-side applies objs in order and returns what the API server stored.
// Force takes over fields another manager set, since the plugin owns these objects.
func applyObjects(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, objs []*unstructured.Unstructured, dryRun bool, progress io.Writer) ([]*unstructured.Unstructured, error) {
	opts := metav1.PatchOptions{FieldManager: manifests.FieldManager, Force: ptr.To(true)}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	var applied []string
	var out []*unstructured.Unstructured
	for i, u := range objs {
		fail := func(err error) error {
			var pending []string
			for _, p := range objs[i+1:] {
				pending = append(pending, objectRef(p))
			}
			return &applyError{failed: objectRef(u), applied: applied, pending: pending, err: err}
		}
		gvk := u.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return out, fail(err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
		}
		data, err := json.Marshal(u)
		if err != nil {
			return out, fail(err)
		}
		got, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, data, opts)
		if err != nil {
			return out, fail(err)
		}
		applied = append(applied, objectRef(u))
		out = append(out, got)
		suffix := ""
		if dryRun {
			suffix = " (server dry run)"
		}
		fmt.Fprintf(progress, "%s applied%s\n", objectRef(u), suffix)
	}
	return out, nil
}

// nodeSelectorOf reads the DaemonSet's effective nodeSelector from the rendered objects.
func nodeSelectorOf(objs []*unstructured.Unstructured) labels.Selector {
	for _, u := range objs {
		if u.GetKind() == "DaemonSet" {
			m, _, _ := unstructured.NestedStringMap(u.Object, "spec", "template", "spec", "nodeSelector")
			return labels.SelectorFromSet(m)
		}
	}
	return labels.Everything()
}

// wait watches the DaemonSet until every scheduled pod runs the new template and is ready,
// printing "N/M agents ready" whenever that changes. On timeout it shows why each missing
// agent is not ready.
func (o *InstallOptions) wait(ctx context.Context, c *cluster, nodes labels.Selector) error {
	wctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	last := ""
	var ready, desired int32
	observed := false
	err := waitForDaemonSet(wctx, c.clientset, o.namespace, manifests.AgentName, func(ds *appsv1.DaemonSet) (bool, error) {
		var done bool
		ready, desired, done = rolloutState(ds)
		if ds.Status.ObservedGeneration < ds.Generation {
			return false, nil // the counts still describe the previous spec
		}
		observed = true
		if msg := fmt.Sprintf("%d/%d agents ready", ready, desired); msg != last {
			fmt.Fprintln(o.ErrOut, msg)
			last = msg
		}
		if desired == 0 {
			return false, fmt.Errorf("no node matches the DaemonSet's node selector %s; check `kubectl get nodes -l %s`", nodes, nodes)
		}
		return done, nil
	})
	switch {
	case err == nil:
		fmt.Fprintf(o.ErrOut, "agent ready on %d nodes; see `%s agent status`\n", desired, displayName)
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted while waiting: %d/%d agents ready; the install continues in the cluster", ready, desired)
	case wctx.Err() != nil && !observed:
		return fmt.Errorf("timed out after %s: the DaemonSet controller never processed DaemonSet %s/%s; check that kube-controller-manager runs", o.Timeout, o.namespace, manifests.AgentName)
	case wctx.Err() != nil:
		return o.diagnose(ctx, c.clientset, nodes, ready, desired)
	default:
		return err
	}
}

// rolloutState reports a DaemonSet's progress the way `kubectl rollout status` judges it.
func rolloutState(ds *appsv1.DaemonSet) (ready, desired int32, done bool) {
	s := ds.Status
	desired = s.DesiredNumberScheduled
	ready = min(s.NumberReady, s.UpdatedNumberScheduled)
	done = s.ObservedGeneration >= ds.Generation && desired > 0 &&
		s.UpdatedNumberScheduled == desired && s.NumberAvailable == desired && s.NumberReady == desired
	return ready, desired, done
}

// waitForDaemonSet runs cond on every state of the named DaemonSet until it returns true, an
// error, or ctx ends. A deleted DaemonSet is an error: nothing will ever become ready.
func waitForDaemonSet(ctx context.Context, cs kubernetes.Interface, ns, name string, cond func(*appsv1.DaemonSet) (bool, error)) error {
	byName := fields.OneTermEqualSelector("metadata.name", name).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			opts.FieldSelector = byName
			return cs.AppsV1().DaemonSets(ns).List(ctx, opts)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			opts.FieldSelector = byName
			return cs.AppsV1().DaemonSets(ns).Watch(ctx, opts)
		},
	}
	// The wrapper passes on whether cs can stream the initial list (fakes cannot).
	_, err := watchtools.UntilWithSync(ctx, cache.ToListWatcherWithWatchListSemantics(lw, cs), &appsv1.DaemonSet{}, nil, func(ev watch.Event) (bool, error) {
		switch ev.Type {
		case watch.Deleted:
			return false, fmt.Errorf("DaemonSet %s/%s was deleted while waiting", ns, name)
		case watch.Added, watch.Modified:
			ds, ok := ev.Object.(*appsv1.DaemonSet)
			if !ok || ds.Name != name {
				return false, nil
			}
			return cond(ds)
		}
		return false, nil
	})
	return err
}

// diagnose runs after a timed-out wait: it prints, per node, why the agent is not ready.
func (o *InstallOptions) diagnose(ctx context.Context, cs kubernetes.Interface, nodes labels.Selector, ready, desired int32) error {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), diagnoseTimeout)
	defer cancel()
	targets, err := agents.Discover(dctx, cs, o.namespace, nodes)
	next := fmt.Sprintf("`kubectl -n %s describe daemonset %s`", o.namespace, manifests.AgentName)
	if err != nil {
		fmt.Fprintf(o.ErrOut, "could not list the agent pods to say why: %v\n", err)
	} else {
		var bad []agents.Target
		for _, t := range targets {
			if t.Problem != "" {
				bad = append(bad, t)
			}
		}
		if len(bad) > 0 {
			writeProblemTable(o.ErrOut, bad)
			if bad[0].Pod != nil {
				next = fmt.Sprintf("`kubectl -n %s describe pod %s`", o.namespace, bad[0].Pod.Name)
			}
		}
	}
	return fmt.Errorf("timed out after %s with %d/%d agents ready; see %s", o.Timeout, ready, desired, next)
}

// writeProblemTable prints one row per node whose agent is not working, with the reason.
func writeProblemTable(w io.Writer, targets []agents.Target) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tPOD\tPROBLEM")
	for _, t := range targets {
		pod := "<none>"
		if t.Pod != nil {
			pod = t.Pod.Name
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", orNone(t.Node), pod, t.Problem)
	}
	_ = tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

// printObjects writes objs for `kubectl apply -f`: a multi-document YAML stream or a v1 List.
func printObjects(w io.Writer, format string, objs []*unstructured.Unstructured) error {
	if format == outputYAML {
		b, err := manifests.YAML(objs)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	items := make([]any, len(objs))
	for i, u := range objs {
		items[i] = u.Object
	}
	return writeData(w, outputJSON, map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
}
