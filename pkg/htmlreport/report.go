// Package htmlreport renders a stored performance run as one self-contained HTML page: the
// run's configuration, per-node and whole-run tables, each node's problems, and charts drawn
// with gonum/plot as inline SVG. The page fetches nothing: styles, the charts' font and the
// charts themselves are inside the file, so it can be mailed, attached to a CI job or opened
// offline and still look the same.
package htmlreport

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

//go:embed page.html.tmpl
var pageSource string

var pageTemplate = template.Must(template.New("page").Parse(pageSource))

// Chart ids, as the page's figures carry them (id "chart-" + name, data-chart name).
const (
	ChartLatency = "latency"
	ChartAdded   = "added-latency"
	ChartSidecar = "sidecar-cost"
)

// Write renders r as an HTML page. Nothing is written when rendering fails, so a caller
// writing to a file never leaves half a report behind.
func Write(w io.Writer, r *perfrun.Run) error {
	if r == nil {
		return fmt.Errorf("no run to report")
	}
	p, err := buildPage(r)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, p); err != nil {
		return fmt.Errorf("render report: %w", err)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

type page struct {
	Title       string
	ID          string
	Interrupted bool
	FailedNodes []string
	Config      []field
	Cluster     []clusterNode
	Rows        []row
	Problems    []nodeProblems
	Charts      []chart
	FontCSS     template.CSS
}

type field struct{ Name, Value string }

type clusterNode struct {
	Name, CPU, Memory, Kernel, OS, Arch, Runtime string
}

// row is one line of the summary table; multi-valued cells hold one line per quantile.
type row struct {
	Name      string
	Total     bool
	Status    string // "ok", "problems" or "failed"
	Pods      string
	Requests  string
	Errors    string
	Rate      string
	Latency   []string
	AB        []interval
	Residency []string
	Tiers     string
	CPU       string
	IdleCPU   string
	Memory    string
	CPUPer1k  string
	Agent     []string
}

// interval is one quantile's A/B added latency; Significant when its interval excludes zero.
type interval struct {
	Quantile, Value, Low, High string
	Significant                bool
}

type nodeProblems struct {
	Node     string
	Failed   bool
	Problems []string
}

type chart struct {
	Name, Title, Caption string
	// Series names the chart's series (nodes, methods) for readers of the page's source.
	Series string
	SVG    template.HTML
	// Empty says why there is nothing to draw; set instead of SVG.
	Empty string
}

func buildPage(r *perfrun.Run) (*page, error) {
	nodes, total := perfrun.Summarize(r)
	p := &page{
		Title:       "kubectl mesh perf run " + r.GetId(),
		ID:          r.GetId(),
		Interrupted: r.GetInterrupted(),
		Config:      config(r),
		Cluster:     cluster(r),
	}
	for _, s := range nodes {
		p.Rows = append(p.Rows, summaryRow(s, false))
		if s.Failed {
			p.FailedNodes = append(p.FailedNodes, s.Node)
		}
		if len(s.Problems) > 0 || s.Failed {
			p.Problems = append(p.Problems, nodeProblems{Node: s.Node, Failed: s.Failed, Problems: stripNode(s.Node, s.Problems)})
		}
	}
	total.Node = "All nodes"
	p.Rows = append(p.Rows, summaryRow(total, true))

	charts, err := renderCharts(nodes, total)
	if err != nil {
		return nil, err
	}
	p.Charts = charts
	css, err := fontFaceCSS()
	if err != nil {
		return nil, err
	}
	p.FontCSS = css
	return p, nil
}

func config(r *perfrun.Run) []field {
	var f []field
	add := func(name, value string) { f = append(f, field{name, value}) }
	add("Run ID", r.GetId())
	add("Target", target(r.GetTarget()))
	load := r.GetLoad()
	add("Protocol", protocolName(load.GetProtocol()))
	if load.GetProtocol() != agentapi.Protocol_PROTOCOL_TCP && load.GetProtocol() != agentapi.Protocol_PROTOCOL_UNSPECIFIED {
		req := strings.TrimSpace(load.GetMethod() + " " + load.GetPath())
		if req != "" {
			add("Request", req)
		}
		if len(load.GetHeaders()) > 0 {
			// Header values may carry credentials; their names are enough to tell runs apart.
			names := make([]string, 0, len(load.GetHeaders()))
			for k := range load.GetHeaders() {
				names = append(names, k)
			}
			sort.Strings(names)
			add("Headers", strings.Join(names, ", "))
		}
		if n := len(load.GetBody()); n > 0 {
			add("Body", fmt.Sprintf("%d bytes", n))
		}
	}
	scope := "for the whole run, split across nodes"
	if r.GetRatePerNode() {
		scope = "per node"
	}
	if r.GetAskedRate() > 0 {
		add("Rate asked", fmt.Sprintf("%s req/s %s", number(r.GetAskedRate()), scope))
	} else {
		add("Rate asked", "as fast as possible (closed loop)")
	}
	if load.GetRate() > 0 {
		add("Rate per node", number(load.GetRate())+" req/s")
	} else {
		add("Rate per node", "as fast as possible (closed loop)")
	}
	if n := load.GetConnections(); n > 0 {
		add("Connections", fmt.Sprintf("%d per node", n))
	} else {
		add("Connections", "the agent's default")
	}
	add("Duration", load.GetDuration().AsDuration().String())
	add("Warm-up", load.GetWarmup().AsDuration().String())
	if m := r.GetMesh(); m.GetName() != "" {
		v := m.GetName()
		if m.GetVersion() != "" {
			v += " " + m.GetVersion()
		}
		if m.GetNamespace() != "" {
			v += " (namespace " + m.GetNamespace() + ")"
		}
		add("Mesh", v)
	} else {
		add("Mesh", "none detected")
	}
	add("Kubernetes", orDash(r.GetEnvironment().GetKubernetesVersion()))
	names := make([]string, 0, len(r.GetNodes()))
	for _, n := range r.GetNodes() {
		names = append(names, n.GetNode())
	}
	add("Nodes", fmt.Sprintf("%d: %s", len(names), strings.Join(names, ", ")))
	add("Start", utc(r.GetStartTime().AsTime(), r.GetStartTime() != nil))
	add("End", utc(r.GetEndTime().AsTime(), r.GetEndTime() != nil))
	if r.GetStartTime() != nil && r.GetEndTime() != nil {
		add("Elapsed", r.GetEndTime().AsTime().Sub(r.GetStartTime().AsTime()).Round(time.Millisecond).String())
	}
	if r.GetInterrupted() {
		add("Interrupted", "yes: stopped by the user; the figures cover what was measured until then")
	} else {
		add("Interrupted", "no")
	}
	if t := r.GetForceTier(); t != agentapi.EbpfTier_EBPF_TIER_UNSPECIFIED {
		add("Forced eBPF tier", tierName(t))
	}
	add("Context", orDash(r.GetContext()))
	add("Plugin version", orDash(r.GetPluginVersion()))
	return f
}

func target(t *perfrun.Target) string {
	if t == nil {
		return "—"
	}
	s := t.GetKind() + "/" + t.GetName()
	if t.GetKind() == "selector" || t.GetName() == "" {
		s = "-l " + t.GetSelector()
	}
	if t.GetNamespace() != "" {
		s += " in namespace " + t.GetNamespace()
	}
	if t.GetSelector() != "" && t.GetKind() != "selector" {
		s += " (pods " + t.GetSelector() + ")"
	}
	if t.GetPort() != 0 {
		s += fmt.Sprintf(", port %d", t.GetPort())
	}
	return s
}

func cluster(r *perfrun.Run) []clusterNode {
	var out []clusterNode
	for _, n := range r.GetEnvironment().GetNodes() {
		c := clusterNode{Name: n.GetName(), CPU: "—", Memory: "—", Kernel: orDash(n.GetKernelVersion()),
			OS: orDash(n.GetOsImage()), Arch: orDash(n.GetArchitecture()), Runtime: orDash(n.GetContainerRuntime())}
		if n.GetCpuCores() > 0 {
			c.CPU = fmt.Sprintf("%d cores", n.GetCpuCores())
		}
		if n.GetMemoryBytes() > 0 {
			c.Memory = bytesIEC(n.GetMemoryBytes())
		}
		out = append(out, c)
	}
	return out
}

func summaryRow(s perfrun.Summary, total bool) row {
	rw := row{Name: s.Node, Total: total, Status: "ok"}
	switch {
	case s.Failed:
		rw.Status = "failed"
	case len(s.Problems) > 0:
		rw.Status = "problems"
	}
	rw.Pods = fmt.Sprint(s.Pods)
	if s.FailedPods > 0 {
		rw.Pods = fmt.Sprintf("%d of %d", s.Pods, s.Pods+s.FailedPods)
	}
	rw.Requests = fmt.Sprint(s.Requests)
	rw.Errors = fmt.Sprint(s.Errors)
	if s.Requests > 0 && s.Errors > 0 {
		rw.Errors += fmt.Sprintf(" (%.2f%%)", 100*float64(s.Errors)/float64(s.Requests))
	}
	rw.Rate = "—"
	if s.AchievedRate > 0 {
		rw.Rate = number(s.AchievedRate) + " req/s"
	}
	for _, q := range perfrun.Quantiles {
		if s.Measured() {
			rw.Latency = append(rw.Latency, quantileName(q)+" "+duration(s.Latency(q)))
		}
		if d, ok := s.ABDelta(q); ok {
			rw.AB = append(rw.AB, interval{
				Quantile: quantileName(q), Value: signed(d.Value), Low: signed(d.CILow), High: signed(d.CIHigh),
				Significant: d.CILow > 0 || d.CIHigh < 0,
			})
		}
		if v, ok := s.ResidencyAt(q); ok {
			rw.Residency = append(rw.Residency, quantileName(q)+" "+duration(v))
		}
	}
	tiers := make([]string, 0, len(s.ResidencyTiers))
	for _, t := range s.ResidencyTiers {
		tiers = append(tiers, tierName(t))
	}
	rw.Tiers = strings.Join(tiers, ", ")
	rw.CPU, rw.IdleCPU, rw.Memory, rw.CPUPer1k = "—", "—", "—", "—"
	if s.SidecarCPU > 0 || s.SidecarMemory > 0 {
		rw.CPU = millicores(s.SidecarCPU)
		rw.Memory = bytesIEC(s.SidecarMemory)
	}
	if s.SidecarIdleCPU > 0 {
		rw.IdleCPU = millicores(s.SidecarIdleCPU)
	}
	if s.CPUPer1kRPS > 0 {
		rw.CPUPer1k = millicores(s.CPUPer1kRPS)
	}
	if s.AgentCPU > 0 || s.AgentMemory > 0 {
		rw.Agent = []string{millicores(s.AgentCPU) + " CPU", bytesIEC(s.AgentMemory)}
	}
	return rw
}

// stripNode drops the "node NAME: " prefix Summarize puts on problems; the page already
// groups them under the node.
func stripNode(node string, problems []string) []string {
	out := make([]string, len(problems))
	for i, p := range problems {
		out[i] = strings.TrimPrefix(p, "node "+node+": ")
	}
	return out
}

func protocolName(p agentapi.Protocol) string {
	switch p {
	case agentapi.Protocol_PROTOCOL_HTTP1:
		return "HTTP/1.1"
	case agentapi.Protocol_PROTOCOL_HTTP2:
		return "HTTP/2"
	case agentapi.Protocol_PROTOCOL_GRPC:
		return "gRPC"
	case agentapi.Protocol_PROTOCOL_TCP:
		return "TCP"
	}
	return "—"
}

func tierName(t agentapi.EbpfTier) string {
	if t == agentapi.EbpfTier_EBPF_TIER_UNSPECIFIED {
		return "unknown"
	}
	return strings.ToLower(strings.TrimPrefix(t.String(), "EBPF_TIER_"))
}

func quantileName(q float64) string {
	return "p" + strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.3f", q*100), "0"), ".")
}

// duration prints a latency in the unit that keeps three significant figures readable.
func duration(d time.Duration) string {
	a := d
	if a < 0 {
		a = -a
	}
	switch {
	case a < time.Millisecond:
		return fmt.Sprintf("%d µs", d.Microseconds())
	case a < time.Second:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

func signed(d time.Duration) string {
	if d >= 0 {
		return "+" + duration(d)
	}
	return "−" + duration(-d)
}

func millicores(m float64) string {
	if m >= 1000 {
		return fmt.Sprintf("%.2f cores", m/1000)
	}
	if m < 10 {
		return fmt.Sprintf("%.1fm", m)
	}
	return fmt.Sprintf("%.0fm", m)
}

func bytesIEC(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}

func number(v float64) string {
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d", int64(v))
	}
	return fmt.Sprintf("%.1f", v)
}

func utc(t time.Time, set bool) string {
	if !set {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05.000 UTC")
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}
