package main

import (
	"maps"
	"slices"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
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
