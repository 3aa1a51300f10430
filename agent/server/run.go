package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kubectl-mesh/kubectl-mesh/agent/abtest"
	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
	"github.com/kubectl-mesh/kubectl-mesh/agent/residency"
	"github.com/kubectl-mesh/kubectl-mesh/agent/usage"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
)

// IdleWindow is how long each target's sidecar is sampled before its load, for the idle
// usage the loaded figures are compared with: a few scheduler ticks, short enough not to
// stretch a run.
const IdleWindow = 500 * time.Millisecond

// ResidencyMethod is the AddedLatency.method of eBPF residency results.
const ResidencyMethod = "ebpf-residency"

// QueueingMethod is the AddedLatency.method of the eBPF fallback for loads whose requests
// cannot be paired with their responses (HTTP/2, gRPC, TCP): connection-level queueing. Per
// direction, each burst of data the proxy reads on one side is timed from its arrival to the
// proxy's next write on the other side (residency.ForwardRequest, ForwardResponse); the
// reported figures are those of the sum of the two directions taken as independent
// (Histogram.Convolve), an exchange's time in the proxy as far as it can be told without
// knowing which response answers which request.
const QueueingMethod = "ebpf-queueing"

// residencyQuantiles are the residency quantiles reported, the ones A/B reports.
var residencyQuantiles = []float64{0.5, 0.9, 0.99}

// podLookup resolves one pod (a *discovery.Discoverer does); sources without it are searched
// through their Snapshot.
type podLookup interface {
	Lookup(namespace, name string) (discovery.Sidecar, error)
}

// sampleTaker takes one usage sample (a *usage.Sampler does); windows are cut from two.
type sampleTaker interface {
	Sample(t usage.Targets) *usage.Sample
}

// podJob is one target of a run, resolved and ready to measure.
type podJob struct {
	Sidecar discovery.Sidecar
	Port    uint32
	Load    loadgen.Options // Target unset: the job picks the pod IP
	// Tiers to try for residency, in order; empty means no eBPF. Forced says the request
	// named the tier, so that not attaching it is an error rather than a fallback.
	Tiers  []ebpftier.Tier
	Forced bool
}

// podOutcome is what measuring one pod gave: a result (nil when nothing was measured), the
// problems to report for the pod, and the measured window with its request count, from
// which the node's achieved rate is made.
type podOutcome struct {
	Result   *agentapi.PodResult
	Problems []string
	Measured time.Duration
	Stopped  bool
}

// podRunner measures one pod, adding the requests it sends to counters as it goes so that
// progress can be streamed.
type podRunner func(ctx context.Context, job podJob, counters *runCounters) podOutcome

// runCounters are the run's live figures, summed over its pods.
type runCounters struct {
	requests, errors atomic.Uint64
}

// Run measures the sidecars of the target pods one after another, streaming progress about
// every second and the result at the end. The result is kept for Result whatever happens
// to the stream: a client that goes away stops the load at once, and the partial result
// stays fetchable.
func (a *Agent) Run(req *agentapi.RunRequest, stream agentapi.Agent_RunServer) error {
	if len(req.GetTargets()) == 0 {
		return status.Error(codes.InvalidArgument, "no target pods")
	}
	for i, t := range req.GetTargets() {
		if t.GetNamespace() == "" || t.GetName() == "" {
			return status.Errorf(codes.InvalidArgument, "target %d: namespace and name are both needed", i)
		}
	}
	if req.GetPort() == 0 || req.GetPort() > 65535 {
		return status.Errorf(codes.InvalidArgument, "port %d: want the app's port, 1..65535", req.GetPort())
	}
	if req.GetLoad() == nil {
		return status.Error(codes.InvalidArgument, "no load spec")
	}
	load, err := loadgen.FromSpec(req.GetLoad(), net.JoinHostPort("127.0.0.1", strconv.Itoa(int(req.GetPort()))))
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "load: %v", err)
	}
	tiers, forced, err := a.runTiers(req.GetForceTier())
	if err != nil {
		return err
	}
	src, err := a.disc.Source()
	if err != nil {
		return err
	}
	sampler, _ := a.measurer.(sampleTaker)
	if sampler == nil {
		return status.Error(codes.FailedPrecondition, "the agent has no usage sampler (procfs or cgroups unreadable at start-up)")
	}

	id := req.GetRunId()
	if id == "" {
		id = newRunID()
	}
	// The run ends with the stream (a client that went away) or with Stop.
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	if err := a.runs.begin(id, cancel); err != nil {
		return err
	}

	res := &agentapi.RunResult{
		RunId:     id,
		NodeName:  a.facts.NodeName,
		StartTime: timestamppb.Now(),
		Load:      proto.Clone(req.GetLoad()).(*agentapi.LoadSpec),
	}
	start := time.Now()
	selfStart := sampler.Sample(usage.Targets{})
	var counters runCounters

	progressDone := make(chan struct{})
	var progressWG sync.WaitGroup
	progressWG.Add(1)
	go func() {
		defer progressWG.Done()
		streamProgress(stream, start, &counters, progressDone)
	}()

	var requests uint64
	var measured time.Duration
	for _, t := range req.GetTargets() {
		if ctx.Err() != nil {
			res.Errors = append(res.Errors, &agentapi.PodError{Pod: t, Error: "not measured: the run ended before this pod's turn"})
			continue
		}
		job := podJob{Port: req.GetPort(), Load: load, Tiers: tiers, Forced: forced}
		job.Sidecar, err = lookupSidecar(src, t.GetNamespace(), t.GetName())
		if err != nil {
			res.Errors = append(res.Errors, &agentapi.PodError{Pod: t, Error: err.Error()})
			continue
		}
		out := a.runPod(ctx, job, &counters)
		if out.Result != nil {
			res.Pods = append(res.Pods, out.Result)
			requests += out.Result.GetRequests()
			measured += out.Measured
		}
		if out.Stopped {
			res.Stopped = true
		}
		for _, p := range out.Problems {
			res.Errors = append(res.Errors, &agentapi.PodError{Pod: discovery.APIPodRef(job.Sidecar.Pod), Error: p})
		}
	}
	if ctx.Err() != nil {
		res.Stopped = true
	}
	if measured > 0 {
		res.AchievedRate = float64(requests) / measured.Seconds()
	}
	if rep, err := usage.Between(selfStart, sampler.Sample(usage.Targets{})); err == nil && rep.Agent != nil {
		res.Agent = rep.Agent.Usage().Proto()
	}
	res.EndTime = timestamppb.Now()
	a.runs.finish(res)

	close(progressDone)
	progressWG.Wait()
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), errStopped) {
		// The client is gone; the result waits in the store.
		return status.FromContextError(stream.Context().Err()).Err()
	}
	return stream.Send(&agentapi.RunEvent{Event: &agentapi.RunEvent_Result{Result: proto.Clone(res).(*agentapi.RunResult)}})
}

// streamProgress sends the run's figures every loadgen.ProgressInterval until done. A slow
// client only delays its own progress events, never the load.
func streamProgress(stream agentapi.Agent_RunServer, start time.Time, c *runCounters, done <-chan struct{}) {
	tick := time.NewTicker(loadgen.ProgressInterval)
	defer tick.Stop()
	last, lastAt := uint64(0), start
	for {
		select {
		case <-done:
			return
		case <-stream.Context().Done():
			return
		case now := <-tick.C:
			n := c.requests.Load()
			p := &agentapi.Progress{
				Elapsed:  durationpb.New(now.Sub(start)),
				Requests: n,
				Errors:   c.errors.Load(),
			}
			if dt := now.Sub(lastAt).Seconds(); dt > 0 {
				p.AchievedRate = float64(n-last) / dt
			}
			last, lastAt = n, now
			if err := stream.Send(&agentapi.RunEvent{Event: &agentapi.RunEvent_Progress{Progress: p}}); err != nil {
				return
			}
		}
	}
}

// runTiers turns a request's forced tier into the residency tiers to try: unforced, the
// node's own tier and the ones after it (the node's was chosen at start-up by attaching).
func (a *Agent) runTiers(force agentapi.EbpfTier) ([]ebpftier.Tier, bool, error) {
	if force == agentapi.EbpfTier_EBPF_TIER_UNSPECIFIED {
		for i, t := range ebpftier.Order {
			if t == a.facts.Tier {
				return ebpftier.Order[i:], false, nil
			}
		}
		return nil, false, nil
	}
	for _, t := range append([]ebpftier.Tier{ebpftier.None}, ebpftier.Order...) {
		if Tier(t) == force {
			if t == ebpftier.None {
				return nil, true, nil
			}
			return []ebpftier.Tier{t}, true, nil
		}
	}
	return nil, false, status.Errorf(codes.InvalidArgument, "force_tier %v is not a tier", force)
}

// lookupSidecar resolves a target; the error says why it cannot be measured.
func lookupSidecar(src SidecarSource, ns, name string) (discovery.Sidecar, error) {
	if l, ok := src.(podLookup); ok {
		return l.Lookup(ns, name)
	}
	snap, err := src.Snapshot()
	if err != nil {
		return discovery.Sidecar{}, fmt.Errorf("discover sidecars: %w", err)
	}
	for _, s := range snap.Sidecars {
		if s.Pod.Namespace == ns && s.Pod.Name == name {
			return s, nil
		}
	}
	for _, e := range snap.Errors {
		if e.Pod.Namespace == ns && e.Pod.Name == name {
			return discovery.Sidecar{}, e.Err
		}
	}
	return discovery.Sidecar{}, fmt.Errorf("%s/%s: %w (or it has no mesh sidecar)", ns, name, discovery.ErrPodNotFound)
}

func newRunID() string {
	var b [8]byte
	rand.Read(b[:])
	return "run-" + hex.EncodeToString(b[:])
}

// measurePod measures one sidecar: its usage idle, then the load with A/B and eBPF
// residency running over the same window, and its usage under that load.
func (a *Agent) measurePod(ctx context.Context, job podJob, counters *runCounters) podOutcome {
	var out podOutcome
	sc := job.Sidecar
	sampler := a.measurer.(sampleTaker)
	pr := &agentapi.PodResult{Pod: discovery.APIPodRef(sc.Pod)}

	podIP := firstIPv4(sc.PodIPs)
	if podIP == "" {
		out.Problems = append(out.Problems, fmt.Sprintf("pod has no IP yet (IPs %v)", sc.PodIPs))
		return out
	}
	if len(sc.Processes) == 0 {
		out.Problems = append(out.Problems, "sidecar has no process to measure")
		return out
	}
	nsPath := fmt.Sprintf("%s/%d/ns/net", a.procRoot(), sc.Processes[0].PID)
	through := net.JoinHostPort(podIP, strconv.Itoa(int(job.Port)))
	around := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(job.Port)))
	targets := Targets([]discovery.Sidecar{sc}, a.facts.CgroupNamespace)

	idle, err := a.sidecarUsage(ctx, sampler, sc, targets, nil, IdleWindow)
	if err != nil {
		out.Problems = append(out.Problems, "idle usage: "+err.Error())
	}
	pr.SidecarIdle = idle
	if ctx.Err() != nil {
		out.Stopped = true
		out.Problems = append(out.Problems, "stopped before the load started")
		return out
	}

	abCfg, abReason := abConfig(job.Load)
	tracer, problem := startResidency(job, proxyPIDs(sc))
	if problem != "" {
		out.Problems = append(out.Problems, problem)
	}
	if tracer != nil {
		defer tracer.Close()
	}
	var resBefore residency.Snapshot
	if tracer != nil {
		if resBefore, err = tracer.Read(); err != nil {
			out.Problems = append(out.Problems, "eBPF residency: read: "+err.Error())
			tracer.Close()
			tracer = nil
		}
	}

	loadedStart := sampler.Sample(targets)
	if abReason == "" {
		abCfg.Through = countedEndpoint(abtest.Through(through), counters)
		abCfg.Around = countedEndpoint(abtest.Around(nsPath, around), counters)
		abCfg.Host = through
		r, err := abtest.Run(ctx, abCfg)
		if err != nil {
			out.Problems = append(out.Problems, "A/B: "+err.Error())
		} else {
			pr.ThroughSidecar, pr.AroundSidecar = r.Histograms()
			pr.Added = append(pr.Added, r.AddedLatency())
			pr.Requests = r.Through.Requests + r.Through.Errors + r.Around.Requests + r.Around.Errors
			pr.Errors = r.Through.Errors + r.Around.Errors
			// A/B's own window: the measured time, warm-up excluded.
			if r.AchievedRate > 0 {
				out.Measured = time.Duration(float64(pr.Requests) / r.AchievedRate * float64(time.Second))
			}
			out.Stopped = r.Stopped
			for _, w := range r.Warnings {
				out.Problems = append(out.Problems, "A/B: "+w)
			}
			for _, p := range []abtest.PathResult{r.Through, r.Around} {
				if p.Errors > 0 {
					out.Problems = append(out.Problems, fmt.Sprintf("A/B %s: %d errors, last: %s", p.Addr, p.Errors, p.LastError))
				}
			}
		}
	} else {
		out.Problems = append(out.Problems, "A/B not applicable: "+abReason+"; load sent through the sidecar only")
		opts := job.Load
		opts.Target = through
		base, baseErr := counters.requests.Load(), counters.errors.Load()
		opts.Progress = func(p loadgen.Progress) {
			counters.requests.Store(base + p.Requests)
			counters.errors.Store(baseErr + p.Errors)
		}
		r, err := loadgen.Run(ctx, opts)
		if err != nil {
			out.Problems = append(out.Problems, "load: "+err.Error())
		} else {
			counters.requests.Store(base + r.Requests)
			counters.errors.Store(baseErr + r.Errors)
			pr.ThroughSidecar = histogram.ToProto(r.Latency)
			pr.Requests, pr.Errors = r.Requests, r.Errors
			out.Measured = r.Duration
			out.Stopped = r.Stopped
			if err := r.Check(); err != nil {
				out.Problems = append(out.Problems, err.Error())
			}
			for kind, n := range r.ErrorsByKind {
				out.Problems = append(out.Problems, fmt.Sprintf("load: %d %s errors, e.g. %s", n, kind, r.ErrorSamples[kind]))
			}
		}
	}
	if loaded, err := a.sidecarUsage(ctx, sampler, sc, targets, loadedStart, 0); err != nil {
		out.Problems = append(out.Problems, "loaded usage: "+err.Error())
	} else {
		pr.SidecarLoaded = loaded
	}

	if tracer != nil {
		after, err := tracer.Read()
		if err != nil {
			out.Problems = append(out.Problems, "eBPF residency: read: "+err.Error())
		} else {
			w := after.Sub(&resBefore)
			al, problem := residencyResult(&w, job.Load.Protocol, tracer.Tier())
			if problem != "" {
				out.Problems = append(out.Problems, fmt.Sprintf("%s in the proxy processes %v (events %d, dropped %d)",
					problem, proxyPIDs(sc), w.Counters.Events, w.Counters.Drops()))
			}
			if al != nil {
				pr.Added = append(pr.Added, al)
			}
		}
	}
	if out.Measured > 0 {
		pr.Measured = durationpb.New(out.Measured)
	}
	if pr.ThroughSidecar != nil || len(pr.Added) > 0 {
		out.Result = pr
	} else if pr.SidecarIdle != nil {
		// Idle figures are still worth having when the load could not run.
		out.Result = pr
	}
	if ctx.Err() != nil {
		out.Stopped = true
	}
	return out
}

// pairable says whether the residency programs pair p's requests with their responses;
// the other protocols are measured by connection-level queueing.
func pairable(p loadgen.Protocol) bool { return p == loadgen.HTTP1 }

// residencyResult turns a traced window into the pod's eBPF added latency: request and
// response paired for HTTP/1.1, connection-level queueing for the protocols that multiplex
// or have no requests to pair. The problem says why there is none.
func residencyResult(w *residency.Snapshot, p loadgen.Protocol, tier ebpftier.Tier) (*agentapi.AddedLatency, string) {
	var h residency.Histogram
	method := ResidencyMethod
	if pairable(p) {
		h = w.Histograms[residency.Residency]
		if h.Total() == 0 {
			return nil, fmt.Sprintf("eBPF residency (tier %s) paired no request with its response", tier)
		}
	} else {
		method = QueueingMethod
		req, resp := &w.Histograms[residency.ForwardRequest], &w.Histograms[residency.ForwardResponse]
		if req.Total() == 0 || resp.Total() == 0 {
			return nil, fmt.Sprintf("eBPF connection-level queueing (tier %s; the fallback for %s, whose requests cannot be paired with responses) saw %d request-direction and %d response-direction forwards, and needs both",
				tier, p, req.Total(), resp.Total())
		}
		h = req.Convolve(resp)
	}
	wire := h
	if method == QueueingMethod {
		// The convolution's counts are weights; on the wire it counts request bursts.
		wire = h.Rescaled(w.Histograms[residency.ForwardRequest].Total())
	}
	al := &agentapi.AddedLatency{Method: method, Tier: Tier(tier), Histogram: residencyHistogram(&wire)}
	for _, q := range residencyQuantiles {
		al.Deltas = append(al.Deltas, &agentapi.Quantile{Quantile: q, Value: durationpb.New(h.Quantile(q))})
	}
	return al, ""
}

// residencyHistogram puts residency on the wire's microsecond layout, each bucket at its
// midpoint, so the plugin can merge it across pods and nodes.
func residencyHistogram(h *residency.Histogram) *agentapi.Histogram {
	out := histogram.New()
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		lo, hi := residency.BucketBounds(i)
		us := min(max(int64((lo+(hi-lo)/2+500)/1000), histogram.Lowest), histogram.Highest)
		_ = out.RecordValues(us, int64(c))
	}
	return histogram.ToProto(out)
}

// abConfig maps a load onto an A/B run, or says why A/B cannot honour it: A/B sends plain
// HTTP/1.1 GETs at a fixed rate, within its own, tighter limits.
func abConfig(o loadgen.Options) (abtest.Config, string) {
	switch {
	case o.Protocol != loadgen.HTTP1:
		return abtest.Config{}, fmt.Sprintf("A/B compares HTTP/1.1 requests and the load is %s", o.Protocol)
	case o.Rate == 0:
		return abtest.Config{}, "A/B needs a fixed rate and the load is closed loop"
	case o.Rate > abtest.MaxRate:
		return abtest.Config{}, fmt.Sprintf("rate %g/s is above A/B's limit of %g/s", o.Rate, abtest.MaxRate)
	case o.Duration > abtest.MaxDuration:
		return abtest.Config{}, fmt.Sprintf("duration %v is above A/B's limit of %v", o.Duration, abtest.MaxDuration)
	case o.Method != "" && !strings.EqualFold(o.Method, "GET"), len(o.Body) > 0, len(o.Headers) > 0:
		return abtest.Config{}, "A/B sends plain GETs and the load asks for another method, headers or a body"
	}
	conns := max(1, min(o.Connections/2, abtest.MaxConnections))
	if o.Connections == 0 {
		conns = max(1, loadgen.DefaultConnections/2)
	}
	warm := o.Warmup
	if warm == 0 {
		// abtest reads a zero warm-up as its default; a nanosecond is none.
		warm = time.Nanosecond
	}
	return abtest.Config{
		Path:        o.Path,
		Rate:        o.Rate,
		Duration:    o.Duration - o.Warmup,
		Warmup:      warm,
		Connections: conns,
		Timeout:     o.Timeout,
	}, ""
}

// startResidency starts tracing the proxy processes, or says why there is no residency.
func startResidency(job podJob, pids []uint32) (*residency.Tracer, string) {
	if len(job.Tiers) == 0 {
		if job.Forced {
			return nil, ""
		}
		return nil, "eBPF residency not measured: no eBPF tier attaches on this node"
	}
	// Pairing needs no queueing; the protocols it cannot pair need nothing else.
	opts := residency.Options{Queueing: !pairable(job.Load.Protocol)}
	if job.Forced {
		t, err := residency.StartWith(job.Tiers[0], pids, opts)
		if err != nil {
			return nil, fmt.Sprintf("forced eBPF tier %s did not attach: %v", job.Tiers[0], err)
		}
		return t, ""
	}
	t, attempts := residency.StartAuto(job.Tiers, pids, opts)
	if t == nil {
		var why []string
		for _, at := range attempts {
			why = append(why, fmt.Sprintf("%s: %v", at.Tier, at.Err))
		}
		return nil, "eBPF residency not measured: no tier attached (" + strings.Join(why, "; ") + ")"
	}
	return t, ""
}

// proxyPIDs are the sidecar's proxy processes; a sidecar whose processes are all helpers
// by name has every one traced, since one of them is doing the proxying.
func proxyPIDs(sc discovery.Sidecar) []uint32 {
	var pids, all []uint32
	for _, p := range sc.Processes {
		all = append(all, uint32(p.PID))
		if p.Role == discovery.RoleProxy {
			pids = append(pids, uint32(p.PID))
		}
	}
	if len(pids) == 0 {
		return all
	}
	return pids
}

// sidecarUsage is the sidecar container's usage from start (or, when nil, from a sample
// taken now and window later) to now.
func (a *Agent) sidecarUsage(ctx context.Context, sampler sampleTaker, sc discovery.Sidecar, targets usage.Targets, start *usage.Sample, window time.Duration) (*agentapi.Usage, error) {
	if start == nil {
		start = sampler.Sample(targets)
		t := time.NewTimer(window)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, context.Cause(ctx)
		case <-t.C:
		}
	}
	rep, err := usage.Between(start, sampler.Sample(targets))
	if err != nil {
		return nil, err
	}
	sidecars, errs := Sidecars(discovery.Snapshot{Sidecars: []discovery.Sidecar{sc}}, rep, a.facts.CgroupNamespace)
	var problems []string
	for _, e := range errs {
		problems = append(problems, e.GetError())
	}
	var u *agentapi.Usage
	if len(sidecars) == 1 {
		u = sidecars[0].GetUsage()
	}
	if len(problems) > 0 {
		return u, errors.New(strings.Join(problems, "; "))
	}
	return u, nil
}

func (a *Agent) procRoot() string {
	if s, ok := a.measurer.(*usage.Sampler); ok && s.Procs != nil {
		return s.Procs.Root()
	}
	return discovery.DefaultProcRoot
}

func firstIPv4(ips []string) string {
	for _, s := range ips {
		if ip := net.ParseIP(s); ip != nil && ip.To4() != nil {
			return s
		}
	}
	if len(ips) > 0 {
		return ips[0]
	}
	return ""
}

// countedEndpoint counts each request written on the endpoint's connections (A/B writes a
// request in one call) and each failed connect, for the progress events; A/B itself only
// reports at the end.
func countedEndpoint(e abtest.Endpoint, c *runCounters) abtest.Endpoint {
	dial := e.Dial
	e.Dial = func(ctx context.Context) (net.Conn, error) {
		conn, err := dial(ctx)
		if err != nil {
			c.errors.Add(1)
			return nil, err
		}
		return &countingConn{Conn: conn, c: c}, nil
	}
	return e
}

type countingConn struct {
	net.Conn
	c *runCounters
}

func (cc *countingConn) Write(b []byte) (int, error) {
	n, err := cc.Conn.Write(b)
	if err == nil {
		cc.c.requests.Add(1)
	}
	return n, err
}
