package usage

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

// Usage is the flat figure set the gRPC API carries for a container, a process or the agent.
type Usage struct {
	CPUMillicores   float64
	CPUThrottled    time.Duration
	WorkingSetBytes uint64
	RSSBytes        uint64
	PSSBytes        uint64
}

// Proto converts to the wire message.
func (u Usage) Proto() *agentapi.Usage {
	return &agentapi.Usage{
		CpuMillicores:         u.CPUMillicores,
		CpuThrottled:          durationpb.New(u.CPUThrottled),
		MemoryWorkingSetBytes: u.WorkingSetBytes,
		MemoryRssBytes:        u.RSSBytes,
		MemoryPssBytes:        u.PSSBytes,
	}
}

// Usage combines the container's cgroup figures with its processes' RSS and PSS, since a cgroup
// has no RSS or PSS of its own.
func (c ContainerUsage) Usage(procs ...ProcessUsage) Usage {
	u := Usage{CPUMillicores: c.CPUMillicores, CPUThrottled: c.Throttled, WorkingSetBytes: c.WorkingSet}
	for _, p := range procs {
		u.RSSBytes += p.RSS
		u.PSSBytes += p.PSS
	}
	return u
}

// Usage is the process's figures. The working set is a cgroup figure (usage − inactive file),
// which a single process does not have, so it stays 0 rather than borrowing RSS.
func (p ProcessUsage) Usage() Usage {
	return Usage{CPUMillicores: p.CPUMillicores, RSSBytes: p.RSS, PSSBytes: p.PSS}
}

// Proto converts to the wire message with the caller's role ("proxy" or "helper").
func (p ProcessUsage) Proto(role string) *agentapi.ProcessUsage {
	return &agentapi.ProcessUsage{Pid: int32(p.PID), Comm: p.Comm, Role: role, Usage: p.Usage().Proto()}
}

// Proto converts to the wire message.
func (n NodeUsage) Proto() *agentapi.NodeUsage {
	return &agentapi.NodeUsage{
		CpuCores:         uint32(n.Cores),
		MemoryTotalBytes: n.MemTotal,
		CpuMillicores:    n.CPUMillicores,
		MemoryUsedBytes:  n.MemUsed,
	}
}
