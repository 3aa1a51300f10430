package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
)

const defaultAgentNamespace = manifests.DefaultNamespace

// reachTimeout bounds the first request, so that a dead API server fails fast with a clear
// message instead of hanging in the middle of an install.
const reachTimeout = 15 * time.Second

// cluster is what a command needs from the API server; tests build it from fakes.
type cluster struct {
	host      string
	config    *rest.Config
	clientset kubernetes.Interface
	dynamic   dynamic.Interface
	mapper    meta.RESTMapper
	// discovery answers the reachability check; its client has a short timeout.
	discovery discovery.ServerVersionInterface
}

// newCluster builds clients from the kubectl flags without contacting the cluster.
func newCluster(flags *genericclioptions.ConfigFlags) (*cluster, error) {
	cfg, err := flags.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("no usable kubeconfig: %w; set --kubeconfig or KUBECONFIG", err)
	}
	// client-go's default of 5 requests per second would make a fan-out to a few dozen nodes
	// wait on the client, not the cluster.
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 50, 100
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	mapper, err := flags.ToRESTMapper()
	if err != nil {
		return nil, err
	}
	// A separate client: a timeout on the shared one would also cut long watches.
	short := rest.CopyConfig(cfg)
	short.Timeout = reachTimeout
	dc, err := discovery.NewDiscoveryClientForConfig(short)
	if err != nil {
		return nil, err
	}
	return &cluster{host: cfg.Host, config: cfg, clientset: cs, dynamic: dyn, mapper: mapper, discovery: dc}, nil
}

// ping turns "cannot connect" and "not allowed in" into one line that names the cluster.
func (c *cluster) ping() error {
	_, err := c.discovery.ServerVersion()
	if err == nil {
		return nil
	}
	return reachError(c.host, err)
}

func reachError(host string, err error) error {
	switch {
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("the cluster at %s rejected your credentials: %v; check `kubectl config view --minify`", host, err)
	case apierrors.IsForbidden(err):
		// Reachable and authenticated; RBAC is checked later with precise verbs.
		return nil
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return fmt.Errorf("cannot reach the cluster at %s: %v; check `kubectl cluster-info` and --context", host, err)
}

// agentNamespace is -n when given. The kubeconfig's default namespace is ignored on purpose:
// it says where the user works, not where the agent lives.
func agentNamespace(cmd *cobra.Command, flags *genericclioptions.ConfigFlags) string {
	if f := cmd.Flag("namespace"); f != nil && f.Changed && flags.Namespace != nil && *flags.Namespace != "" {
		return *flags.Namespace
	}
	return defaultAgentNamespace
}

// validateAgentNamespace checks --agent-namespace, for the commands where -n names the
// workloads' namespace instead.
func validateAgentNamespace(ns string) error {
	if err := manifests.ValidateNamespace(ns); err != nil {
		return fmt.Errorf("invalid --agent-namespace: %w", err)
	}
	return nil
}

// errNotInstalled is returned when the agent's namespace is missing.
func errNotInstalled(ns string) error {
	install := displayName + " agent install"
	if ns != defaultAgentNamespace {
		install += " -n " + ns
	}
	return fmt.Errorf("agent not installed: namespace %s not found; run `%s`", ns, install)
}

// checkInstalled tells "not installed" apart from other failures. A user allowed to list pods
// but not to get namespaces is let through: the pod listing then tells the story.
func checkInstalled(ctx context.Context, cs kubernetes.Interface, ns string) error {
	_, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	switch {
	case err == nil, apierrors.IsForbidden(err):
		return nil
	case apierrors.IsNotFound(err):
		return errNotInstalled(ns)
	default:
		return fmt.Errorf("reading namespace %s: %w", ns, err)
	}
}
