// Command mesh-agent runs on every node (as the kubectl-mesh DaemonSet) and answers the
// plugin's gRPC calls about that node: what it can measure, and later the measurements.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/version"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "mesh-agent:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	o := defaultServeOptions()
	cmd := &cobra.Command{
		Use:   "mesh-agent",
		Short: "Per-node agent of kubectl mesh: serves the plugin's gRPC API on loopback",
		Long: `mesh-agent runs on each node as the kubectl-mesh DaemonSet. It serves gRPC on a
loopback address only, which the plugin reaches through the API server's pods/portforward,
so Kubernetes RBAC is the access control. At start it picks the best eBPF tier the node
allows by loading and attaching real programs (tp_btf, raw_tp, fentry, kprobe, in that
order), and keeps working without eBPF when none attaches.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			return o.run(cmd.Context())
		},
	}
	o.addFlags(cmd)
	cmd.AddCommand(newProbeCommand(), newVersionCommand())
	return cmd
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the agent's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "mesh-agent %s %s %s/%s\n", version.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	}
}
