package main

import (
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// NewCmdAgent groups the commands that manage the per-node agent DaemonSet.
func NewCmdAgent(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	cmd := groupCommand(&cobra.Command{
		Use:   "agent",
		Short: "Install, inspect and remove the per-node mesh agent",
		Long: `The mesh agent runs on every node as a DaemonSet (namespace ` + defaultAgentNamespace + ` unless -n says otherwise).
It listens only on its pod's loopback; the plugin reaches it through the API server's
pods/portforward, so Kubernetes RBAC decides who may use it.`,
	})
	cmd.AddCommand(NewCmdAgentInstall(flags, streams))
	cmd.AddCommand(NewCmdAgentUninstall(flags, streams))
	cmd.AddCommand(NewCmdAgentStatus(flags, streams))
	return cmd
}
