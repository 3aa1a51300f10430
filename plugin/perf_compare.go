package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// PerfCompareOptions sets one stored run against another.
type PerfCompareOptions struct {
	perfReadOptions
	Output string
	refA   string
	refB   string
}

func newCmdPerfCompare(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &PerfCompareOptions{perfReadOptions: newPerfReadOptions(flags, streams)}
	cmd := &cobra.Command{
		Use:   "compare A B [flags]",
		Short: "Show how run B differs from run A, per node and overall, and whether each change is significant",
		Long: `Compare sets run B against run A, for every node in both and for the whole runs.

Latency and eBPF residency quantiles are judged with a 95% bootstrap interval on B − A
(significant when it excludes zero). Added latency is judged against both runs' own
intervals. Sidecar CPU and memory are measured once per pod and carry no interval: they
are shown, not judged.`,
		Example: fmt.Sprintf(`  # Before and after a mesh upgrade
  %[1]s perf compare 3f2a 9c41`, displayName),
		Args:              exactArgs(2, "two run ids or files"),
		ValidArgsFunction: runIDCompletion(2),
		RunE:              runE(o),
	}
	o.addFlags(cmd)
	addOutputFlag(cmd, &o.Output, []string{outputJSON, outputYAML}, "Output format.")
	return cmd
}

func (o *PerfCompareOptions) Complete(_ *cobra.Command, args []string) error {
	o.refA, o.refB = args[0], args[1]
	return nil
}

func (o *PerfCompareOptions) Validate() error {
	if o.Output != "" {
		if err := validateChoice("output", o.Output, []string{outputJSON, outputYAML}); err != nil {
			return err
		}
	}
	return o.validate()
}

// ComparisonReport is compare's answer in -o json|yaml.
type ComparisonReport struct {
	A     string               `json:"a"`
	B     string               `json:"b"`
	Nodes []perfrun.Comparison `json:"nodes"`
	Total perfrun.Comparison   `json:"total"`
}

func (o *PerfCompareOptions) Run(ctx context.Context) error {
	a, err := o.open(ctx, o.refA)
	if err != nil {
		return fmt.Errorf("run A: %w", err)
	}
	b, err := o.open(ctx, o.refB)
	if err != nil {
		return fmt.Errorf("run B: %w", err)
	}
	nodes, total := perfrun.Compare(a, b)
	if o.Output != "" {
		return writeData(o.Out, o.Output, ComparisonReport{A: a.GetId(), B: b.GetId(), Nodes: nodes, Total: total})
	}
	fmt.Fprintf(o.Out, "A: %s  %s  %s\n", a.GetId(), a.GetStartTime().AsTime().UTC().Format(time.RFC3339), describeTarget(a.GetTarget()))
	fmt.Fprintf(o.Out, "B: %s  %s  %s\n\n", b.GetId(), b.GetStartTime().AsTime().UTC().Format(time.RFC3339), describeTarget(b.GetTarget()))
	total.Node = "TOTAL"
	return writeComparison(o.Out, append(nodes, total))
}

func writeComparison(w io.Writer, cs []perfrun.Comparison) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tMETRIC\tA\tB\tB − A\tVERDICT")
	for _, c := range cs {
		if c.Missing != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t%s\n", c.Node, c.Missing)
			continue
		}
		for _, ch := range c.Changes {
			if ch.Verdict == perfrun.NotMeasured {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Node, ch.Metric, figure(ch.Unit, ch.A), figure(ch.Unit, ch.B), signed(ch.Unit, ch.Delta), ch.Verdict)
		}
	}
	return tw.Flush()
}

func figure(unit string, v float64) string {
	switch unit {
	case "ns":
		return latency(time.Duration(v))
	case "millicores":
		return fmt.Sprintf("%.1fm", v)
	case "bytes":
		return bytesCell(uint64(max(v, 0)))
	}
	return fmt.Sprint(v)
}

func signed(unit string, v float64) string {
	s := figure(unit, v)
	if unit == "bytes" {
		s = fmt.Sprintf("%.1fMi", v/(1<<20))
	}
	if v >= 0 && !strings.HasPrefix(s, "-") {
		return "+" + s
	}
	return s
}
