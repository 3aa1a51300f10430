// Package metrics exposes the agent's own state to Prometheus: who it is, which eBPF tiers
// its node allows, and proof that the chosen tier's program fires.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
)

// Info labels the mesh_agent_info gauge.
type Info struct {
	Node, Version, Kernel string
	Tier                  ebpftier.Tier
}

// SendReader is the attached probe program's counter.
type SendReader interface {
	Read() (ebpftier.SendCount, error)
}

// NewRegistry holds the Go and process collectors and the agent's metrics. sends may be
// nil when no eBPF tier is attached.
func NewRegistry(info Info, attempts []ebpftier.Attempt, sends SendReader) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)

	infoGauge := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mesh_agent_info",
		Help: "Always 1; labels describe the agent, its node and the eBPF tier it runs.",
		ConstLabels: prometheus.Labels{
			"node": info.Node, "version": info.Version, "kernel": info.Kernel, "tier": info.Tier.String(),
		},
	})
	infoGauge.Set(1)
	reg.MustRegister(infoGauge)

	avail := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mesh_agent_ebpf_tier_available",
		Help: "1 if the tier's probe program loaded and attached at start-up, 0 if it failed; tiers not tried are absent.",
	}, []string{"tier"})
	for _, a := range attempts {
		v := 0.0
		if a.OK() {
			v = 1
		}
		avail.WithLabelValues(a.Tier.String()).Set(v)
	}
	reg.MustRegister(avail)

	if sends != nil {
		reg.MustRegister(&sendCollector{tier: info.Tier.String(), sends: sends})
	}
	return reg
}

// Handler serves reg in the Prometheus exposition formats.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

var (
	sendCallsDesc = prometheus.NewDesc("mesh_agent_ebpf_probe_send_calls_total",
		"TCP send calls on the node seen by the attached tier probe program.", []string{"tier"}, nil)
	sendBytesDesc = prometheus.NewDesc("mesh_agent_ebpf_probe_send_bytes_total",
		"TCP bytes sent on the node as seen by the attached tier probe program.", []string{"tier"}, nil)
)

// sendCollector reads the BPF map at scrape time, so the figures are never stale.
type sendCollector struct {
	tier  string
	sends SendReader
}

func (c *sendCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sendCallsDesc
	ch <- sendBytesDesc
}

func (c *sendCollector) Collect(ch chan<- prometheus.Metric) {
	n, err := c.sends.Read()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(sendCallsDesc, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(sendCallsDesc, prometheus.CounterValue, float64(n.Calls), c.tier)
	ch <- prometheus.MustNewConstMetric(sendBytesDesc, prometheus.CounterValue, float64(n.Bytes), c.tier)
}
