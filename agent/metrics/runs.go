package metrics

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
)

// RunSource gives the last finished run, nil before the first.
type RunSource interface {
	LastRun() *agentapi.RunResult
}

// runQuantiles are the quantiles the run series report, the ones the plugin shows.
var runQuantiles = []float64{0.5, 0.9, 0.99}

var (
	podLabels   = []string{"namespace", "pod"}
	runInfoDesc = prometheus.NewDesc("mesh_agent_last_run_end_timestamp_seconds",
		"When the last run on this node ended; the mesh_agent_last_run_* series describe that run.",
		[]string{"run_id", "stopped"}, nil)
	runRateDesc = prometheus.NewDesc("mesh_agent_last_run_achieved_rate",
		"Requests per second the last run sent from this node, over its measured time.", nil, nil)
	runRequestsDesc = prometheus.NewDesc("mesh_agent_last_run_requests",
		"Requests the last run sent to the pod, on every path.", podLabels, nil)
	runErrorsDesc = prometheus.NewDesc("mesh_agent_last_run_errors",
		"Requests of the last run to the pod that failed.", podLabels, nil)
	runLatencyDesc = prometheus.NewDesc("mesh_agent_last_run_latency_seconds",
		"Latency quantiles of the last run, through the sidecar or around it.",
		[]string{"namespace", "pod", "path", "quantile"}, nil)
	runAddedDesc = prometheus.NewDesc("mesh_agent_last_run_added_latency_seconds",
		"Latency the sidecar added in the last run, by method (ab, ebpf-residency) and eBPF tier.",
		[]string{"namespace", "pod", "method", "tier", "quantile"}, nil)
	runCPUDesc = prometheus.NewDesc("mesh_agent_last_run_sidecar_cpu_millicores",
		"The sidecar's CPU before the last run's load (idle) and during it (loaded).",
		[]string{"namespace", "pod", "state"}, nil)
	runMemoryDesc = prometheus.NewDesc("mesh_agent_last_run_sidecar_memory_working_set_bytes",
		"The sidecar's memory working set at the end of the last run's load.", podLabels, nil)
)

// RegisterRuns adds the series of the last finished run, read from src at each scrape.
func RegisterRuns(reg *prometheus.Registry, src RunSource) {
	reg.MustRegister(&runCollector{src: src})
}

type runCollector struct{ src RunSource }

func (c *runCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{runInfoDesc, runRateDesc, runRequestsDesc, runErrorsDesc, runLatencyDesc, runAddedDesc, runCPUDesc, runMemoryDesc} {
		ch <- d
	}
}

func (c *runCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.src.LastRun()
	if r == nil {
		return
	}
	stopped := "false"
	if r.GetStopped() {
		stopped = "true"
	}
	ch <- prometheus.MustNewConstMetric(runInfoDesc, prometheus.GaugeValue, float64(r.GetEndTime().AsTime().UnixNano())/1e9, r.GetRunId(), stopped)
	ch <- prometheus.MustNewConstMetric(runRateDesc, prometheus.GaugeValue, r.GetAchievedRate())
	for _, p := range r.GetPods() {
		ns, pod := p.GetPod().GetNamespace(), p.GetPod().GetName()
		ch <- prometheus.MustNewConstMetric(runRequestsDesc, prometheus.GaugeValue, float64(p.GetRequests()), ns, pod)
		ch <- prometheus.MustNewConstMetric(runErrorsDesc, prometheus.GaugeValue, float64(p.GetErrors()), ns, pod)
		for path, hp := range map[string]*agentapi.Histogram{"through": p.GetThroughSidecar(), "around": p.GetAroundSidecar()} {
			h, err := histogram.FromProto(hp)
			if err != nil || h.TotalCount() == 0 {
				continue
			}
			for _, q := range runQuantiles {
				ch <- prometheus.MustNewConstMetric(runLatencyDesc, prometheus.GaugeValue, histogram.Quantile(h, q).Seconds(), ns, pod, path, quantileLabel(q))
			}
		}
		for _, a := range p.GetAdded() {
			tier := strings.ToLower(strings.TrimPrefix(a.GetTier().String(), "EBPF_TIER_"))
			for _, d := range a.GetDeltas() {
				ch <- prometheus.MustNewConstMetric(runAddedDesc, prometheus.GaugeValue, d.GetValue().AsDuration().Seconds(), ns, pod, a.GetMethod(), tier, quantileLabel(d.GetQuantile()))
			}
		}
		if u := p.GetSidecarIdle(); u != nil {
			ch <- prometheus.MustNewConstMetric(runCPUDesc, prometheus.GaugeValue, u.GetCpuMillicores(), ns, pod, "idle")
		}
		if u := p.GetSidecarLoaded(); u != nil {
			ch <- prometheus.MustNewConstMetric(runCPUDesc, prometheus.GaugeValue, u.GetCpuMillicores(), ns, pod, "loaded")
			ch <- prometheus.MustNewConstMetric(runMemoryDesc, prometheus.GaugeValue, float64(u.GetMemoryWorkingSetBytes()), ns, pod)
		}
	}
}

func quantileLabel(q float64) string { return strconv.FormatFloat(q, 'g', -1, 64) }
