package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
)

// Snapshot windows the agent accepts (agent/server: MinWindow, MaxWindow).
const (
	minWindow     = 100 * time.Millisecond
	maxWindow     = 60 * time.Second
	defaultWindow = 2 * time.Second
)

// OverheadOptions holds `overhead`'s flags.
type OverheadOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Output         string
	Pods           bool
	AllNamespaces  bool
	Selector       string
	Nodes          []string
	SortBy         string
	Window         time.Duration
	Timeout        time.Duration
	AgentNamespace string

	// namespace is the workload namespace; empty means all.
	namespace string
	selector  labels.Selector
	reach     agentReach
}

var (
	overheadOutputs = []string{outputWide, outputJSON, outputYAML}
	overheadSorts   = []string{"cpu", "memory", "name"}
)

func NewCmdOverhead(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &OverheadOptions{
		configFlags:    flags,
		IOStreams:      streams,
		Window:         defaultWindow,
		Timeout:        15 * time.Second,
		AgentNamespace: defaultAgentNamespace,
		reach:          defaultReach(flags),
	}
	cmd := &cobra.Command{
		Use:   "overhead [flags]",
		Short: "Show the CPU and memory sidecars use on each node, sending no load",
		Long: `Overhead is kubectl top for sidecars. Each node's agent measures the sidecar containers on its
node over --window (CPU as a rate over the window, memory as the working set kubectl top
shows) and reports them with the node's capacity.

By default there is one row per node, over every namespace unless -n is given. With --pods
there is one row per meshed pod, in the current namespace unless -n or -A says otherwise.
A node whose agent cannot answer is a row with the reason; the command then exits 1.`,
		Example: fmt.Sprintf(`  # What the sidecars cost on each node
  %[1]s overhead

  # One row per meshed pod in every namespace, most CPU first
  %[1]s overhead --pods -A --sort-by cpu

  # Pods of one app, measured over 10 seconds
  %[1]s overhead --pods -n shop -l app=cart --window 10s`, displayName),
		Args: cobra.NoArgs,
		RunE: runE(o),
	}
	f := cmd.Flags()
	addOutputFlag(cmd, &o.Output, overheadOutputs, "Output format.")
	f.BoolVar(&o.Pods, "pods", false, "one row per meshed pod instead of per node")
	f.BoolVarP(&o.AllNamespaces, "all-namespaces", "A", false, "pods in every namespace")
	f.StringVarP(&o.Selector, "selector", "l", "", "only pods matching this label selector")
	f.StringSliceVar(&o.Nodes, "node", nil, "only these nodes (repeat or comma-separate)")
	f.StringVar(&o.SortBy, "sort-by", "", "sort rows by "+strings.Join(overheadSorts, ", ")+" (descending for cpu and memory)")
	f.DurationVar(&o.Window, "window", o.Window, fmt.Sprintf("how long each agent measures (%s..%s)", minWindow, maxWindow))
	f.DurationVar(&o.Timeout, "timeout", o.Timeout, "how long to wait for each agent beyond the window")
	f.StringVar(&o.AgentNamespace, "agent-namespace", o.AgentNamespace, "namespace of the mesh agent")
	_ = cmd.RegisterFlagCompletionFunc("sort-by", fixedCompletion(overheadSorts...))
	_ = cmd.RegisterFlagCompletionFunc("selector", noFileCompletion)
	return cmd
}

func (o *OverheadOptions) Complete(cmd *cobra.Command, _ []string) error {
	ns, explicit, err := o.configFlags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return err
	}
	switch {
	case o.AllNamespaces:
		o.namespace = ""
	case explicit || cmd.Flag("namespace").Changed || o.Pods:
		o.namespace = ns
	}
	return nil
}

func (o *OverheadOptions) Validate() error {
	if o.Output != "" {
		if err := validateChoice("output", o.Output, overheadOutputs); err != nil {
			return err
		}
	}
	if o.SortBy != "" {
		if err := validateChoice("sort-by", o.SortBy, overheadSorts); err != nil {
			return err
		}
	}
	if o.Window < minWindow || o.Window > maxWindow {
		return fmt.Errorf("invalid --window %s: must be between %s and %s", o.Window, minWindow, maxWindow)
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("invalid --timeout %s: must be positive", o.Timeout)
	}
	if o.AllNamespaces && o.configFlags.Namespace != nil && *o.configFlags.Namespace != "" {
		return fmt.Errorf("-A and -n cannot be used together")
	}
	sel, err := labels.Parse(o.Selector)
	if err != nil {
		return fmt.Errorf("invalid -l: %w", err)
	}
	o.selector = sel
	return validateAgentNamespace(o.AgentNamespace)
}

// SidecarRow is one meshed pod's sidecar. Its JSON form is the stable output of -o json|yaml.
type SidecarRow struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Node      string `json:"node"`
	Mesh      string `json:"mesh"`
	Container string `json:"container"`
	Native    bool   `json:"nativeSidecar"`
	// CPU in millicores over the window; memory in bytes.
	CPUMillicores    float64 `json:"cpuMillicores"`
	CPUThrottled     string  `json:"cpuThrottled,omitempty"`
	MemoryWorkingSet uint64  `json:"memoryWorkingSetBytes"`
	MemoryRSS        uint64  `json:"memoryRSSBytes,omitempty"`
	MemoryPSS        uint64  `json:"memoryPSSBytes,omitempty"`
}

// NodeOverhead is one node's row.
type NodeOverhead struct {
	Node     string   `json:"node"`
	Meshes   []string `json:"meshes,omitempty"`
	Sidecars int      `json:"sidecars"`
	// CPU in millicores, memory in bytes; the node's figures are its capacity.
	CPUMillicores      float64 `json:"cpuMillicores"`
	MemoryWorkingSet   uint64  `json:"memoryWorkingSetBytes"`
	NodeCPUCores       uint32  `json:"nodeCPUCores,omitempty"`
	NodeMemoryBytes    uint64  `json:"nodeMemoryBytes,omitempty"`
	NodeCPUMillicores  float64 `json:"nodeCPUUsedMillicores,omitempty"`
	AgentCPUMillicores float64 `json:"agentCPUMillicores,omitempty"`
	AgentMemory        uint64  `json:"agentMemoryWorkingSetBytes,omitempty"`
	Window             string  `json:"window,omitempty"`
	// Error says why the node has no figures; Warnings are per-pod problems.
	Error    string   `json:"error,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
}

// CPUPercent is the sidecars' share of the node's CPU capacity.
func (n NodeOverhead) CPUPercent() float64 {
	if n.NodeCPUCores == 0 {
		return 0
	}
	return n.CPUMillicores / float64(n.NodeCPUCores) / 10
}

// MemoryPercent is the sidecars' share of the node's memory.
func (n NodeOverhead) MemoryPercent() float64 {
	if n.NodeMemoryBytes == 0 {
		return 0
	}
	return float64(n.MemoryWorkingSet) / float64(n.NodeMemoryBytes) * 100
}

// OverheadReport is the whole answer.
type OverheadReport struct {
	Namespace string         `json:"namespace,omitempty"`
	Nodes     []NodeOverhead `json:"nodes"`
	Total     NodeOverhead   `json:"total"`
	Pods      []SidecarRow   `json:"pods,omitempty"`
}

func (o *OverheadOptions) Run(ctx context.Context) error {
	c, err := o.reach.newCluster()
	if err != nil {
		return err
	}
	if err := c.ping(); err != nil {
		return err
	}
	if err := checkInstalled(ctx, c.clientset, o.AgentNamespace); err != nil {
		return err
	}
	nodeSel, err := withDaemonSetNodes(ctx, c.clientset, o.AgentNamespace, nil)
	if err != nil {
		return err
	}
	targets, err := agents.Discover(ctx, c.clientset, o.AgentNamespace, nodeSel)
	if err != nil {
		return fmt.Errorf("finding the agent pods in namespace %s: %w", o.AgentNamespace, err)
	}
	if targets, err = onlyNodes(targets, o.Nodes); err != nil {
		return err
	}
	// A label selector is the API server's to apply: the agents know pods, not labels.
	var allowed map[string]bool
	if !o.selector.Empty() {
		pods, err := c.clientset.CoreV1().Pods(o.namespace).List(ctx, metav1.ListOptions{LabelSelector: o.selector.String()})
		if err != nil {
			return fmt.Errorf("listing pods matching %q: %w", o.selector, err)
		}
		allowed = map[string]bool{}
		for _, p := range pods.Items {
			allowed[string(p.UID)] = true
		}
	}
	req := &agentapi.SnapshotRequest{Window: durationpb.New(o.Window)}
	if o.namespace != "" {
		req.Namespaces = []string{o.namespace}
	}
	dial, err := o.reach.newDial(c)
	if err != nil {
		return err
	}
	results := agents.Fanout(ctx, targets, dial, agents.FanoutOptions{Timeout: o.Window + o.Timeout},
		func(ctx context.Context, _ agents.Target, ac agentapi.AgentClient) (*agentapi.SnapshotResponse, error) {
			return ac.Snapshot(ctx, req)
		})
	report := buildOverhead(results, allowed)
	report.Namespace = o.namespace
	sortOverhead(&report, o.SortBy)

	switch {
	case o.Output == outputJSON || o.Output == outputYAML:
		err = writeData(o.Out, o.Output, report)
	case o.Pods:
		err = writePodOverhead(o.Out, report, o.Output == outputWide)
	default:
		err = writeNodeOverhead(o.Out, report, o.Output == outputWide)
	}
	if err != nil {
		return err
	}
	if o.Pods && len(report.Pods) == 0 && o.Output == "" {
		where := "namespace " + o.namespace
		if o.namespace == "" {
			where = "any namespace"
		}
		fmt.Fprintf(o.ErrOut, "No meshed pods found in %s.\n", where)
	}
	return failedNodesError(report.Nodes)
}

// onlyNodes keeps the named nodes, in discovery's order; a name without a node is an
// error, not an empty row.
func onlyNodes(targets []agents.Target, names []string) ([]agents.Target, error) {
	if len(names) == 0 {
		return targets, nil
	}
	for _, n := range names {
		if !slices.ContainsFunc(targets, func(t agents.Target) bool { return t.Node == n }) {
			return nil, fmt.Errorf("node %q not found among the agent's nodes", n)
		}
	}
	return slices.DeleteFunc(slices.Clone(targets), func(t agents.Target) bool { return !slices.Contains(names, t.Node) }), nil
}

func buildOverhead(results []agents.Result[*agentapi.SnapshotResponse], allowed map[string]bool) OverheadReport {
	var r OverheadReport
	for _, res := range results {
		row := NodeOverhead{Node: res.Target.Node}
		if res.Err != nil {
			row.Error = rpcReason(res.Err)
			r.Nodes = append(r.Nodes, row)
			continue
		}
		s := res.Value
		if n := s.GetNode(); n != nil {
			row.NodeCPUCores, row.NodeMemoryBytes, row.NodeCPUMillicores = n.GetCpuCores(), n.GetMemoryTotalBytes(), n.GetCpuMillicores()
		}
		row.AgentCPUMillicores = s.GetAgent().GetCpuMillicores()
		row.AgentMemory = s.GetAgent().GetMemoryWorkingSetBytes()
		row.Window = s.GetWindow().AsDuration().String()
		for _, e := range s.GetErrors() {
			row.Warnings = append(row.Warnings, fmt.Sprintf("pod %s/%s: %s", e.GetPod().GetNamespace(), e.GetPod().GetName(), e.GetError()))
		}
		for _, sc := range s.GetSidecars() {
			if allowed != nil && !allowed[sc.GetPod().GetUid()] {
				continue
			}
			u := sc.GetUsage()
			row.Sidecars++
			row.CPUMillicores += u.GetCpuMillicores()
			row.MemoryWorkingSet += u.GetMemoryWorkingSetBytes()
			if !slices.Contains(row.Meshes, sc.GetMesh()) {
				row.Meshes = append(row.Meshes, sc.GetMesh())
			}
			pr := SidecarRow{
				Namespace: sc.GetPod().GetNamespace(), Pod: sc.GetPod().GetName(), Node: row.Node,
				Mesh: sc.GetMesh(), Container: sc.GetContainer(), Native: sc.GetNative(),
				CPUMillicores: u.GetCpuMillicores(), MemoryWorkingSet: u.GetMemoryWorkingSetBytes(),
				MemoryRSS: u.GetMemoryRssBytes(), MemoryPSS: u.GetMemoryPssBytes(),
			}
			if t := u.GetCpuThrottled().AsDuration(); t > 0 {
				pr.CPUThrottled = t.String()
			}
			r.Pods = append(r.Pods, pr)
		}
		slices.Sort(row.Meshes)
		r.Nodes = append(r.Nodes, row)
	}
	r.Total = NodeOverhead{Node: "TOTAL"}
	for _, n := range r.Nodes {
		if n.Error != "" {
			continue
		}
		t := &r.Total
		t.Sidecars += n.Sidecars
		t.CPUMillicores += n.CPUMillicores
		t.MemoryWorkingSet += n.MemoryWorkingSet
		t.NodeCPUCores += n.NodeCPUCores
		t.NodeMemoryBytes += n.NodeMemoryBytes
		t.NodeCPUMillicores += n.NodeCPUMillicores
		t.AgentCPUMillicores += n.AgentCPUMillicores
		t.AgentMemory += n.AgentMemory
		for _, m := range n.Meshes {
			if !slices.Contains(t.Meshes, m) {
				t.Meshes = append(t.Meshes, m)
			}
		}
	}
	slices.Sort(r.Total.Meshes)
	return r
}

func sortOverhead(r *OverheadReport, by string) {
	switch by {
	case "cpu":
		slices.SortStableFunc(r.Nodes, func(a, b NodeOverhead) int { return cmp.Compare(b.CPUMillicores, a.CPUMillicores) })
		slices.SortStableFunc(r.Pods, func(a, b SidecarRow) int { return cmp.Compare(b.CPUMillicores, a.CPUMillicores) })
	case "memory":
		slices.SortStableFunc(r.Nodes, func(a, b NodeOverhead) int { return cmp.Compare(b.MemoryWorkingSet, a.MemoryWorkingSet) })
		slices.SortStableFunc(r.Pods, func(a, b SidecarRow) int { return cmp.Compare(b.MemoryWorkingSet, a.MemoryWorkingSet) })
	default:
		// Nodes come sorted by name from discovery; pods by namespace and name.
		slices.SortStableFunc(r.Pods, func(a, b SidecarRow) int {
			return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Pod, b.Pod))
		})
	}
}

// failedNodesError is nil when every node answered.
func failedNodesError(nodes []NodeOverhead) error {
	var bad []string
	for _, n := range nodes {
		if n.Error != "" {
			bad = append(bad, n.Node)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%d of %d nodes did not report: %s; see `%s agent status`", len(bad), len(nodes), strings.Join(bad, ", "), displayName)
}

func writeNodeOverhead(w io.Writer, r OverheadReport, wide bool) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := []string{"NODE", "MESH", "SIDECARS", "CPU", "% OF NODE CPU", "MEMORY", "% OF NODE MEMORY"}
	if wide {
		header = append(header, "NODE CPU USED", "AGENT CPU", "AGENT MEMORY", "WINDOW")
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, n := range append(slices.Clone(r.Nodes), r.Total) {
		cells := []string{n.Node}
		if n.Error != "" {
			for len(cells) < len(header)-1 {
				cells = append(cells, "-")
			}
			cells = append(cells, n.Error)
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
			continue
		}
		cells = append(cells, dash(strings.Join(n.Meshes, ",")), fmt.Sprint(n.Sidecars),
			millicores(n.CPUMillicores), percent(n.CPUPercent(), n.NodeCPUCores > 0),
			bytesCell(n.MemoryWorkingSet), percent(n.MemoryPercent(), n.NodeMemoryBytes > 0))
		if wide {
			cells = append(cells, millicores(n.NodeCPUMillicores), millicores(n.AgentCPUMillicores), bytesCell(n.AgentMemory), dash(n.Window))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range r.Nodes {
		for _, warn := range n.Warnings {
			fmt.Fprintf(w, "warning: node %s: %s\n", n.Node, warn)
		}
	}
	return nil
}

func writePodOverhead(w io.Writer, r OverheadReport, wide bool) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := []string{"NAMESPACE", "POD", "NODE", "MESH", "CPU", "MEMORY"}
	if wide {
		header = append(header, "CONTAINER", "NATIVE", "THROTTLED", "RSS", "PSS")
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, p := range r.Pods {
		cells := []string{p.Namespace, p.Pod, p.Node, p.Mesh, millicores(p.CPUMillicores), bytesCell(p.MemoryWorkingSet)}
		if wide {
			cells = append(cells, p.Container, yesNo(p.Native), dash(p.CPUThrottled), bytesCell(p.MemoryRSS), bytesCell(p.MemoryPSS))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	// Nodes that did not answer still show, so a missing pod is not mistaken for no pod.
	for _, n := range r.Nodes {
		if n.Error != "" {
			cells := []string{"-", "-", n.Node, "-", "-", n.Error}
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
		}
	}
	return tw.Flush()
}

// millicores renders CPU the way kubectl top does: whole millicores.
func millicores(m float64) string { return fmt.Sprintf("%.0fm", m) }

func percent(p float64, known bool) string {
	switch {
	case !known:
		return "-"
	case p == 0:
		return "0%"
	case p < 0.1:
		return "<0.1%"
	case p < 10:
		return fmt.Sprintf("%.1f%%", p)
	}
	return fmt.Sprintf("%.0f%%", p)
}

// bytesCell renders memory in binary units, as kubectl top does (Mi).
func bytesCell(b uint64) string {
	if b == 0 {
		return "0Mi"
	}
	if b < 1<<20 {
		return apiresource.NewQuantity(int64(b), apiresource.BinarySI).String()
	}
	return fmt.Sprintf("%dMi", (b+(1<<19))>>20)
}
