package server

import (
	"log/slog"
	"sync"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/agent/metrics"
	"github.com/kubectl-mesh/kubectl-mesh/agent/usage"
)

// MinScrapeInterval is how long a scrape's figures are reused. Scrapes closer together
// than this would give CPU rates over a window too short to mean anything, and repeated
// scrapes would cost a procfs walk each.
const MinScrapeInterval = time.Second

// Scraper computes the Prometheus figures at scrape time: one discovery pass and one read
// of each sidecar's cgroup, with CPU rates over the time since the previous scrape. That
// costs nothing between scrapes and is never stale, unlike figures kept from the last
// Snapshot call, which may be hours old or never have happened. Processes are not read
// (their smaps walk is the costly part and the metrics carry only cgroup figures).
type Scraper struct {
	disc    *Discovery
	sampler *usage.Sampler
	ns      NamespaceRoots
	log     *slog.Logger

	mu   sync.Mutex
	prev *usage.Sample
	last metrics.Figures
	at   time.Time
}

// NewScraper returns the metrics figure source over disc and sampler.
func NewScraper(disc *Discovery, sampler *usage.Sampler, ns NamespaceRoots, log *slog.Logger) *Scraper {
	return &Scraper{disc: disc, sampler: sampler, ns: ns, log: log}
}

// Figures implements metrics.FigureSource.
func (s *Scraper) Figures() metrics.Figures {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.at.IsZero() && time.Since(s.at) < MinScrapeInterval {
		return s.last
	}
	f := metrics.Figures{Meshes: map[string]int{}}
	var t usage.Targets
	var sidecars []metrics.SidecarFigures
	var ids []string
	if src, err := s.disc.Source(); err == nil {
		if snap, err := src.Snapshot(); err == nil {
			f.DiscoveryReady = true
			t = Targets(snap.Sidecars, s.ns)
			t.PIDs = nil
			for _, sc := range snap.Sidecars {
				f.Meshes[string(sc.Mesh)]++
				sidecars = append(sidecars, metrics.SidecarFigures{
					Namespace: sc.Pod.Namespace, Pod: sc.Pod.Name, Container: sc.Container, Mesh: string(sc.Mesh),
				})
				ids = append(ids, sc.ContainerID)
			}
		} else {
			s.log.Warn("metrics: discover sidecars", "err", err)
		}
	}
	cur := s.sampler.Sample(t)
	var rep *usage.Report
	if s.prev != nil {
		// Between fails only for a non-positive window, which the monotonic clock rules out;
		// a nil report then just means no rates this time.
		rep, _ = usage.Between(s.prev, cur)
	}
	s.prev = cur
	for i := range sidecars {
		if cs, ok := cur.Containers[ids[i]]; ok && cs.HasMemory {
			sidecars[i].HasMemory, sidecars[i].WorkingSet = true, cs.WorkingSet
		}
		if rep != nil {
			if cu, ok := rep.Containers[ids[i]]; ok && cu.HasCPU {
				sidecars[i].HasCPU, sidecars[i].CPUMillicores = true, cu.CPUMillicores
			}
		}
	}
	f.Sidecars = sidecars
	if cur.SelfErr == nil {
		f.HasAgentRSS, f.AgentRSS = true, cur.Self.RSS
	}
	if rep != nil && rep.Agent != nil {
		f.HasAgentCPU, f.AgentCPUMillicores = true, rep.Agent.CPUMillicores
	}
	s.last, s.at = f, time.Now()
	return f
}
