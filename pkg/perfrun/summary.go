package perfrun

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/bootstrap"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
)

// Methods of added latency, as the agent names them in AddedLatency.method: A/B, and the
// eBPF time in the proxy, per request for HTTP/1.1 (residency) or per forwarded burst for
// multiplexed protocols (queueing).
const (
	MethodAB        = "ab"
	MethodResidency = "ebpf-residency"
	MethodQueueing  = "ebpf-queueing"
)

// Quantiles are the quantiles every view reports.
var Quantiles = []float64{0.5, 0.9, 0.99}

// Bootstrap settings for intervals recomputed from merged histograms: the agent's own A/B
// settings, and a fixed seed so that a stored run renders the same every time.
const (
	Resamples  = 1000
	Confidence = 0.95
)

// Summary is a node's figures, or the whole run's when Node is empty.
type Summary struct {
	Node string
	// Pods measured, and pods that failed or were not reached.
	Pods, FailedPods int
	// Requests sent on every path (warm-up included for loads without A/B) and errors.
	Requests, Errors uint64
	// AchievedRate is requests per second over the measured time; on the whole run, the
	// sum over nodes (they run at the same time).
	AchievedRate float64
	// Through and Around are the latency histograms through the sidecar and around it
	// (Around is empty when A/B did not run), in microseconds.
	Through, Around *hdrhistogram.Histogram
	// AB is the added latency by A/B per quantile, with bootstrap intervals; empty when
	// A/B did not run.
	AB []bootstrap.Delta
	// Residency is the eBPF time-in-proxy histogram (microseconds), empty when it did not
	// run; EBPFMethod says which eBPF method made it (MethodResidency, or MethodQueueing when
	// no pod had residency) and ResidencyTiers the tiers that measured it.
	Residency      *hdrhistogram.Histogram
	EBPFMethod     string
	ResidencyTiers []agentapi.EbpfTier
	// Sidecar cost: CPU and working set under load and idle, averaged over the measured
	// sidecars, and CPU per 1000 requests per second through the sidecar.
	SidecarCPU, SidecarIdleCPU float64 // millicores
	SidecarMemory              uint64  // bytes
	CPUPer1kRPS                float64 // millicores; 0 when unknown
	// The agents' own cost while they ran (summed over nodes on the whole run).
	AgentCPU    float64
	AgentMemory uint64
	// Problems are the node's error and its per-pod errors, each naming its pod or node.
	Problems []string
	// Failed says the node returned no result at all.
	Failed bool
}

// Measured says whether any latency was measured.
func (s *Summary) Measured() bool { return s.Through != nil && s.Through.TotalCount() > 0 }

// Latency is the through-sidecar latency at quantile q.
func (s *Summary) Latency(q float64) time.Duration { return histogram.Quantile(s.Through, q) }

// AroundLatency is the around-sidecar latency at quantile q.
func (s *Summary) AroundLatency(q float64) time.Duration { return histogram.Quantile(s.Around, q) }

// ABDelta is the A/B added latency at quantile q, if A/B ran.
func (s *Summary) ABDelta(q float64) (bootstrap.Delta, bool) {
	for _, d := range s.AB {
		if d.Quantile == q {
			return d, true
		}
	}
	return bootstrap.Delta{}, false
}

// ResidencyAt is the eBPF residency at quantile q, if it ran.
func (s *Summary) ResidencyAt(q float64) (time.Duration, bool) {
	if s.Residency == nil || s.Residency.TotalCount() == 0 {
		return 0, false
	}
	return histogram.Quantile(s.Residency, q), true
}

// accumulator sums pods' figures into one Summary.
type accumulator struct {
	s               Summary
	through, around []*hdrhistogram.Histogram
	ebpf            map[string][]*hdrhistogram.Histogram // by method
	ebpfTiers       map[string][]agentapi.EbpfTier
	cpuSeconds      float64 // millicore-seconds under load, over pods with a rate
	throughReqs     float64 // requests through the sidecar, over the same pods
	cpuSum, idleSum float64
	memSum          uint64
	cpuN, idleN     int
}

func (a *accumulator) addPod(p *agentapi.PodResult) error {
	a.s.Pods++
	a.s.Requests += p.GetRequests()
	a.s.Errors += p.GetErrors()
	var through *hdrhistogram.Histogram
	if p.GetThroughSidecar() != nil {
		h, err := histogram.FromProto(p.GetThroughSidecar())
		if err != nil {
			return fmt.Errorf("pod %s/%s: through-sidecar %w", p.GetPod().GetNamespace(), p.GetPod().GetName(), err)
		}
		through = h
		a.through = append(a.through, h)
	}
	if p.GetAroundSidecar() != nil {
		h, err := histogram.FromProto(p.GetAroundSidecar())
		if err != nil {
			return fmt.Errorf("pod %s/%s: around-sidecar %w", p.GetPod().GetNamespace(), p.GetPod().GetName(), err)
		}
		a.around = append(a.around, h)
	}
	for _, al := range p.GetAdded() {
		m := al.GetMethod()
		if (m != MethodResidency && m != MethodQueueing) || al.GetHistogram() == nil {
			continue
		}
		h, err := histogram.FromProto(al.GetHistogram())
		if err != nil {
			return fmt.Errorf("pod %s/%s: %s %w", p.GetPod().GetNamespace(), p.GetPod().GetName(), m, err)
		}
		if a.ebpf == nil {
			a.ebpf, a.ebpfTiers = map[string][]*hdrhistogram.Histogram{}, map[string][]agentapi.EbpfTier{}
		}
		a.ebpf[m] = append(a.ebpf[m], h)
		if !slices.Contains(a.ebpfTiers[m], al.GetTier()) {
			a.ebpfTiers[m] = append(a.ebpfTiers[m], al.GetTier())
		}
	}
	if u := p.GetSidecarLoaded(); u != nil {
		a.cpuSum += u.GetCpuMillicores()
		a.memSum += u.GetMemoryWorkingSetBytes()
		a.cpuN++
		if m := p.GetMeasured().AsDuration(); through != nil && m > 0 && through.TotalCount() > 0 {
			a.cpuSeconds += u.GetCpuMillicores() * m.Seconds()
			a.throughReqs += float64(through.TotalCount())
		}
	}
	if u := p.GetSidecarIdle(); u != nil {
		a.idleSum += u.GetCpuMillicores()
		a.idleN++
	}
	return nil
}

func (a *accumulator) finish() Summary {
	s := a.s
	if a.cpuN > 0 {
		s.SidecarCPU = a.cpuSum / float64(a.cpuN)
		s.SidecarMemory = a.memSum / uint64(a.cpuN)
	}
	if a.idleN > 0 {
		s.SidecarIdleCPU = a.idleSum / float64(a.idleN)
	}
	if a.throughReqs > 0 {
		// Millicore-seconds per request, times 1000 requests per second.
		s.CPUPer1kRPS = a.cpuSeconds / a.throughReqs * 1000
	}
	if len(a.through) > 0 {
		s.Through, _ = histogram.Merge(a.through...)
	}
	if len(a.around) > 0 {
		s.Around, _ = histogram.Merge(a.around...)
	}
	// Residency and queueing measure different things; they are not merged together.
	for _, m := range []string{MethodResidency, MethodQueueing} {
		if hs := a.ebpf[m]; len(hs) > 0 {
			s.Residency, _ = histogram.Merge(hs...)
			s.EBPFMethod, s.ResidencyTiers = m, a.ebpfTiers[m]
			break
		}
	}
	if s.Through != nil && s.Around != nil && s.Through.TotalCount() > 0 && s.Around.TotalCount() > 0 {
		s.AB = abDeltas(s.Through, s.Around)
	}
	return s
}

// NodeSummary computes one node's figures.
func NodeSummary(n *NodeRun) Summary {
	a := accumulator{s: Summary{Node: n.GetNode()}}
	a.add(n)
	return a.finish()
}

func (a *accumulator) add(n *NodeRun) {
	if n.GetError() != "" {
		a.s.Problems = append(a.s.Problems, fmt.Sprintf("node %s: %s", n.GetNode(), n.GetError()))
	}
	res := n.GetResult()
	if res == nil {
		a.s.Failed = true
		a.s.FailedPods += len(n.GetPods())
		return
	}
	for _, p := range res.GetPods() {
		if err := a.addPod(p); err != nil {
			a.s.Problems = append(a.s.Problems, fmt.Sprintf("node %s: %v", n.GetNode(), err))
		}
	}
	failed := map[string]bool{}
	for _, e := range res.GetErrors() {
		a.s.Problems = append(a.s.Problems, fmt.Sprintf("node %s: pod %s/%s: %s", n.GetNode(), e.GetPod().GetNamespace(), e.GetPod().GetName(), e.GetError()))
		failed[e.GetPod().GetNamespace()+"/"+e.GetPod().GetName()] = true
	}
	for _, p := range res.GetPods() {
		delete(failed, p.GetPod().GetNamespace()+"/"+p.GetPod().GetName())
	}
	a.s.FailedPods += len(failed)
	a.s.AchievedRate += res.GetAchievedRate()
	if u := res.GetAgent(); u != nil {
		a.s.AgentCPU += u.GetCpuMillicores()
		a.s.AgentMemory += u.GetMemoryWorkingSetBytes()
	}
}

// Summarize computes every node's figures, in the run's node order, and the whole run's.
func Summarize(r *Run) (nodes []Summary, total Summary) {
	all := accumulator{}
	for _, n := range r.GetNodes() {
		nodes = append(nodes, NodeSummary(n))
		all.add(n)
	}
	total = all.finish()
	// The whole run failed only when every node did.
	total.Failed = len(nodes) > 0 && !slices.ContainsFunc(nodes, func(s Summary) bool { return !s.Failed })
	return nodes, total
}

// abDeltas recomputes A/B's added latency from merged histograms, so nodes and the whole
// run get intervals the way each pod got its own from the agent.
func abDeltas(through, around *hdrhistogram.Histogram) []bootstrap.Delta {
	rng := rand.New(rand.NewPCG(1, 2))
	return bootstrap.BinnedDeltas(bins(through), bins(around), Quantiles, Resamples, Confidence, rng)
}

// bins lists a histogram's non-empty buckets in nanoseconds, ascending. Resampling the
// buckets rather than the values they count keeps the cost independent of how many requests
// were recorded, so every recorded value counts.
func bins(h *hdrhistogram.Histogram) []bootstrap.Bin {
	var out []bootstrap.Bin
	for _, b := range h.Distribution() {
		if b.Count > 0 {
			// The bucket's top, the value its quantiles report.
			out = append(out, bootstrap.Bin{Value: b.To * int64(time.Microsecond), Count: b.Count})
		}
	}
	return out
}
