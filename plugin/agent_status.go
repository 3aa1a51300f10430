package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/manifests"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/portforward"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/version"
)

// StatusOptions holds `agent status`'s flags.
type StatusOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Output       string
	Concurrency  int
	Timeout      time.Duration
	NodeSelector string

	namespace string
	nodes     labels.Selector
	reach     agentReach
}

// agentReach is how commands get to the agents; tests swap the dialer for in-process servers.
type agentReach struct {
	newCluster func() (*cluster, error)
	newDial    func(*cluster) (agents.DialFunc, error)
}

func defaultReach(flags *genericclioptions.ConfigFlags) agentReach {
	return agentReach{
		newCluster: func() (*cluster, error) { return newCluster(flags) },
		newDial:    portForwardDial,
	}
}

// portForwardDial reaches each agent's gRPC port through the API server's pods/portforward.
func portForwardDial(c *cluster) (agents.DialFunc, error) {
	d, err := portforward.NewDialer(c.config)
	if err != nil {
		return nil, err
	}
	return agents.PortForwardDial(d), nil
}

func NewStatusOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *StatusOptions {
	return &StatusOptions{
		configFlags: flags,
		IOStreams:   streams,
		Concurrency: agents.DefaultConcurrency,
		Timeout:     10 * time.Second,
		reach:       defaultReach(flags),
	}
}

var statusOutputs = []string{outputTable, outputWide, outputJSON, outputYAML}

func NewCmdAgentStatus(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewStatusOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "status [flags]",
		Short: "Show, per node, whether the agent runs and what it can measure",
		Long: `Status asks every agent for its version, kernel, BTF, eBPF tier, cgroup layout and capabilities.
A node whose agent is missing, failing or unreachable gets a row with the reason, and the
command then exits with status 1.`,
		Example: fmt.Sprintf(`  # One row per node
  %[1]s agent status

  # For scripts
  %[1]s agent status -o json

  # Only some nodes, with a longer wait for slow ones
  %[1]s agent status --node-selector pool=perf --timeout 30s`, displayName),
		Args: cobra.NoArgs,
		RunE: runE(o),
	}
	f := cmd.Flags()
	addOutputFlag(cmd, &o.Output, statusOutputs, "Output format.")
	f.IntVar(&o.Concurrency, "concurrency", o.Concurrency, "how many agents to query at once")
	f.DurationVar(&o.Timeout, "timeout", o.Timeout, "how long to wait for each agent")
	f.StringVar(&o.NodeSelector, "node-selector", "", "only nodes matching this label selector")
	_ = cmd.RegisterFlagCompletionFunc("node-selector", noFileCompletion)
	return cmd
}

func (o *StatusOptions) Complete(cmd *cobra.Command, _ []string) error {
	o.namespace = agentNamespace(cmd, o.configFlags)
	return nil
}

func (o *StatusOptions) Validate() error {
	if o.Output != "" {
		if err := validateChoice("output", o.Output, statusOutputs); err != nil {
			return err
		}
	}
	if o.Concurrency < 1 {
		return fmt.Errorf("invalid --concurrency %d: must be at least 1", o.Concurrency)
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("invalid --timeout %s: must be positive", o.Timeout)
	}
	if err := manifests.ValidateNamespace(o.namespace); err != nil {
		return fmt.Errorf("invalid -n: %w", err)
	}
	sel, err := labels.Parse(o.NodeSelector)
	if err != nil {
		return fmt.Errorf("invalid --node-selector: %w", err)
	}
	o.nodes = sel
	return nil
}

// NodeStatus is one node's row. Its JSON form is the stable output of `-o json|yaml`.
type NodeStatus struct {
	Node         string   `json:"node"`
	Pod          string   `json:"pod,omitempty"`
	Ready        bool     `json:"ready"`
	Healthy      bool     `json:"healthy"`
	Version      string   `json:"version,omitempty"`
	Kernel       string   `json:"kernel,omitempty"`
	BTF          bool     `json:"btf"`
	EBPFTier     string   `json:"ebpfTier,omitempty"`
	Cgroups      string   `json:"cgroups,omitempty"`
	Capabilities []string `json:"capabilities,omitempty"`
	HostPID      bool     `json:"hostPID"`
	GoVersion    string   `json:"goVersion,omitempty"`
	// Error says why the agent is unhealthy; empty when healthy.
	Error string `json:"error,omitempty"`

	// skewed agents lack an RPC this plugin calls: upgrading them is the fix.
	skewed bool
}

// StatusReport is the whole `agent status` answer.
type StatusReport struct {
	Namespace     string       `json:"namespace"`
	ClientVersion string       `json:"clientVersion"`
	Nodes         []NodeStatus `json:"nodes"`
}

// Unhealthy counts the nodes that are not healthy.
func (r StatusReport) Unhealthy() []NodeStatus {
	var out []NodeStatus
	for _, n := range r.Nodes {
		if !n.Healthy {
			out = append(out, n)
		}
	}
	return out
}

func (o *StatusOptions) Run(ctx context.Context) error {
	infos, err := collectInfo(ctx, o.reach, o.namespace, o.nodes, agents.FanoutOptions{Concurrency: o.Concurrency, Timeout: o.Timeout})
	if err != nil {
		return err
	}
	report := StatusReport{Namespace: o.namespace, ClientVersion: version.Version}
	for _, in := range infos {
		report.Nodes = append(report.Nodes, nodeStatus(in))
	}
	switch o.Output {
	case outputJSON, outputYAML:
		if err := writeData(o.Out, o.Output, report); err != nil {
			return err
		}
	default:
		if err := writeStatusTable(o.Out, report.Nodes, o.Output == outputWide); err != nil {
			return err
		}
	}
	return unhealthyError(report, o.namespace)
}

// unhealthyError is nil when every agent is healthy, else the count and the next thing to
// look at.
func unhealthyError(r StatusReport, ns string) error {
	if len(r.Nodes) == 0 {
		return fmt.Errorf("no node is selected for the agent; check --node-selector and `kubectl -n %s get daemonset %s`", ns, manifests.AgentName)
	}
	bad := r.Unhealthy()
	if len(bad) == 0 {
		return nil
	}
	next := fmt.Sprintf("see `kubectl -n %s describe daemonset %s`", ns, manifests.AgentName)
	for _, n := range bad {
		if n.skewed {
			next = fmt.Sprintf("run `%s agent install` to upgrade them", displayName)
			break
		}
		if n.Pod != "" {
			if n.Ready {
				// The pod runs but did not answer: its log says why.
				next = fmt.Sprintf("see `kubectl -n %s logs %s`", ns, n.Pod)
			} else {
				next = fmt.Sprintf("see `kubectl -n %s describe pod %s`", ns, n.Pod)
			}
			break
		}
	}
	return fmt.Errorf("%d of %d agents unhealthy; %s", len(bad), len(r.Nodes), next)
}

// agentInfo is what one node's agent said, or why it could not.
type agentInfo struct {
	target agents.Target
	info   *agentapi.InfoResponse
	err    error
}

// collectInfo finds the agent for every selected node and asks the usable ones for Info,
// in parallel. Agents.Fanout dials no pod that has a Problem: the pod's state is the answer.
func collectInfo(ctx context.Context, reach agentReach, ns string, nodes labels.Selector, opts agents.FanoutOptions) ([]agentInfo, error) {
	c, err := reach.newCluster()
	if err != nil {
		return nil, err
	}
	if err := c.ping(); err != nil {
		return nil, err
	}
	if err := checkInstalled(ctx, c.clientset, ns); err != nil {
		return nil, err
	}
	nodes, err = withDaemonSetNodes(ctx, c.clientset, ns, nodes)
	if err != nil {
		return nil, err
	}
	targets, err := agents.Discover(ctx, c.clientset, ns, nodes)
	if err != nil {
		return nil, fmt.Errorf("finding the agent pods in namespace %s: %w", ns, err)
	}
	out := make([]agentInfo, len(targets))
	for i, t := range targets {
		out[i].target = t
	}
	usable := slices.ContainsFunc(targets, func(t agents.Target) bool { return t.Problem == "" && t.Pod != nil })
	if !usable {
		return out, nil
	}
	dial, err := reach.newDial(c)
	if err != nil {
		return nil, err
	}
	results := agents.Fanout(ctx, targets, dial, opts, func(ctx context.Context, _ agents.Target, ac agentapi.AgentClient) (*agentapi.InfoResponse, error) {
		return ac.Info(ctx, &agentapi.InfoRequest{})
	})
	// Fanout returns one result per target, in target order.
	for i, r := range results {
		out[i].info, out[i].err = r.Value, r.Err
	}
	return out, nil
}

// withDaemonSetNodes narrows nodes to those the DaemonSet targets: a node left out on purpose
// (another OS, outside --node-selector at install) is not a node with a missing agent.
func withDaemonSetNodes(ctx context.Context, cs kubernetes.Interface, ns string, nodes labels.Selector) (labels.Selector, error) {
	ds, err := cs.AppsV1().DaemonSets(ns).Get(ctx, manifests.AgentName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("agent not installed: DaemonSet %s/%s not found; run `%s agent install`", ns, manifests.AgentName, displayName)
	case apierrors.IsForbidden(err):
		return nodes, nil // every node then counts; rows will say which have no agent
	case err != nil:
		return nil, fmt.Errorf("reading DaemonSet %s/%s: %w", ns, manifests.AgentName, err)
	}
	if nodes == nil {
		nodes = labels.Everything()
	}
	for k, v := range ds.Spec.Template.Spec.NodeSelector {
		r, err := labels.NewRequirement(k, selection.Equals, []string{v})
		if err != nil {
			return nil, fmt.Errorf("DaemonSet %s/%s has an invalid nodeSelector: %w", ns, manifests.AgentName, err)
		}
		nodes = nodes.Add(*r)
	}
	return nodes, nil
}

// nodeStatus turns one node's discovery and Info answer into its row.
func nodeStatus(in agentInfo) NodeStatus {
	t := in.target
	ns := NodeStatus{Node: t.Node}
	if t.Pod != nil {
		ns.Pod = t.Pod.Name
		ns.Ready = podReady(t.Pod)
	}
	if in.info != nil {
		i := in.info
		ns.Version = i.GetAgentVersion()
		ns.Kernel = i.GetKernelRelease()
		ns.BTF = i.GetBtf()
		ns.EBPFTier = tierName(i.GetEbpfTier())
		ns.Cgroups = cgroupName(i.GetCgroupLayout())
		ns.Capabilities = shortCaps(i.GetCapabilities())
		ns.HostPID = i.GetHostPid()
		ns.GoVersion = i.GetGoVersion()
	}
	switch {
	case t.Problem != "":
		ns.Error = t.Problem
	case t.Pod == nil:
		ns.Error = "no agent pod on this node"
	case in.err != nil:
		ns.Error = rpcReason(in.err)
		ns.skewed = errors.Is(in.err, agents.ErrVersionSkew)
	case in.info == nil:
		ns.Error = "agent did not answer"
	}
	ns.Healthy = ns.Error == ""
	return ns
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// rpcReason says why an agent did not answer. Fanout's errors already read well; a missing
// RPC also gets the fix.
func rpcReason(err error) string {
	if errors.Is(err, agents.ErrVersionSkew) {
		return err.Error() + "; run `" + displayName + " agent install` to upgrade it"
	}
	return err.Error()
}

func tierName(t agentapi.EbpfTier) string {
	if t == agentapi.EbpfTier_EBPF_TIER_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(t.String(), "EBPF_TIER_"))
}

func cgroupName(l agentapi.CgroupLayout) string {
	if l == agentapi.CgroupLayout_CGROUP_LAYOUT_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(l.String(), "CGROUP_LAYOUT_"))
}

func shortCaps(caps []string) []string {
	out := make([]string, len(caps))
	for i, c := range caps {
		out[i] = strings.TrimPrefix(strings.ToUpper(c), "CAP_")
	}
	return out
}

// manyCapabilities is where the table stops listing names: the DaemonSet grants four, so an
// agent holding more than this runs unconfined (e.g. a root process outside a pod).
const manyCapabilities = 8

// capsCell keeps the table readable for an unconfined agent; -o wide still lists every name.
func capsCell(caps []string, wide bool) string {
	if !wide && len(caps) > manyCapabilities {
		return fmt.Sprintf("%d (unconfined; -o wide lists them)", len(caps))
	}
	return dash(strings.Join(caps, ","))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeStatusTable renders rows for people. An unhealthy row shows dashes for the agent's
// data and its reason in the last column: tabwriter leaves a line's last cell out of the
// column widths, so a long reason neither widens nor misaligns the other columns.
func writeStatusTable(w io.Writer, rows []NodeStatus, wide bool) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := []string{"NODE", "AGENT POD", "READY", "VERSION", "KERNEL", "BTF", "EBPF TIER", "CGROUPS"}
	if wide {
		header = append(header, "HOST PID", "GO")
	}
	header = append(header, "CAPABILITIES")
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := []string{r.Node, orNone(r.Pod), yesNo(r.Ready)}
		if r.Error != "" {
			for len(cells) < len(header)-1 {
				cells = append(cells, "-")
			}
			cells = append(cells, r.Error)
		} else {
			btf := yesNo(r.BTF)
			if r.Version == "" && r.Kernel == "" {
				btf = "-"
			}
			cells = append(cells, dash(r.Version), dash(r.Kernel), btf, dash(r.EBPFTier), dash(r.Cgroups))
			if wide {
				cells = append(cells, yesNo(r.HostPID), dash(r.GoVersion))
			}
			cells = append(cells, capsCell(r.Capabilities, wide))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}
