package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/budget"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/htmlreport"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/runstore"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/smp"
)

// Output formats of a run.
const (
	outputSMPJSON = "smp-json"
	outputSMPYAML = "smp-yaml"
	outputHTML    = "html"
)

var runOutputs = []string{outputJSON, outputYAML, outputSMPJSON, outputSMPYAML}

// exitError carries an exit status other than 1 up to main.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func NewCmdPerf(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	cmd := groupCommand(&cobra.Command{
		Use:   "perf",
		Short: "Measure the latency and cost sidecars add under load, and keep the results",
	})
	cmd.AddCommand(NewCmdPerfRun(flags, streams))
	cmd.AddCommand(newCmdPerfList(flags, streams))
	cmd.AddCommand(newCmdPerfShow(flags, streams))
	cmd.AddCommand(newCmdPerfCompare(flags, streams))
	cmd.AddCommand(newCmdPerfExport(flags, streams))
	return cmd
}

// storeFlags are the flags of every command that saves or reads runs.
type storeFlags struct {
	Store string

	// dir overrides the local store's directory in tests.
	dir string
}

func (s *storeFlags) add(cmd *cobra.Command, usage string) {
	cmd.Flags().StringVar(&s.Store, "store", "local", usage+"; one of local, cluster")
	_ = cmd.RegisterFlagCompletionFunc("store", fixedCompletion("local", "cluster"))
}

func (s *storeFlags) validate() error {
	return validateChoice("store", s.Store, []string{"local", "cluster"})
}

// stores lists where runs are kept, local first; cluster only when asked for.
func (s *storeFlags) stores(newCluster func() (*cluster, error), agentNS string) ([]runstore.Store, error) {
	dir := s.dir
	if dir == "" {
		var err error
		if dir, err = runstore.DefaultDir(); err != nil {
			return nil, err
		}
	}
	out := []runstore.Store{runstore.Local(dir)}
	if s.Store == "cluster" {
		c, err := newCluster()
		if err != nil {
			return nil, err
		}
		out = append(out, runstore.Cluster(c.clientset, agentNS))
	}
	return out, nil
}

// finish saves the run everywhere asked, prints it, writes SMP documents, and applies the
// gate. It saves first, so nothing measured is lost to a later failure.
func (o *PerfRunOptions) finish(ctx context.Context, c *cluster, run *perfrun.Run) error {
	stores, err := o.stores(func() (*cluster, error) { return c, nil }, o.AgentNamespace)
	if err != nil {
		return err
	}
	var saveErrs []error
	var saved []string
	for _, st := range stores {
		where, err := st.Save(context.WithoutCancel(ctx), run)
		if err != nil {
			saveErrs = append(saveErrs, fmt.Errorf("saving the run to the %s: %w", st, err))
			continue
		}
		saved = append(saved, where)
	}
	if err := writeRun(o.Out, run, o.Output); err != nil {
		return err
	}
	if o.OutDir != "" {
		docs, err := smp.Build(run)
		if err != nil {
			return fmt.Errorf("building SMP documents: %w", err)
		}
		files, err := smp.WriteDir(o.OutDir, docs)
		if err != nil {
			return fmt.Errorf("writing SMP documents: %w", err)
		}
		fmt.Fprintf(o.ErrOut, "SMP documents: %s\n", strings.Join(files, ", "))
	}
	for _, where := range saved {
		fmt.Fprintf(o.ErrOut, "Saved run %s to %s\n", run.GetId(), where)
	}
	if len(saved) > 0 {
		fmt.Fprintf(o.ErrOut, "HTML report: %s perf export %s --format html > report.html\n", displayName, shortID(run.GetId()))
	}

	var failures []error
	failures = append(failures, saveErrs...)
	nodes, total := perfrun.Summarize(run)
	if failed := failedNodes(run); len(failed) > 0 {
		failures = append(failures, fmt.Errorf("%d of %d nodes failed: %s", len(failed), len(run.GetNodes()), strings.Join(failed, "; ")))
	}
	for _, n := range nodes {
		if !n.Failed && !n.Measured() {
			failures = append(failures, fmt.Errorf("node %s measured no latency (see the problems above)", n.Node))
		}
	}
	if total.Failed {
		failures = append(failures, errors.New("no node returned a result"))
	}
	if run.GetInterrupted() {
		failures = append(failures, errors.New("interrupted: the figures cover only the time before Ctrl-C"))
	}
	if len(o.FailIf) > 0 {
		breaches := budget.Breaches(budget.Evaluate(run, o.FailIf))
		for _, b := range breaches {
			fmt.Fprintln(o.ErrOut, b.String())
		}
		if len(breaches) > 0 {
			return &exitError{code: budget.ExitCode, err: errors.Join(append(failures, fmt.Errorf("%d budgets breached", len(breaches)))...)}
		}
	}
	return errors.Join(failures...)
}

func failedNodes(r *perfrun.Run) []string {
	var out []string
	for _, n := range r.GetNodes() {
		if n.GetError() != "" {
			out = append(out, n.GetNode()+": "+n.GetError())
		}
	}
	return out
}

// shortID is enough of a run id to name it on the command line.
func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// writeRun prints a run in one of the run formats; empty is the table.
func writeRun(w io.Writer, r *perfrun.Run, format string) error {
	switch format {
	case "", outputTable:
		return writeRunTable(w, r)
	case outputJSON:
		b, err := perfrun.Marshal(r)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case outputYAML:
		b, err := perfrun.Marshal(r)
		if err != nil {
			return err
		}
		return writeYAMLFromJSON(w, b)
	case outputSMPJSON, outputSMPYAML:
		docs, err := smp.Build(r)
		if err != nil {
			return fmt.Errorf("building SMP documents: %w", err)
		}
		b, err := smp.Marshal(docs, format)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	case outputHTML:
		return htmlreport.Write(w, r)
	}
	return fmt.Errorf("no run format %q", format)
}

// perfReadOptions are the flags shared by the commands that read stored runs.
type perfReadOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams
	storeFlags
	AgentNamespace string
	reach          agentReach
}

func newPerfReadOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) perfReadOptions {
	return perfReadOptions{configFlags: flags, IOStreams: streams, AgentNamespace: defaultAgentNamespace, reach: defaultReach(flags)}
}

func (o *perfReadOptions) addFlags(cmd *cobra.Command) {
	o.storeFlags.add(cmd, "also read runs kept in the cluster (a ConfigMap per run in the agent namespace)")
	cmd.Flags().StringVar(&o.AgentNamespace, "agent-namespace", o.AgentNamespace, "namespace of the mesh agent (where --store cluster keeps runs)")
}

func (o *perfReadOptions) validate() error {
	if err := o.storeFlags.validate(); err != nil {
		return err
	}
	return validateAgentNamespace(o.AgentNamespace)
}

func (o *perfReadOptions) open(ctx context.Context, ref string) (*perfrun.Run, error) {
	stores, err := o.stores(o.reach.newCluster, o.AgentNamespace)
	if err != nil {
		return nil, err
	}
	if ref == latestRun {
		entries, errs := runstore.List(ctx, stores...)
		if len(entries) == 0 {
			if len(errs) > 0 {
				return nil, fmt.Errorf("no readable stored run: %w", errors.Join(errs...))
			}
			return nil, fmt.Errorf("no stored run yet; start one with `%s perf run`", displayName)
		}
		ref = entries[0].ID
	}
	r, _, err := runstore.Open(ctx, ref, stores...)
	return r, err
}

// latestRun names the newest stored run wherever a run id is expected.
const latestRun = "latest"

// PerfListOptions lists stored runs.
type PerfListOptions struct {
	perfReadOptions
	Output string
}

func newCmdPerfList(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &PerfListOptions{perfReadOptions: newPerfReadOptions(flags, streams)}
	cmd := &cobra.Command{
		Use:   "list [flags]",
		Short: "List the stored runs, newest first",
		Example: fmt.Sprintf(`  %[1]s perf list
  # Runs the team keeps in the cluster too
  %[1]s perf list --store cluster`, displayName),
		Args: cobra.NoArgs,
		RunE: runE(o),
	}
	o.addFlags(cmd)
	addOutputFlag(cmd, &o.Output, []string{outputJSON, outputYAML}, "Output format.")
	return cmd
}

func (o *PerfListOptions) Complete(*cobra.Command, []string) error { return nil }

func (o *PerfListOptions) Validate() error {
	if o.Output != "" {
		if err := validateChoice("output", o.Output, []string{outputJSON, outputYAML}); err != nil {
			return err
		}
	}
	return o.validate()
}

func (o *PerfListOptions) Run(ctx context.Context) error {
	stores, err := o.stores(o.reach.newCluster, o.AgentNamespace)
	if err != nil {
		return err
	}
	entries, errs := runstore.List(ctx, stores...)
	if o.Output != "" {
		if err := writeData(o.Out, o.Output, entries); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(o.Out, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTARTED\tTARGET\tMESH\tNODES\tSTATE\tWHERE")
		for _, e := range entries {
			state := "complete"
			switch {
			case e.Interrupted:
				state = "interrupted"
			case e.FailedNodes > 0:
				state = plural(e.FailedNodes, "node") + " failed"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", shortID(e.ID), e.Start.UTC().Format(time.RFC3339), e.Target, dash(e.Mesh), e.Nodes, state, e.Location)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(entries) == 0 && len(errs) == 0 {
			fmt.Fprintf(o.ErrOut, "No stored runs. Start one with `%s perf run`.\n", displayName)
		}
	}
	for _, e := range errs {
		fmt.Fprintf(o.ErrOut, "warning: %v\n", e)
	}
	if len(errs) > 0 && len(entries) == 0 {
		return fmt.Errorf("no run could be read (%d errors)", len(errs))
	}
	return nil
}

// PerfShowOptions prints one stored run.
type PerfShowOptions struct {
	perfReadOptions
	Output string
	ref    string
}

func newCmdPerfShow(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &PerfShowOptions{perfReadOptions: newPerfReadOptions(flags, streams)}
	cmd := &cobra.Command{
		Use:   "show (ID | latest | FILE) [flags]",
		Short: "Print a stored run (ID may be a unique prefix; FILE a run saved by perf export --format json)",
		Example: fmt.Sprintf(`  %[1]s perf show 3f2a
  %[1]s perf show latest -o smp-yaml`, displayName),
		Args:              exactArgs(1, "a run id or file"),
		ValidArgsFunction: runIDCompletion(1),
		RunE:              runE(o),
	}
	o.addFlags(cmd)
	addOutputFlag(cmd, &o.Output, runOutputs, "Output format (default: a table).")
	return cmd
}

func (o *PerfShowOptions) Complete(_ *cobra.Command, args []string) error {
	o.ref = args[0]
	return nil
}

func (o *PerfShowOptions) Validate() error {
	if o.Output != "" {
		if err := validateChoice("output", o.Output, runOutputs); err != nil {
			return err
		}
	}
	return o.validate()
}

func (o *PerfShowOptions) Run(ctx context.Context) error {
	r, err := o.open(ctx, o.ref)
	if err != nil {
		return err
	}
	return writeRun(o.Out, r, o.Output)
}

// PerfExportOptions writes a stored run in a file format.
type PerfExportOptions struct {
	perfReadOptions
	Format string
	ref    string
}

var exportFormats = []string{outputSMPYAML, outputSMPJSON, outputJSON, outputHTML}

func newCmdPerfExport(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &PerfExportOptions{perfReadOptions: newPerfReadOptions(flags, streams), Format: outputSMPYAML}
	cmd := &cobra.Command{
		Use:   "export (ID | latest | FILE) [flags]",
		Short: "Write a stored run as SMP documents, the run's JSON, or a self-contained HTML report",
		Example: fmt.Sprintf(`  %[1]s perf export 3f2a --format html > report.html
  %[1]s perf export 3f2a --format smp-json > smp.json`, displayName),
		Args:              exactArgs(1, "a run id or file"),
		ValidArgsFunction: runIDCompletion(1),
		RunE:              runE(o),
	}
	o.addFlags(cmd)
	cmd.Flags().StringVar(&o.Format, "format", o.Format, "one of "+strings.Join(exportFormats, ", "))
	_ = cmd.RegisterFlagCompletionFunc("format", fixedCompletion(exportFormats...))
	return cmd
}

func (o *PerfExportOptions) Complete(_ *cobra.Command, args []string) error {
	o.ref = args[0]
	return nil
}

func (o *PerfExportOptions) Validate() error {
	if err := validateChoice("format", o.Format, exportFormats); err != nil {
		return err
	}
	return o.validate()
}

func (o *PerfExportOptions) Run(ctx context.Context) error {
	r, err := o.open(ctx, o.ref)
	if err != nil {
		return err
	}
	return writeRun(o.Out, r, o.Format)
}

// exactArgs is cobra.ExactArgs with a message that says what is missing.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("want %s, got %d arguments\nSee '%s --help' for usage.", what, len(args), c.CommandPath())
		}
		return nil
	}
}

// writeYAMLFromJSON re-encodes JSON as YAML, so both formats come from one encoder.
func writeYAMLFromJSON(w io.Writer, b []byte) error {
	y, err := yaml.JSONToYAML(b)
	if err != nil {
		return err
	}
	_, err = w.Write(y)
	return err
}
