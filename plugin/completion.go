package main

import (
	"maps"
	"slices"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/runstore"
)

// Shell completion: cobra adds `completion bash|zsh|fish|powershell` for the standalone
// binary, and answers kubectl's calls to the kubectl_complete-mesh shim through its hidden
// __complete command. The functions here complete flag values.

func fixedCompletion(values ...string) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return values, cobra.ShellCompDirectiveNoFileComp
	}
}

// noFileCompletion stops shells from offering file names for a free-form value.
func noFileCompletion(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveNoFileComp
}

// registerConnectionCompletions completes -n from the cluster and --context/--cluster/--user
// from the kubeconfig.
func registerConnectionCompletions(cmd *cobra.Command, flags *genericclioptions.ConfigFlags) {
	_ = cmd.RegisterFlagCompletionFunc("namespace", func(c *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		cfg, err := flags.ToRESTConfig()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		list, err := cs.CoreV1().Namespaces().List(c.Context(), metav1.ListOptions{})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, ns := range list.Items {
			out = append(out, ns.Name)
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	})
	kubeconfigNames := func(key string) cobra.CompletionFunc {
		return func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
			raw, err := flags.ToRawKubeConfigLoader().RawConfig()
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []string
			switch key {
			case "context":
				out = slices.Collect(maps.Keys(raw.Contexts))
			case "cluster":
				out = slices.Collect(maps.Keys(raw.Clusters))
			case "user":
				out = slices.Collect(maps.Keys(raw.AuthInfos))
			}
			slices.Sort(out)
			return out, cobra.ShellCompDirectiveNoFileComp
		}
	}
	for _, key := range []string{"context", "cluster", "user"} {
		_ = cmd.RegisterFlagCompletionFunc(key, kubeconfigNames(key))
	}
}

// runIDCompletion completes stored run ids from this machine's store, newest first, each
// with its target as the description; max is how many run arguments the command takes.
func runIDCompletion(max int) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		dir, err := runstore.DefaultDir()
		if err != nil {
			return nil, cobra.ShellCompDirectiveDefault
		}
		entries, _ := runstore.Local(dir).List(c.Context())
		out := []cobra.Completion{cobra.CompletionWithDesc(latestRun, "the newest run")}
		for _, e := range entries {
			out = append(out, cobra.CompletionWithDesc(shortID(e.ID), e.Start.UTC().Format(time.RFC3339)+" "+e.Target))
		}
		// Files are runs too.
		return out, cobra.ShellCompDirectiveDefault | cobra.ShellCompDirectiveKeepOrder
	}
}
