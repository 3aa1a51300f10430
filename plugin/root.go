package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// displayName is how users type the plugin; help and error hints use it.
const displayName = "kubectl mesh"

// Exit codes: the command did what it says, or it did not.
const (
	exitOK      = 0
	exitFailure = 1
)

// run executes one command line and returns the process exit code. Every failure reaches
// here as an error and is printed once, as "error: ...", on stderr.
func run(ctx context.Context, args []string, streams genericiooptions.IOStreams) int {
	root := NewCmdMesh(streams)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(streams.ErrOut, "error: %v\n", err)
		var coded *exitError
		if errors.As(err, &coded) {
			return coded.code
		}
		return exitFailure
	}
	return exitOK
}

// options is the Complete → Validate → Run shape every command's options share.
type options interface {
	Complete(c *cobra.Command, args []string) error
	Validate() error
	Run(ctx context.Context) error
}

func runE(o options) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		if err := o.Complete(c, args); err != nil {
			return err
		}
		if err := o.Validate(); err != nil {
			return err
		}
		return o.Run(c.Context())
	}
}

// NewCmdMesh builds the command tree. The kubectl connection flags (--kubeconfig, --context,
// -n, …) are persistent so that every subcommand accepts them.
func NewCmdMesh(streams genericiooptions.IOStreams) *cobra.Command {
	configFlags := genericclioptions.NewConfigFlags(true)

	cmd := &cobra.Command{
		// The binary's name, so that generated completion scripts register for it; help shows
		// the display name instead.
		Use:   "kubectl-mesh",
		Short: "Measure what service-mesh sidecars cost on each node",
		Long: `kubectl mesh measures the CPU, memory and latency that service-mesh sidecars add,
node by node, through a small agent it installs as a DaemonSet.`,
		Example: fmt.Sprintf(`  # Install the agent on every node and wait until it is ready
  %[1]s agent install

  # Show what each node's agent can measure
  %[1]s agent status`, displayName),
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: displayName},
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cmd.SetIn(streams.In)
	cmd.SetOut(streams.Out)
	cmd.SetErr(streams.ErrOut)
	cmd.SetFlagErrorFunc(flagError)

	configFlags.AddFlags(cmd.PersistentFlags())
	if f := cmd.PersistentFlags().Lookup("namespace"); f != nil {
		f.Usage = "for agent and version commands, the mesh agent's namespace (default " + defaultAgentNamespace + "); for the others, the workloads' namespace"
	}
	registerConnectionCompletions(cmd, configFlags)

	cmd.AddCommand(NewCmdAgent(configFlags, streams))
	cmd.AddCommand(NewCmdStatus(configFlags, streams))
	cmd.AddCommand(NewCmdOverhead(configFlags, streams))
	cmd.AddCommand(NewCmdPerf(configFlags, streams))
	cmd.AddCommand(NewCmdVersion(configFlags, streams))
	return cmd
}

// flagError adds the hint cobra leaves out when SilenceUsage is set.
func flagError(c *cobra.Command, err error) error {
	if errors.Is(err, pflag.ErrHelp) {
		return err
	}
	return fmt.Errorf("%w\nSee '%s --help' for usage.", err, c.CommandPath())
}

// groupCommand makes a command that only holds subcommands: bare, it prints help; with an
// unknown subcommand, it fails like cobra does at the top level.
func groupCommand(cmd *cobra.Command) *cobra.Command {
	cmd.Args = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			hint := ""
			if s := c.SuggestionsFor(args[0]); len(s) > 0 {
				hint = fmt.Sprintf(" (did you mean %q?)", s[0])
			}
			return fmt.Errorf("unknown command %q for %q%s\nSee '%s --help' for usage.", args[0], c.CommandPath(), hint, c.CommandPath())
		}
		return nil
	}
	cmd.RunE = func(c *cobra.Command, _ []string) error { return c.Help() }
	return cmd
}
