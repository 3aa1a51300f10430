package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agents"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/budget"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/version"
)

// stopGrace is how long an interrupted run waits for the agents' partial results before it
// gives up on them; the agents stop their load at once, this only bounds the reply.
const stopGrace = 10 * time.Second

// PerfRunOptions holds `perf run`'s flags.
type PerfRunOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Selector    string
	Port        string
	Rate        float64
	PerNode     bool
	Connections uint32
	Duration    time.Duration
	Warmup      time.Duration
	Protocol    string
	Method      string
	Path        string
	Headers     []string
	Body        string
	Nodes       []string
	ForceTier   string
	Output      string
	OutDir      string
	FailIf      budget.List
	storeFlags
	AgentNamespace string

	target    *perfrun.Target
	load      *agentapi.LoadSpec
	forceTier agentapi.EbpfTier
	reach     agentReach
	// progressTTY forces the progress display's mode in tests; nil asks the terminal.
	progressTTY *bool
}

var protocols = map[string]agentapi.Protocol{
	"http": agentapi.Protocol_PROTOCOL_HTTP1, "http2": agentapi.Protocol_PROTOCOL_HTTP2,
	"grpc": agentapi.Protocol_PROTOCOL_GRPC, "tcp": agentapi.Protocol_PROTOCOL_TCP,
}

var tiers = map[string]agentapi.EbpfTier{
	"tp_btf": agentapi.EbpfTier_EBPF_TIER_TP_BTF, "raw_tp": agentapi.EbpfTier_EBPF_TIER_RAW_TP,
	"fentry": agentapi.EbpfTier_EBPF_TIER_FENTRY, "kprobe": agentapi.EbpfTier_EBPF_TIER_KPROBE,
	"none": agentapi.EbpfTier_EBPF_TIER_NONE,
}

func NewCmdPerfRun(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &PerfRunOptions{
		configFlags:    flags,
		IOStreams:      streams,
		Rate:           100,
		Duration:       30 * time.Second,
		Warmup:         2 * time.Second,
		Protocol:       "http",
		Method:         "GET",
		Path:           "/",
		AgentNamespace: defaultAgentNamespace,
		reach:          defaultReach(flags),
	}
	cmd := &cobra.Command{
		Use:   "run (deploy/NAME | svc/NAME | pod/NAME | -l SELECTOR) [flags]",
		Short: "Send load next to the target's pods and measure what their sidecars add",
		Long: `Run has the agent on each node that hosts target pods send load to them from that node, and
measures, per node and for the whole run:
  - the latency through the sidecar, and around it (the same request to the app inside
    the pod's network namespace): their difference is the added latency, with a 95%
    confidence interval (method "ab");
  - the time requests spend inside the proxy, from eBPF, when the node's kernel allows it
    (method "ebpf-residency", with the tier that measured it);
  - the sidecar's CPU and memory under load, its CPU per 1000 requests per second, and the
    agent's own cost.

Rate: --rate is the whole run's rate, split evenly over the nodes that host target pods;
with --per-node each of those nodes sends --rate. A node measures its pods one after
another, each at the node's rate for --duration.

Progress goes to stderr. Ctrl-C stops the load on every node at once and still saves and
prints what was measured. Every run is saved (see 'perf list'); --fail-if turns it into a
gate for CI pipelines: exit status 3 when a budget is breached.`,
		Example: fmt.Sprintf(`  # 500 requests per second in total for 30 s to a deployment's pods on port 8080
  %[1]s perf run deploy/web -n shop --port 8080 --rate 500

  # Fail a pipeline when the sidecar adds more than 2 ms at p99
  %[1]s perf run svc/web --rate 200 --duration 1m --fail-if 'added_p99>2ms,cpu_per_1k_rps>250m'

  # Write SMP documents next to the stored run
  %[1]s perf run -l app=web --port http -o smp-yaml --out ./results`, displayName),
		Args: cobra.MaximumNArgs(1),
		RunE: runE(o),
	}
	f := cmd.Flags()
	f.StringVarP(&o.Selector, "selector", "l", "", "target the pods matching this label selector")
	f.StringVar(&o.Port, "port", "", "the app's port, a number or a container port name (default: its only port)")
	f.Float64Var(&o.Rate, "rate", o.Rate, "requests per second for the whole run (see --per-node)")
	f.BoolVar(&o.PerNode, "per-node", false, "make --rate the rate of each node instead of the whole run")
	f.Uint32Var(&o.Connections, "connections", 0, "connections per node (default: the agent's)")
	f.DurationVar(&o.Duration, "duration", o.Duration, "how long each pod is loaded, warm-up included")
	f.DurationVar(&o.Warmup, "warmup", o.Warmup, "the start of each pod's load left out of the figures")
	f.StringVar(&o.Protocol, "protocol", o.Protocol, "http, http2, grpc or tcp")
	f.StringVar(&o.Method, "method", o.Method, "HTTP method")
	f.StringVar(&o.Path, "path", o.Path, "HTTP path, or the gRPC method for --protocol grpc")
	f.StringArrayVarP(&o.Headers, "header", "H", nil, "request header NAME:VALUE (repeat)")
	f.StringVar(&o.Body, "body", "", "request body; @FILE reads it from a file")
	f.StringSliceVar(&o.Nodes, "node", nil, "only the target pods on these nodes")
	f.StringVar(&o.ForceTier, "ebpf-tier", "", "force an eBPF tier: tp_btf, raw_tp, fentry, kprobe or none")
	f.StringVar(&o.AgentNamespace, "agent-namespace", o.AgentNamespace, "namespace of the mesh agent")
	o.storeFlags.add(cmd, "where to save the run besides this machine: \"cluster\" also keeps it in a ConfigMap in the agent namespace, for the team")
	f.Var(&o.FailIf, "fail-if", "exit with status 3 when a budget is breached, e.g. 'added_p99>2ms,cpu_per_1k_rps>250m' (metrics: "+strings.Join(budget.Metrics(), ", ")+")")
	f.StringVar(&o.OutDir, "out", "", "also write the run's SMP documents into this directory")
	addOutputFlag(cmd, &o.Output, runOutputs, "Output format of the result (default: a table).")
	_ = cmd.RegisterFlagCompletionFunc("protocol", fixedCompletion("http", "http2", "grpc", "tcp"))
	_ = cmd.RegisterFlagCompletionFunc("ebpf-tier", fixedCompletion("tp_btf", "raw_tp", "fentry", "kprobe", "none"))
	return cmd
}

func (o *PerfRunOptions) Complete(cmd *cobra.Command, args []string) error {
	arg := ""
	if len(args) == 1 {
		arg = args[0]
	}
	t, err := parseTarget(arg, o.Selector)
	if err != nil {
		return err
	}
	ns, _, err := o.configFlags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return err
	}
	t.Namespace = ns
	o.target = t
	if strings.HasPrefix(o.Body, "@") {
		b, err := os.ReadFile(o.Body[1:])
		if err != nil {
			return fmt.Errorf("--body: %w", err)
		}
		o.Body = string(b)
	}
	return nil
}

func (o *PerfRunOptions) Validate() error {
	if err := o.storeFlags.validate(); err != nil {
		return err
	}
	if o.Output != "" {
		if err := validateChoice("output", o.Output, runOutputs); err != nil {
			return err
		}
	}
	proto, ok := protocols[o.Protocol]
	if !ok {
		return fmt.Errorf("invalid --protocol %q: must be one of http, http2, grpc, tcp", o.Protocol)
	}
	if o.ForceTier != "" {
		if o.forceTier, ok = tiers[o.ForceTier]; !ok {
			return fmt.Errorf("invalid --ebpf-tier %q: must be one of tp_btf, raw_tp, fentry, kprobe, none", o.ForceTier)
		}
	}
	if !(o.Rate > 0) {
		return fmt.Errorf("invalid --rate %g: must be above 0 (A/B compares requests sent at a fixed rate)", o.Rate)
	}
	if o.Warmup < 0 || o.Warmup >= o.Duration {
		return fmt.Errorf("invalid --warmup %s: must be at least 0 and shorter than --duration %s", o.Warmup, o.Duration)
	}
	headers := map[string]string{}
	for _, h := range o.Headers {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("invalid --header %q: want NAME:VALUE", h)
		}
		headers[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	o.load = &agentapi.LoadSpec{
		Protocol:    proto,
		Rate:        o.Rate,
		Connections: o.Connections,
		Duration:    durationpb.New(o.Duration),
		Warmup:      durationpb.New(o.Warmup),
		Method:      o.Method,
		Path:        o.Path,
		Headers:     headers,
		Body:        []byte(o.Body),
	}
	// The agent's own limits, checked here so a bad flag fails before anything is sent. The
	// per-node rate is checked once the nodes are known.
	if err := loadgen.ValidateSpec(o.load); err != nil {
		return badLoadFlag(err)
	}
	return validateAgentNamespace(o.AgentNamespace)
}

// badLoadFlag phrases the load generator's refusal in terms of the flags.
func badLoadFlag(err error) error {
	return fmt.Errorf("invalid load: %s", strings.TrimPrefix(err.Error(), loadgen.ErrInvalidOptions.Error()+": "))
}

func (o *PerfRunOptions) Run(ctx context.Context) error {
	c, err := o.reach.newCluster()
	if err != nil {
		return err
	}
	if err := c.ping(); err != nil {
		return err
	}
	pods, err := resolveTarget(ctx, c.clientset, o.target, o.Port)
	var partial *partialTarget
	switch {
	case errors.As(err, &partial):
		for _, p := range partial.problems {
			fmt.Fprintf(o.ErrOut, "warning: %s; measuring the other pods\n", p)
		}
	case err != nil:
		return err
	}
	byNode := map[string][]*corev1.Pod{}
	for _, p := range pods {
		byNode[p.node] = append(byNode[p.node], p.pod)
	}
	for _, n := range o.Nodes {
		if _, ok := byNode[n]; !ok {
			return fmt.Errorf("--node %s: no pod of %s runs there (nodes: %s)", n, describeTarget(o.target), strings.Join(slices.Sorted(maps.Keys(byNode)), ", "))
		}
	}
	if len(o.Nodes) > 0 {
		maps.DeleteFunc(byNode, func(n string, _ []*corev1.Pod) bool { return !slices.Contains(o.Nodes, n) })
	}

	if err := checkInstalled(ctx, c.clientset, o.AgentNamespace); err != nil {
		return err
	}
	all, err := agents.Discover(ctx, c.clientset, o.AgentNamespace, nil)
	if err != nil {
		return fmt.Errorf("finding the agent pods in namespace %s: %w", o.AgentNamespace, err)
	}
	var targets []agents.Target
	for _, t := range all {
		if _, ok := byNode[t.Node]; ok {
			targets = append(targets, t)
		}
	}
	for n := range byNode {
		if !slices.ContainsFunc(targets, func(t agents.Target) bool { return t.Node == n }) {
			targets = append(targets, agents.Target{Node: n, Problem: "no agent pod on this node"})
		}
	}
	slices.SortFunc(targets, func(a, b agents.Target) int { return strings.Compare(a.Node, b.Node) })

	load := o.load
	if !o.PerNode {
		load.Rate = o.Rate / float64(len(targets))
	}
	if err := loadgen.ValidateSpec(load); err != nil {
		return badLoadFlag(fmt.Errorf("%w (per node, with %d nodes)", err, len(targets)))
	}
	run := &perfrun.Run{
		Format:        perfrun.Format,
		Id:            perfrun.NewID(),
		Target:        o.target,
		Load:          load,
		AskedRate:     o.Rate,
		RatePerNode:   o.PerNode,
		ForceTier:     o.forceTier,
		PluginVersion: version.Version,
		Context:       currentContext(o.configFlags),
	}
	run.Mesh, run.Environment = describeCluster(ctx, c, pods, targets, o.ErrOut)
	fmt.Fprintf(o.ErrOut, "Run %s: %s in namespace %s, %d pods on %d nodes, %s\n",
		run.Id, describeTarget(o.target), o.target.Namespace, countPods(byNode), len(targets), rateLine(run, len(targets)))

	run.StartTime = timestamppb.Now()
	results, interrupted := o.runOnNodes(ctx, c, run, targets, byNode)
	run.EndTime = timestamppb.Now()
	run.Interrupted = interrupted
	for i, t := range targets {
		nr := &perfrun.NodeRun{Node: t.Node, Result: results[i].Value}
		for _, p := range byNode[t.Node] {
			nr.Pods = append(nr.Pods, podRef(p))
		}
		if err := results[i].Err; err != nil {
			nr.Error = rpcReason(err)
		}
		run.Nodes = append(run.Nodes, nr)
	}
	return o.finish(ctx, c, run)
}

func countPods(byNode map[string][]*corev1.Pod) int {
	n := 0
	for _, ps := range byNode {
		n += len(ps)
	}
	return n
}

// rateLine states how the asked rate maps onto the nodes.
func rateLine(r *perfrun.Run, nodes int) string {
	if r.GetRatePerNode() {
		return fmt.Sprintf("%g req/s from each node (%g req/s in total)", r.GetLoad().GetRate(), r.GetLoad().GetRate()*float64(nodes))
	}
	return fmt.Sprintf("%g req/s in total (%.4g req/s from each node)", r.GetAskedRate(), r.GetLoad().GetRate())
}

func podRef(p *corev1.Pod) *agentapi.PodRef {
	return &agentapi.PodRef{Namespace: p.Namespace, Name: p.Name, Uid: string(p.UID)}
}

// nodeBudget is how long one node may take: its pods one after another, each with the
// agent's idle sample before its load, plus slack for port-forwarding and the result.
func nodeBudget(load *agentapi.LoadSpec, pods int) time.Duration {
	return time.Duration(pods)*(load.GetDuration().AsDuration()+5*time.Second) + 30*time.Second
}

// runOnNodes runs the load on every node at once, streaming progress. The first Ctrl-C
// (ctx cancelled) asks every agent to stop and waits up to stopGrace for what they
// measured; it reports whether that happened.
func (o *PerfRunOptions) runOnNodes(ctx context.Context, c *cluster, run *perfrun.Run, targets []agents.Target, byNode map[string][]*corev1.Pod) ([]agents.Result[*agentapi.RunResult], bool) {
	maxPods := 0
	for _, ps := range byNode {
		maxPods = max(maxPods, len(ps))
	}
	// The load outlives the first Ctrl-C so that the agents can be told to stop and answer.
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stopping := make(chan struct{})
	done := make(chan struct{})
	var interrupted atomic.Bool
	prog := newProgress(o.ErrOut, targets, run.GetLoad().GetDuration().AsDuration()*time.Duration(maxPods), o.progressTTY)
	defer prog.close()
	go func() {
		select {
		case <-ctx.Done():
			interrupted.Store(true)
			prog.note("Interrupted: stopping the load on every node and collecting what was measured…\n")
			close(stopping)
			select {
			case <-time.After(stopGrace):
				cancel()
			case <-done:
			}
		case <-done:
		}
	}()

	dial, err := o.reach.newDial(c)
	if err != nil {
		close(done)
		out := make([]agents.Result[*agentapi.RunResult], len(targets))
		for i, t := range targets {
			out[i] = agents.Result[*agentapi.RunResult]{Target: t, Err: err}
		}
		return out, false
	}
	results := agents.Fanout(runCtx, targets, dial, agents.FanoutOptions{Timeout: nodeBudget(run.GetLoad(), maxPods)},
		func(ctx context.Context, t agents.Target, ac agentapi.AgentClient) (*agentapi.RunResult, error) {
			node := t.Node
			req := &agentapi.RunRequest{RunId: run.GetId(), Port: run.GetTarget().GetPort(), Load: run.GetLoad(), ForceTier: run.GetForceTier()}
			for _, p := range byNode[node] {
				req.Targets = append(req.Targets, podRef(p))
			}
			return runNode(ctx, ac, req, stopping, func(p *agentapi.Progress) { prog.update(node, p) })
		})
	close(done)
	prog.close()
	return results, interrupted.Load()
}

// runNode runs one node's share and returns its result. A stream that breaks before the
// result (a dropped port-forward) is not the end: the agent keeps the result, so it is
// fetched again over a new connection.
func runNode(ctx context.Context, ac agentapi.AgentClient, req *agentapi.RunRequest, stopping <-chan struct{}, progress func(*agentapi.Progress)) (*agentapi.RunResult, error) {
	streamDone := make(chan struct{})
	defer close(streamDone)
	go func() {
		select {
		case <-stopping:
			// A fresh context: the run's own may be the one that is ending.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_, _ = ac.Stop(sctx, &agentapi.StopRequest{RunId: req.GetRunId()})
		case <-streamDone:
		}
	}()
	stream, err := ac.Run(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			// Only a broken stream leaves a result on the agent to fetch again; any other
			// status is the agent's own answer, and final.
			if ctx.Err() != nil || !streamBroke(err) {
				return nil, err
			}
			res, ferr := fetchResult(ctx, ac, req.GetRunId())
			if ferr != nil {
				return nil, fmt.Errorf("the agent stopped answering mid-run (%v), and its result could not be fetched: %w", err, ferr)
			}
			return res, nil
		}
		switch e := ev.GetEvent().(type) {
		case *agentapi.RunEvent_Progress:
			progress(e.Progress)
		case *agentapi.RunEvent_Result:
			return e.Result, nil
		}
	}
}

// fetchResult asks again for a run's result, a few times: the agent may still be finishing.
// Each attempt redials (gRPC reconnects through a new port-forward); a dead agent costs a
// few seconds, not the node's whole budget.
func fetchResult(ctx context.Context, ac agentapi.AgentClient, id string) (*agentapi.RunResult, error) {
	var last error
	for range 3 {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		res, err := ac.Result(cctx, &agentapi.ResultRequest{RunId: id})
		cancel()
		if err == nil {
			return res, nil
		}
		last = err
		if status.Code(err) == codes.NotFound {
			// The agent has no such run: asking again will not change that.
			return nil, last
		}
		select {
		case <-ctx.Done():
			return nil, last
		case <-time.After(time.Second):
		}
	}
	return nil, last
}

// describeCluster fills the run's mesh and environment; what cannot be read is left out
// with a warning, since it only annotates the run.
func describeCluster(ctx context.Context, c *cluster, pods []targetPod, targets []agents.Target, warn io.Writer) (*perfrun.Mesh, *perfrun.Environment) {
	env := &perfrun.Environment{}
	if v, err := c.discovery.ServerVersion(); err == nil {
		env.KubernetesVersion = v.GitVersion
	}
	for _, t := range targets {
		n, err := c.clientset.CoreV1().Nodes().Get(ctx, t.Node, metav1.GetOptions{})
		if err != nil {
			fmt.Fprintf(warn, "warning: node %s: %v\n", t.Node, err)
			env.Nodes = append(env.Nodes, &perfrun.Node{Name: t.Node})
			continue
		}
		env.Nodes = append(env.Nodes, environmentNode(n))
	}
	// Every pod was recognised as meshed when the target was resolved.
	return detectMesh(ctx, c, pods[0].mesh, warn), env
}

func environmentNode(n *corev1.Node) *perfrun.Node {
	info := n.Status.NodeInfo
	out := &perfrun.Node{
		Name: n.Name, KernelVersion: info.KernelVersion, OsImage: info.OSImage,
		Architecture: info.Architecture, ContainerRuntime: info.ContainerRuntimeVersion,
	}
	if q, ok := n.Status.Capacity[corev1.ResourceCPU]; ok {
		out.CpuCores = uint32(q.Value())
	}
	if q, ok := n.Status.Capacity[corev1.ResourceMemory]; ok {
		out.MemoryBytes = uint64(q.Value())
	}
	return out
}

func currentContext(flags *genericclioptions.ConfigFlags) string {
	if flags.Context != nil && *flags.Context != "" {
		return *flags.Context
	}
	raw, err := flags.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return ""
	}
	return raw.CurrentContext
}

// progress shows each node's figures on stderr: one line redrawn in place on a terminal,
// timestamped lines every few seconds otherwise.
type progress struct {
	w     io.Writer
	tty   bool
	total time.Duration
	nodes []string

	mu     sync.Mutex
	last   map[string]*agentapi.Progress
	lastAt time.Time
	closed bool
	drawn  bool
}

func newProgress(w io.Writer, targets []agents.Target, total time.Duration, tty *bool) *progress {
	p := &progress{w: w, total: total, last: map[string]*agentapi.Progress{}}
	for _, t := range targets {
		p.nodes = append(p.nodes, t.Node)
	}
	if tty != nil {
		p.tty = *tty
	} else {
		p.tty = isTerminal(w)
	}
	return p
}

func (p *progress) update(node string, pr *agentapi.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.last[node] = pr
	now := time.Now()
	if !p.tty && now.Sub(p.lastAt) < 2*time.Second {
		return
	}
	p.lastAt = now
	var parts []string
	var elapsed time.Duration
	for _, n := range p.nodes {
		pr := p.last[n]
		if pr == nil {
			parts = append(parts, n+" waiting")
			continue
		}
		elapsed = max(elapsed, pr.GetElapsed().AsDuration())
		parts = append(parts, fmt.Sprintf("%s %.0f req/s %d errors", n, pr.GetAchievedRate(), pr.GetErrors()))
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s %s/%s  %s", bar(elapsed, p.total, 20), elapsed.Truncate(time.Second), p.total, strings.Join(parts, " | "))
		p.drawn = true
		return
	}
	fmt.Fprintf(p.w, "%s elapsed %s  %s\n", now.UTC().Format(time.TimeOnly), elapsed.Truncate(time.Second), strings.Join(parts, " | "))
}

// note prints a line between progress updates, on a line of its own even when the bar is
// drawn, and under the same lock so the two never interleave.
func (p *progress) note(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
	fmt.Fprintf(p.w, format, args...)
}

func (p *progress) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed && p.drawn {
		fmt.Fprintln(p.w)
	}
	p.closed = true
}

func bar(done, total time.Duration, width int) string {
	n := width
	if total > 0 && done < total {
		n = int(float64(width) * float64(done) / float64(total))
	}
	return "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "]"
}

// streamBroke says whether a Run stream ended without the agent's answer: the connection
// (port-forward) dropped, which gRPC reports as Unavailable (or Internal for a reset
// HTTP/2 stream), rather than the agent refusing or failing the run.
func streamBroke(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal:
		return true
	}
	return false
}
