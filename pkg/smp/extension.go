package smp

import (
	"bytes"
	"compress/zlib"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// ExtensionFormat marks the x-kubectl-mesh part; a reader that sees another value must not
// assume the fields below.
const ExtensionFormat = "kubectl-mesh.dev/smp-extension/v1"

// Extension holds what SMP has no field for. Latencies are in microseconds (the unit the
// agents record in), rates in requests per second, CPU in millicores, memory in bytes.
type Extension struct {
	Format        string `json:"format"`
	RunID         string `json:"run_id"`
	PluginVersion string `json:"plugin_version,omitempty"`
	// The kubeconfig context the run used.
	Context string `json:"context,omitempty"`
	// The user stopped the run early; the figures cover what ran until then.
	Interrupted bool   `json:"interrupted"`
	Target      Target `json:"target"`
	Load        Load   `json:"load"`
	Mesh        Mesh   `json:"mesh"`
	// Nodes that returned results and nodes that did not.
	NodesMeasured int `json:"nodes_measured"`
	NodesFailed   int `json:"nodes_failed"`
	// Every node of the run, in the run's order, failed ones included.
	Nodes []Node `json:"nodes"`
	// The whole run: histograms merged over the measured nodes, counts and costs summed.
	Run Figures `json:"run"`
}

// Target is what the user named and the port the load went to.
type Target struct {
	// "deploy", "svc", "pod" or "selector".
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name,omitempty"`
	Selector  string `json:"selector,omitempty"`
	Port      uint32 `json:"port"`
}

// Load is the load as asked and as each node's agent generated it.
type Load struct {
	// "http1", "http2", "grpc" or "tcp".
	Protocol string `json:"protocol"`
	// The rate each node's agent generated; 0 means closed loop at the maximum rate.
	RatePerNodeRPS float64 `json:"rate_per_node_rps"`
	// The rate the user asked for, and whether it was per node or for the whole run.
	AskedRateRPS   float64 `json:"asked_rate_rps"`
	AskedRateScope string  `json:"asked_rate_scope"`
	Connections    uint32  `json:"connections"`
	DurationS      float64 `json:"duration_s"`
	WarmupS        float64 `json:"warmup_s"`
	Method         string  `json:"method,omitempty"`
	Path           string  `json:"path,omitempty"`
	// The eBPF tier the user forced, if any.
	ForcedTier string `json:"forced_ebpf_tier,omitempty"`
}

// Mesh is the detected mesh as its detector named it (SMP's enum cannot name every mesh).
type Mesh struct {
	Name      string `json:"name,omitempty"`
	Version   string `json:"version,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Node is one node's part of the run.
type Node struct {
	Name string `json:"name"`
	// The node returned no result at all.
	Failed bool `json:"failed"`
	// Why the node's run failed or is incomplete.
	Error string `json:"error,omitempty"`
	// The node's error and each pod's, naming the pod.
	Problems []string `json:"problems,omitempty"`
	// The target pods on the node.
	Pods    []Pod    `json:"pods"`
	Machine *Machine `json:"machine,omitempty"`
	Figures
}

// Pod names a target pod.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
}

// Machine is a node as the Kubernetes API described it.
type Machine struct {
	CPUCores         uint32 `json:"cpu_cores"`
	MemoryBytes      uint64 `json:"memory_bytes"`
	KernelVersion    string `json:"kernel_version,omitempty"`
	OSImage          string `json:"os_image,omitempty"`
	Architecture     string `json:"architecture,omitempty"`
	ContainerRuntime string `json:"container_runtime,omitempty"`
}

// Figures are a node's measurements, or the whole run's.
type Figures struct {
	PodsMeasured int `json:"pods_measured"`
	// Target pods that were not measured (their node failed, or the agent gave an error).
	PodsFailed int `json:"pods_failed"`
	// Requests sent on every path (both A/B paths; warm-up included for loads without A/B)
	// and those that failed.
	Requests uint64 `json:"requests"`
	Errors   uint64 `json:"errors"`
	// Requests per second over the measured time (all paths); the run's is the sum over nodes.
	AchievedRPS float64 `json:"achieved_rps"`
	// Requests per second that went through the sidecars.
	ThroughSidecarRPS float64 `json:"through_sidecar_rps"`
	// Latency through the sidecar and around it (the baseline; absent when A/B did not run).
	Through *Latency `json:"through_sidecar,omitempty"`
	Around  *Latency `json:"around_sidecar,omitempty"`
	// Added latency by A/B (through minus around, per quantile, with bootstrap intervals).
	AddedAB *AddedAB `json:"added_latency_ab,omitempty"`
	// Added latency by eBPF residency (time each request spent inside the proxy).
	AddedResidency *AddedResidency `json:"added_latency_residency,omitempty"`
	Sidecars       *Sidecars       `json:"sidecars,omitempty"`
	// The agents' own cost while the load ran, summed over nodes.
	Agent *Usage `json:"agent,omitempty"`
}

// Latency is a latency distribution: its quantile table and the histogram itself.
type Latency struct {
	Count  int64   `json:"count"`
	MinUS  int64   `json:"min_us"`
	MeanUS float64 `json:"mean_us"`
	P50US  int64   `json:"p50_us"`
	P90US  int64   `json:"p90_us"`
	P99US  int64   `json:"p99_us"`
	P999US int64   `json:"p999_us"`
	MaxUS  int64   `json:"max_us"`
	// The HdrHistogram in its standard V2 compressed, base64 encoding (what every
	// HdrHistogram implementation reads: hdrhistogram.Decode in Go), values in microseconds.
	Histogram string `json:"histogram"`
}

// AddedAB is the added latency by A/B.
type AddedAB struct {
	Confidence float64      `json:"confidence"`
	Resamples  int          `json:"resamples"`
	Quantiles  []ABQuantile `json:"quantiles"`
}

// ABQuantile is the added latency at one quantile.
type ABQuantile struct {
	Quantile float64 `json:"quantile"`
	// Through minus around at the quantile, and its bootstrap interval.
	AddedUS  float64 `json:"added_us"`
	CILowUS  float64 `json:"ci_low_us"`
	CIHighUS float64 `json:"ci_high_us"`
	// The two distributions' own quantiles.
	ThroughUS float64 `json:"through_us"`
	AroundUS  float64 `json:"around_us"`
}

// AddedResidency is the added latency by eBPF residency.
type AddedResidency struct {
	// The tiers that measured it ("tp_btf", "raw_tp", "fentry", "kprobe").
	Tiers []string `json:"tiers"`
	Latency
}

// Sidecars is what the measured sidecars used under load.
type Sidecars struct {
	// Sidecars whose usage was measured.
	Count int `json:"count"`
	// Averages per sidecar: CPU under load and idle, working-set memory under load.
	CPUMillicores     float64 `json:"cpu_millicores"`
	IdleCPUMillicores float64 `json:"idle_cpu_millicores"`
	MemoryBytes       uint64  `json:"memory_working_set_bytes"`
	// Sums over the sidecars.
	TotalCPUMillicores float64 `json:"total_cpu_millicores"`
	TotalMemoryBytes   uint64  `json:"total_memory_working_set_bytes"`
	// Sidecar CPU per 1000 requests per second through it; absent when unknown.
	CPUMillicoresPer1kRPS float64 `json:"cpu_millicores_per_1k_rps,omitempty"`
}

// Usage is CPU and working-set memory.
type Usage struct {
	CPUMillicores float64 `json:"cpu_millicores"`
	MemoryBytes   uint64  `json:"memory_working_set_bytes"`
}

func buildExtension(r *perfrun.Run, nodes []perfrun.Summary, total perfrun.Summary, rates map[string]sidecarUse) (*Extension, error) {
	t, load := r.GetTarget(), r.GetLoad()
	x := &Extension{
		Format:        ExtensionFormat,
		RunID:         r.GetId(),
		PluginVersion: r.GetPluginVersion(),
		Context:       r.GetContext(),
		Interrupted:   r.GetInterrupted(),
		Target: Target{Kind: t.GetKind(), Namespace: t.GetNamespace(), Name: t.GetName(),
			Selector: t.GetSelector(), Port: t.GetPort()},
		Load: Load{
			Protocol:       protocolName(load.GetProtocol()),
			RatePerNodeRPS: finite(load.GetRate()),
			AskedRateRPS:   finite(r.GetAskedRate()),
			AskedRateScope: rateScope(r),
			Connections:    load.GetConnections(),
			DurationS:      load.GetDuration().AsDuration().Seconds(),
			WarmupS:        load.GetWarmup().AsDuration().Seconds(),
			Method:         load.GetMethod(),
			Path:           load.GetPath(),
		},
		Mesh: Mesh{Name: r.GetMesh().GetName(), Version: r.GetMesh().GetVersion(), Namespace: r.GetMesh().GetNamespace()},
	}
	if ft := r.GetForceTier(); ft != agentapi.EbpfTier_EBPF_TIER_UNSPECIFIED {
		x.Load.ForcedTier = TierName(ft)
	}
	machines := map[string]*perfrun.Node{}
	for _, n := range r.GetEnvironment().GetNodes() {
		machines[n.GetName()] = n
	}
	for i, n := range r.GetNodes() {
		s := nodes[i]
		f, err := figures(s, rates[n.GetNode()])
		if err != nil {
			return nil, fmt.Errorf("smp: node %s: %w", n.GetNode(), err)
		}
		nx := Node{Name: n.GetNode(), Failed: s.Failed, Error: n.GetError(), Problems: s.Problems, Figures: f, Pods: []Pod{}}
		for _, p := range n.GetPods() {
			nx.Pods = append(nx.Pods, Pod{Namespace: p.GetNamespace(), Name: p.GetName(), UID: p.GetUid()})
		}
		if m := machines[n.GetNode()]; m != nil {
			nx.Machine = &Machine{CPUCores: m.GetCpuCores(), MemoryBytes: m.GetMemoryBytes(), KernelVersion: m.GetKernelVersion(),
				OSImage: m.GetOsImage(), Architecture: m.GetArchitecture(), ContainerRuntime: m.GetContainerRuntime()}
		}
		if s.Failed {
			x.NodesFailed++
		} else {
			x.NodesMeasured++
		}
		x.Nodes = append(x.Nodes, nx)
	}
	if x.Nodes == nil {
		x.Nodes = []Node{}
	}
	var err error
	x.Run, err = figures(total, rates[""])
	if err != nil {
		return nil, fmt.Errorf("smp: whole run: %w", err)
	}
	return x, nil
}

func figures(s perfrun.Summary, u sidecarUse) (Figures, error) {
	f := Figures{
		PodsMeasured:      s.Pods,
		PodsFailed:        s.FailedPods,
		Requests:          s.Requests,
		Errors:            s.Errors,
		AchievedRPS:       finite(s.AchievedRate),
		ThroughSidecarRPS: finite(u.throughRPS),
	}
	var err error
	if f.Through, err = latency(s.Through); err != nil {
		return f, fmt.Errorf("through-sidecar histogram: %w", err)
	}
	if f.Around, err = latency(s.Around); err != nil {
		return f, fmt.Errorf("around-sidecar histogram: %w", err)
	}
	if len(s.AB) > 0 {
		f.AddedAB = &AddedAB{Confidence: perfrun.Confidence, Resamples: perfrun.Resamples}
		for _, d := range s.AB {
			f.AddedAB.Quantiles = append(f.AddedAB.Quantiles, ABQuantile{
				Quantile: d.Quantile, AddedUS: us(d.Value), CILowUS: us(d.CILow), CIHighUS: us(d.CIHigh),
				ThroughUS: us(d.Through), AroundUS: us(d.Around),
			})
		}
	}
	res, err := latency(s.Residency)
	if err != nil {
		return f, fmt.Errorf("residency histogram: %w", err)
	}
	if res != nil {
		f.AddedResidency = &AddedResidency{Tiers: []string{}, Latency: *res}
		for _, t := range s.ResidencyTiers {
			f.AddedResidency.Tiers = append(f.AddedResidency.Tiers, TierName(t))
		}
	}
	if u.count > 0 {
		f.Sidecars = &Sidecars{
			Count:                 u.count,
			CPUMillicores:         finite(s.SidecarCPU),
			IdleCPUMillicores:     finite(s.SidecarIdleCPU),
			MemoryBytes:           s.SidecarMemory,
			TotalCPUMillicores:    finite(u.cpu),
			TotalMemoryBytes:      u.memory,
			CPUMillicoresPer1kRPS: finite(s.CPUPer1kRPS),
		}
	}
	if s.AgentCPU > 0 || s.AgentMemory > 0 {
		f.Agent = &Usage{CPUMillicores: finite(s.AgentCPU), MemoryBytes: s.AgentMemory}
	}
	return f, nil
}

// finite keeps JSON encodable: a NaN or infinite figure (which only a broken agent could
// send) becomes 0, "unknown".
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0
	}
	return v
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func usInt(d time.Duration) int64 { return int64(d / time.Microsecond) }

// latency tabulates and encodes a histogram; nil when nothing was recorded.
func latency(h *hdrhistogram.Histogram) (*Latency, error) {
	if h == nil || h.TotalCount() == 0 {
		return nil, nil
	}
	enc, err := h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
	if err != nil {
		return nil, err
	}
	return &Latency{
		Count:     h.TotalCount(),
		MinUS:     h.Min(),
		MeanUS:    h.Mean(),
		P50US:     usInt(histogram.Quantile(h, 0.5)),
		P90US:     usInt(histogram.Quantile(h, 0.9)),
		P99US:     usInt(histogram.Quantile(h, 0.99)),
		P999US:    usInt(histogram.Quantile(h, 0.999)),
		MaxUS:     h.Max(),
		Histogram: string(enc),
	}, nil
}

// Bounds on the histograms Read decodes: far above what the agents' layout produces (a few
// hundred kilobytes with every bucket filled), small enough that a hostile document cannot
// make the decoder allocate much.
const (
	maxEncodedHistogram      = 1 << 20
	maxDecompressedHistogram = 4 << 20
	// The V2 header: cookie, payload length, normalizing offset, significant figures (int32
	// each), lowest and highest trackable values (int64 each), a float64 ratio.
	hdrHeaderSize = 40
)

// DecodeHistogram decodes a Latency's histogram. It checks the encoding, its size and that
// the layout is the agents' microsecond one before the HDR library sees it, since that
// library allocates whatever layout the header names and panics on malformed input.
func DecodeHistogram(s string) (h *hdrhistogram.Histogram, err error) {
	if s == "" {
		return nil, errors.New("empty histogram")
	}
	if len(s) > maxEncodedHistogram {
		return nil, fmt.Errorf("histogram of %d bytes exceeds %d", len(s), maxEncodedHistogram)
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("malformed histogram: %w", err)
	}
	if len(raw) < 8 || binary.BigEndian.Uint32(raw)&^0xf0 != uint32(hdrhistogram.V2CompressedEncodingCookieBase) {
		return nil, errors.New("malformed histogram: not HdrHistogram's V2 compressed encoding")
	}
	if n := binary.BigEndian.Uint32(raw[4:]); uint64(n) > uint64(len(raw)-8) {
		return nil, errors.New("malformed histogram: truncated")
	}
	z, err := zlib.NewReader(bytes.NewReader(raw[8:]))
	if err != nil {
		return nil, fmt.Errorf("malformed histogram: %w", err)
	}
	defer z.Close()
	plain, err := io.ReadAll(io.LimitReader(z, maxDecompressedHistogram+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("malformed histogram: %w", err)
	case len(plain) > maxDecompressedHistogram:
		return nil, fmt.Errorf("histogram decompresses to more than %d bytes", maxDecompressedHistogram)
	case len(plain) < hdrHeaderSize:
		return nil, errors.New("malformed histogram: short header")
	}
	sf := int64(binary.BigEndian.Uint32(plain[12:]))
	lo, hi := int64(binary.BigEndian.Uint64(plain[16:])), int64(binary.BigEndian.Uint64(plain[24:]))
	if lo != histogram.Lowest || hi != histogram.Highest || sf != histogram.SigFigs {
		return nil, fmt.Errorf("histogram layout %d..%d/%d is not the agents' %d..%d/%d", lo, hi, sf, histogram.Lowest, histogram.Highest, histogram.SigFigs)
	}
	defer func() {
		// Counts past the layout's end make the library index out of range.
		if p := recover(); p != nil {
			h, err = nil, fmt.Errorf("malformed histogram: %v", p)
		}
	}()
	h, err = hdrhistogram.Decode([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("malformed histogram: %w", err)
	}
	return h, nil
}

// TierName is an eBPF tier's short name, as the extension writes it.
func TierName(t agentapi.EbpfTier) string {
	return strings.ToLower(strings.TrimPrefix(t.String(), "EBPF_TIER_"))
}

func protocolName(p agentapi.Protocol) string {
	if p == agentapi.Protocol_PROTOCOL_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(p.String(), "PROTOCOL_"))
}
