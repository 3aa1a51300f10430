package discovery

import "github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"

// APIPodRef converts a PodRef for the gRPC API.
func APIPodRef(r PodRef) *agentapi.PodRef {
	return &agentapi.PodRef{Namespace: r.Namespace, Name: r.Name, Uid: r.UID}
}

// ToAPI converts a Sidecar for the gRPC API, without usage figures (those come from the
// measurement that is given the sidecar). The API carries one cgroup path: the unified
// one where the container has it, else the cpu controller's, else memory's.
func (s Sidecar) ToAPI() *agentapi.Sidecar {
	out := &agentapi.Sidecar{
		Pod:          APIPodRef(s.Pod),
		Container:    s.Container,
		ContainerId:  s.ContainerID,
		Mesh:         string(s.Mesh),
		Native:       s.Native,
		CgroupPath:   s.CgroupPath(),
		ProxyUid:     s.ProxyUID,
		CapturePorts: append([]uint32(nil), s.CapturePorts...),
	}
	for _, p := range s.Processes {
		out.Processes = append(out.Processes, &agentapi.ProcessUsage{Pid: int32(p.PID), Comm: p.Comm, Role: string(p.Role)})
	}
	return out
}

// CgroupPath is the container's cgroup in the hierarchy that accounts its CPU: the
// unified one on v2 hosts, the cpu controller's on v1 and hybrid hosts.
func (s Sidecar) CgroupPath() string {
	if p := s.CgroupPaths[Unified]; p != "" && p != "/" {
		if _, ok := ParseContainerCgroupPath(p); ok {
			return p
		}
	}
	for _, k := range []string{"cpu", "cpuacct", "memory"} {
		if p := s.CgroupPaths[k]; p != "" {
			return p
		}
	}
	return s.CgroupPaths[Unified]
}

// ToAPI converts a PodError for the gRPC API.
func (e PodError) ToAPI() *agentapi.PodError {
	return &agentapi.PodError{Pod: APIPodRef(e.Pod), Error: e.Err.Error()}
}
