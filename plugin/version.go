package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/version"
)

// VersionOptions holds `version`'s flags.
type VersionOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	ClientOnly bool
	Output     string
	Timeout    time.Duration

	namespace string
	reach     agentReach
}

// AgentVersion is one node's agent in `version -o json|yaml`.
type AgentVersion struct {
	Node    string `json:"node"`
	Pod     string `json:"pod,omitempty"`
	Version string `json:"version,omitempty"`
	Error   string `json:"error,omitempty"`
}

// VersionReport is the stable output of `version -o json|yaml`.
type VersionReport struct {
	ClientVersion string         `json:"clientVersion"`
	Agents        []AgentVersion `json:"agents,omitempty"`
}

var versionOutputs = []string{outputJSON, outputYAML}

func NewCmdVersion(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &VersionOptions{configFlags: flags, IOStreams: streams, Timeout: 10 * time.Second, reach: defaultReach(flags)}
	cmd := &cobra.Command{
		Use:   "version [flags]",
		Short: "Print the plugin's version and each agent's",
		Long: `Version prints the plugin's version and asks every agent for its own. An agent that runs
another version than the plugin is reported on stderr: run install again to align them.`,
		Example: fmt.Sprintf(`  # Plugin and agents
  %[1]s version

  # Plugin only, without contacting the cluster
  %[1]s version --client`, displayName),
		Args: cobra.NoArgs,
		RunE: runE(o),
	}
	cmd.Flags().BoolVar(&o.ClientOnly, "client", false, "print only the plugin's version")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", o.Timeout, "how long to wait for each agent")
	addOutputFlag(cmd, &o.Output, versionOutputs, "Output format; the default is plain text.")
	return cmd
}

func (o *VersionOptions) Complete(c *cobra.Command, _ []string) error {
	o.namespace = agentNamespace(c, o.configFlags)
	return nil
}

func (o *VersionOptions) Validate() error {
	if o.Output != "" {
		if err := validateChoice("output", o.Output, versionOutputs); err != nil {
			return err
		}
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("invalid --timeout %s: must be positive", o.Timeout)
	}
	return nil
}

func (o *VersionOptions) Run(ctx context.Context) error {
	report := VersionReport{ClientVersion: version.Version}
	var runErr error
	if !o.ClientOnly {
		infos, err := collectInfo(ctx, o.reach, o.namespace, labels.Everything(), agents.FanoutOptions{Timeout: o.Timeout})
		if err != nil {
			// The plugin's own version is still worth printing before the error.
			runErr = err
		}
		for _, in := range infos {
			row := nodeStatus(in)
			report.Agents = append(report.Agents, AgentVersion{Node: row.Node, Pod: row.Pod, Version: row.Version, Error: row.Error})
		}
	}
	if o.Output != "" {
		if err := writeData(o.Out, o.Output, report); err != nil {
			return err
		}
	} else if err := writeVersionText(o.Out, report, !o.ClientOnly && runErr == nil); err != nil {
		return err
	}
	if runErr != nil {
		return runErr
	}
	if w := skewWarning(report); w != "" {
		fmt.Fprintln(o.ErrOut, w)
	}
	var failed int
	for _, a := range report.Agents {
		if a.Error != "" {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d agents did not report a version; see `%s agent status`", failed, len(report.Agents), displayName)
	}
	return nil
}

func writeVersionText(w io.Writer, r VersionReport, withAgents bool) error {
	fmt.Fprintf(w, "Client Version: %s\n", r.ClientVersion)
	if !withAgents {
		return nil
	}
	if len(r.Agents) == 0 {
		fmt.Fprintln(w, "Agent Versions: none (no node selected)")
		return nil
	}
	fmt.Fprintln(w, "Agent Versions:")
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tVERSION")
	for _, a := range r.Agents {
		v := a.Version
		if v == "" {
			v = "unknown: " + a.Error
		}
		fmt.Fprintf(tw, "  %s\t%s\n", a.Node, v)
	}
	return tw.Flush()
}

// skewWarning names the agents whose version differs from the plugin's, or returns "".
func skewWarning(r VersionReport) string {
	var skewed []string
	for _, a := range r.Agents {
		if a.Version != "" && a.Version != r.ClientVersion {
			skewed = append(skewed, fmt.Sprintf("%s runs %s", a.Node, a.Version))
		}
	}
	if len(skewed) == 0 {
		return ""
	}
	msg := fmt.Sprintf("warning: %d of %d agents run a version other than the plugin's %s (", len(skewed), len(r.Agents), r.ClientVersion)
	for i, s := range skewed {
		if i == 3 {
			msg += fmt.Sprintf(", and %d more", len(skewed)-3)
			break
		}
		if i > 0 {
			msg += ", "
		}
		msg += s
	}
	return msg + fmt.Sprintf("); run `%s agent install` to align them", displayName)
}
