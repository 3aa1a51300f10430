package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/dynamic"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
)

const (
	cascadeBackground = "background"
	cascadeForeground = "foreground"
)

// protectedNamespaces are never deleted, whatever labels someone put on them.
var protectedNamespaces = []string{"default", "kube-system", "kube-public", "kube-node-lease"}

// UninstallOptions holds `agent uninstall`'s flags.
type UninstallOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Wait    bool
	Timeout time.Duration
	Cascade string

	pollInterval time.Duration
	newCluster   func() (*cluster, error)
}

func NewUninstallOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *UninstallOptions {
	return &UninstallOptions{
		configFlags:  flags,
		IOStreams:    streams,
		Wait:         true,
		Timeout:      2 * time.Minute,
		Cascade:      cascadeBackground,
		pollInterval: time.Second,
		newCluster:   func() (*cluster, error) { return newCluster(flags) },
	}
}

func NewCmdAgentUninstall(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewUninstallOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "uninstall [flags]",
		Short: "Remove everything the plugin installed",
		Long: `Uninstall deletes every object labelled ` + manifests.ManagedBySelector + `, in every namespace,
of the kinds install creates. Running it when nothing is installed succeeds.`,
		Example: fmt.Sprintf(`  # Remove the agent and wait until its pods are gone
  %[1]s agent uninstall

  # Return at once; the cluster finishes the deletion
  %[1]s agent uninstall --wait=false`, displayName),
		Args: cobra.NoArgs,
		RunE: runE(o),
	}
	f := cmd.Flags()
	f.BoolVar(&o.Wait, "wait", o.Wait, "wait until the objects are gone")
	f.DurationVar(&o.Timeout, "timeout", o.Timeout, "how long --wait waits")
	f.StringVar(&o.Cascade, "cascade", o.Cascade, `"background" deletes owners at once and their pods afterwards; "foreground" deletes the pods first`)
	_ = cmd.RegisterFlagCompletionFunc("cascade", fixedCompletion(cascadeBackground, cascadeForeground))
	return cmd
}

// Complete has nothing to derive: uninstall works across namespaces, by label.
func (o *UninstallOptions) Complete(*cobra.Command, []string) error { return nil }

func (o *UninstallOptions) Validate() error {
	if err := validateChoice("cascade", o.Cascade, []string{cascadeBackground, cascadeForeground}); err != nil {
		return err
	}
	if o.Wait && o.Timeout <= 0 {
		return fmt.Errorf("invalid --timeout %s: must be positive (use --wait=false not to wait)", o.Timeout)
	}
	return nil
}

// found is one object to delete.
type found struct {
	gvr        schema.GroupVersionResource
	kind       string
	namespace  string
	name       string
	namespaced bool
	// terminating objects are already being deleted; deleting them again changes nothing.
	terminating bool
}

func (f found) String() string {
	if f.namespace != "" {
		return fmt.Sprintf("%s %s/%s", f.kind, f.namespace, f.name)
	}
	return f.kind + " " + f.name
}

func (o *UninstallOptions) Run(ctx context.Context) error {
	c, err := o.newCluster()
	if err != nil {
		return err
	}
	if err := c.ping(); err != nil {
		return err
	}
	kinds, err := uninstallKinds(c.mapper)
	if err != nil {
		return err
	}
	var needed []access
	for _, k := range kinds {
		for _, verb := range []string{"list", "delete"} {
			needed = append(needed, access{Verb: verb, Group: k.gvr.Group, Resource: k.gvr.Resource})
		}
	}
	if err := checkAccess(ctx, c.clientset, needed); err != nil {
		return err
	}

	objs, protected, err := listManaged(ctx, c.dynamic, kinds)
	if err != nil {
		return err
	}
	for _, p := range protected {
		fmt.Fprintf(o.ErrOut, "%s carries the %s label but is a system namespace; left in place\n", p, manifests.FieldManager)
	}
	if len(objs) == 0 {
		fmt.Fprintf(o.ErrOut, "nothing to uninstall: no objects labelled %s\n", manifests.ManagedBySelector)
		return nil
	}

	policy := metav1.DeletePropagationBackground
	if o.Cascade == cascadeForeground {
		policy = metav1.DeletePropagationForeground
	}
	var failed []string
	for _, obj := range objs {
		if obj.terminating {
			fmt.Fprintf(o.ErrOut, "%s is already being deleted\n", obj)
			continue
		}
		err := resource(c.dynamic, obj).Delete(ctx, obj.name, metav1.DeleteOptions{PropagationPolicy: &policy})
		switch {
		case err == nil:
			fmt.Fprintf(o.ErrOut, "%s deleted\n", obj)
		case apierrors.IsNotFound(err):
			// Gone already, e.g. with its namespace.
		default:
			failed = append(failed, fmt.Sprintf("%s: %v", obj, err))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("could not delete %s; run the uninstall again once the cause is fixed", strings.Join(failed, "; "))
	}
	if !o.Wait {
		return nil
	}
	return o.waitGone(ctx, c.dynamic, kinds)
}

// uninstallKinds lists the kinds install creates, in reverse apply order so that the
// namespace goes last and the DaemonSet first.
func uninstallKinds(mapper meta.RESTMapper) ([]found, error) {
	gvks, err := manifests.Kinds()
	if err != nil {
		return nil, err
	}
	var out []found
	for _, gvk := range slices.Backward(gvks) {
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return nil, fmt.Errorf("the cluster does not serve %s: %w", gvk, err)
		}
		out = append(out, found{gvr: m.Resource, kind: gvk.Kind, namespaced: m.Scope.Name() == meta.RESTScopeNameNamespace})
	}
	return out, nil
}

func resource(dyn dynamic.Interface, f found) dynamic.ResourceInterface {
	if f.namespaced {
		return dyn.Resource(f.gvr).Namespace(f.namespace)
	}
	return dyn.Resource(f.gvr)
}

// listManaged finds every object of kinds that carries the managed-by label, in all
// namespaces. System namespaces are returned apart: they are never deleted.
func listManaged(ctx context.Context, dyn dynamic.Interface, kinds []found) (objs, protected []found, err error) {
	for _, k := range kinds {
		list, err := dyn.Resource(k.gvr).List(ctx, metav1.ListOptions{LabelSelector: manifests.ManagedBySelector})
		if err != nil {
			return nil, nil, fmt.Errorf("listing %s: %w", k.gvr.Resource, err)
		}
		for _, item := range list.Items {
			obj := k
			obj.namespace, obj.name = item.GetNamespace(), item.GetName()
			obj.terminating = item.GetDeletionTimestamp() != nil
			if obj.kind == "Namespace" && slices.Contains(protectedNamespaces, obj.name) {
				protected = append(protected, obj)
				continue
			}
			objs = append(objs, obj)
		}
	}
	return objs, protected, nil
}

// waitGone polls until no labelled object is left. Polling rather than watching: the
// namespace's deletion can take a while and there is nothing to show meanwhile.
func (o *UninstallOptions) waitGone(ctx context.Context, dyn dynamic.Interface, kinds []found) error {
	var left []found
	var lastErr error
	err := wait.PollUntilContextTimeout(ctx, o.pollInterval, o.Timeout, true, func(ctx context.Context) (bool, error) {
		objs, _, err := listManaged(ctx, dyn, kinds)
		if err != nil {
			// Keep polling through a flaky API server; the timeout bounds it.
			lastErr = err
			return false, nil
		}
		left = objs
		return len(left) == 0, nil
	})
	if err == nil {
		fmt.Fprintln(o.ErrOut, "agent uninstalled")
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted while waiting; the cluster finishes the deletion on its own")
	}
	if left == nil && lastErr != nil {
		return fmt.Errorf("timed out after %s: %w", o.Timeout, lastErr)
	}
	names := make([]string, len(left))
	for i, f := range left {
		names[i] = f.String()
	}
	first := left[0]
	get := fmt.Sprintf("kubectl get %s %s -o yaml", first.gvr.Resource, first.name)
	if first.namespace != "" {
		get = fmt.Sprintf("kubectl -n %s get %s %s -o yaml", first.namespace, first.gvr.Resource, first.name)
	}
	return fmt.Errorf("timed out after %s; still present: %s; look for finalizers with `%s`", o.Timeout, strings.Join(names, ", "), get)
}
