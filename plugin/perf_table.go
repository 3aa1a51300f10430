package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// writeRunTable prints a run for people: what ran, one row per node and the whole run, and
// every problem with the node and pod it concerns.
func writeRunTable(w io.Writer, r *perfrun.Run) error {
	nodes, total := perfrun.Summarize(r)
	mesh := "no mesh detected"
	if m := r.GetMesh(); m.GetName() != "" {
		mesh = strings.TrimSpace(m.GetName() + " " + m.GetVersion())
	}
	state := ""
	if r.GetInterrupted() {
		state = " (interrupted: partial figures)"
	}
	fmt.Fprintf(w, "Run %s%s\n", r.GetId(), state)
	fmt.Fprintf(w, "  target:  %s in namespace %s, port %d; mesh: %s\n", describeTarget(r.GetTarget()), r.GetTarget().GetNamespace(), r.GetTarget().GetPort(), mesh)
	fmt.Fprintf(w, "  load:    %s %s %s, %s, for %s (first %s left out)\n", protocolName(r), r.GetLoad().GetMethod(), r.GetLoad().GetPath(),
		rateLine(r, len(r.GetNodes())), r.GetLoad().GetDuration().AsDuration(), r.GetLoad().GetWarmup().AsDuration())
	fmt.Fprintf(w, "  started: %s, took %s\n\n", r.GetStartTime().AsTime().UTC().Format(time.RFC3339), r.GetEndTime().AsTime().Sub(r.GetStartTime().AsTime()).Round(time.Second))

	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := []string{"NODE", "PODS", "REQUESTS", "ERRORS", "RATE", "P50", "P99", "ADDED P50 (95% CI)", "ADDED P99 (95% CI)", "RESIDENCY P50", "SIDECAR CPU", "CPU/1K RPS", "SIDECAR MEM", "AGENT CPU"}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	total.Node = "TOTAL"
	for _, s := range append(nodes, total) {
		cells := []string{s.Node, fmt.Sprint(s.Pods)}
		if s.Failed && s.Node != "TOTAL" {
			for len(cells) < len(header)-1 {
				cells = append(cells, "-")
			}
			cells = append(cells, "failed (see below)")
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
			continue
		}
		cells = append(cells, fmt.Sprint(s.Requests), fmt.Sprint(s.Errors), fmt.Sprintf("%.0f/s", s.AchievedRate))
		if s.Measured() {
			cells = append(cells, latency(s.Latency(0.5)), latency(s.Latency(0.99)))
		} else {
			cells = append(cells, "-", "-")
		}
		cells = append(cells, abCell(s, 0.5), abCell(s, 0.99))
		if v, ok := s.ResidencyAt(0.5); ok {
			cells = append(cells, latency(v))
		} else {
			cells = append(cells, "-")
		}
		cpu1k := "-"
		if s.CPUPer1kRPS > 0 {
			cpu1k = millicores(s.CPUPer1kRPS)
		}
		cells = append(cells, millicores(s.SidecarCPU), cpu1k, bytesCell(s.SidecarMemory), millicores(s.AgentCPU))
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nAdded latency: %s.\n", methodsLine(total))
	if len(total.Problems) > 0 {
		fmt.Fprintln(w, "\nProblems:")
		for _, p := range total.Problems {
			fmt.Fprintf(w, "  %s\n", p)
		}
	}
	return nil
}

func protocolName(r *perfrun.Run) string {
	for name, p := range protocols {
		if p == r.GetLoad().GetProtocol() {
			return name
		}
	}
	return "http"
}

// methodsLine says which methods produced the added-latency columns.
func methodsLine(s perfrun.Summary) string {
	var parts []string
	if len(s.AB) > 0 {
		parts = append(parts, "ADDED = A/B, latency through the sidecar minus latency around it, 95% bootstrap intervals")
	} else {
		parts = append(parts, "A/B did not run (see problems)")
	}
	if len(s.ResidencyTiers) > 0 {
		var ts []string
		for _, t := range s.ResidencyTiers {
			ts = append(ts, tierName(t))
		}
		what := "time each request spends inside the proxy"
		if s.EBPFMethod == perfrun.MethodQueueing {
			what = "time data waits inside the proxy between arriving on one side and leaving on the other (connection-level queueing: the load is multiplexed)"
		}
		parts = append(parts, "RESIDENCY = "+what+", from eBPF (tier "+strings.Join(ts, ", ")+")")
	} else {
		parts = append(parts, "eBPF residency did not run")
	}
	return strings.Join(parts, "; ")
}

func abCell(s perfrun.Summary, q float64) string {
	d, ok := s.ABDelta(q)
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%s (%s..%s)", latency(d.Value), latency(d.CILow), latency(d.CIHigh))
}

// latency renders a duration with a unit that keeps three significant digits.
func latency(d time.Duration) string {
	neg := ""
	if d < 0 {
		neg, d = "-", -d
	}
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%s%.0fµs", neg, float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%s%.3gms", neg, float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%s%.3gs", neg, d.Seconds())
}
