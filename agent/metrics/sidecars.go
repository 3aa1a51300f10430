package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// SidecarFigures are one sidecar container's figures at a scrape.
type SidecarFigures struct {
	Namespace, Pod, Container, Mesh string
	// HasCPU is false when no CPU rate exists yet (the container's first scrape) or its
	// cgroup has no CPU accounting; the series is then left out rather than shown as 0.
	HasCPU        bool
	CPUMillicores float64
	HasMemory     bool
	WorkingSet    uint64
}

// Figures are what a scrape reports about the node's sidecars and the agent itself.
type Figures struct {
	// DiscoveryReady is false while the agent has no synced pod watch; the sidecar series
	// are then absent, not zero.
	DiscoveryReady bool
	Sidecars       []SidecarFigures
	// Meshes counts the sidecars found per mesh, including those that could not be measured.
	Meshes map[string]int
	// Agent figures; HasAgentCPU is false on the first scrape.
	HasAgentCPU        bool
	AgentCPUMillicores float64
	HasAgentRSS        bool
	AgentRSS           uint64
}

// FigureSource produces the figures at scrape time.
type FigureSource interface {
	Figures() Figures
}

var (
	sidecarLabels  = []string{"namespace", "pod", "container", "mesh"}
	sidecarCPUDesc = prometheus.NewDesc("mesh_agent_sidecar_cpu_millicores",
		"Sidecar container CPU from its cgroup, averaged over the time since the previous scrape (absent on the container's first scrape).",
		sidecarLabels, nil)
	sidecarWSDesc = prometheus.NewDesc("mesh_agent_sidecar_memory_working_set_bytes",
		"Sidecar container memory working set from its cgroup (usage minus inactive file, the figure kubectl top shows).",
		sidecarLabels, nil)
	sidecarsDesc = prometheus.NewDesc("mesh_agent_sidecars",
		"Sidecars found on the node per mesh, including ones that could not be measured.", []string{"mesh"}, nil)
	discoveryDesc = prometheus.NewDesc("mesh_agent_pod_discovery_ready",
		"1 when the agent's pod watch is synced; 0 without API access or before the first list, when the sidecar series are absent.",
		nil, nil)
	agentCPUDesc = prometheus.NewDesc("mesh_agent_self_cpu_millicores",
		"The agent's own CPU, averaged over the time since the previous scrape.", nil, nil)
	agentRSSDesc = prometheus.NewDesc("mesh_agent_self_memory_rss_bytes",
		"The agent's own resident memory.", nil, nil)
)

// RegisterSidecars adds the sidecar and agent-cost series, computed from src at each scrape.
func RegisterSidecars(reg *prometheus.Registry, src FigureSource) {
	reg.MustRegister(&sidecarCollector{src: src})
}

type sidecarCollector struct{ src FigureSource }

func (c *sidecarCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{sidecarCPUDesc, sidecarWSDesc, sidecarsDesc, discoveryDesc, agentCPUDesc, agentRSSDesc} {
		ch <- d
	}
}

func (c *sidecarCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.src.Figures()
	ready := 0.0
	if f.DiscoveryReady {
		ready = 1
	}
	ch <- prometheus.MustNewConstMetric(discoveryDesc, prometheus.GaugeValue, ready)
	for _, s := range f.Sidecars {
		if s.HasCPU {
			ch <- prometheus.MustNewConstMetric(sidecarCPUDesc, prometheus.GaugeValue, s.CPUMillicores, s.Namespace, s.Pod, s.Container, s.Mesh)
		}
		if s.HasMemory {
			ch <- prometheus.MustNewConstMetric(sidecarWSDesc, prometheus.GaugeValue, float64(s.WorkingSet), s.Namespace, s.Pod, s.Container, s.Mesh)
		}
	}
	for mesh, n := range f.Meshes {
		ch <- prometheus.MustNewConstMetric(sidecarsDesc, prometheus.GaugeValue, float64(n), mesh)
	}
	if f.HasAgentCPU {
		ch <- prometheus.MustNewConstMetric(agentCPUDesc, prometheus.GaugeValue, f.AgentCPUMillicores)
	}
	if f.HasAgentRSS {
		ch <- prometheus.MustNewConstMetric(agentRSSDesc, prometheus.GaugeValue, float64(f.AgentRSS))
	}
}
