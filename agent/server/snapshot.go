package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kubectl-mesh/kubectl-mesh/agent/discovery"
	"github.com/kubectl-mesh/kubectl-mesh/agent/usage"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

// Snapshot windows: shorter than a few scheduler ticks gives rates that are mostly
// rounding; longer would hold a port-forwarded stream open for no better figure.
const (
	DefaultWindow = time.Second
	MinWindow     = 100 * time.Millisecond
	MaxWindow     = 60 * time.Second
)

// SidecarSource is what the agent needs from pod discovery (a *discovery.Discoverer).
type SidecarSource interface {
	Snapshot() (discovery.Snapshot, error)
}

// Measurer measures targets over a window (a *usage.Sampler).
type Measurer interface {
	Measure(ctx context.Context, t usage.Targets, window time.Duration) (*usage.Report, error)
}

// Discovery is the state of the agent's pod watch, which starts in the background so that
// an API server that is slow or unreachable never delays Info or the health probes.
type Discovery struct {
	mu     sync.Mutex
	src    SidecarSource
	noAPI  error // set when the agent has no API access at all
	synced bool
	err    error // why the watch stopped before it synced
	since  time.Time
}

// NoDiscovery is the state of an agent that has no Kubernetes API access; reason says why
// and ends up in every Snapshot error.
func NoDiscovery(reason error) *Discovery {
	return &Discovery{noAPI: reason}
}

// SyncedDiscovery wraps a source that is already current (tests, or a caller that waited).
func SyncedDiscovery(src SidecarSource) *Discovery {
	return &Discovery{src: src, synced: true}
}

// StartDiscovery runs d's watch until ctx ends, in the background, and returns at once.
func StartDiscovery(ctx context.Context, d *discovery.Discoverer, log *slog.Logger) *Discovery {
	st := &Discovery{src: d, since: time.Now()}
	go func() {
		err := d.Start(ctx)
		st.mu.Lock()
		defer st.mu.Unlock()
		if err != nil {
			st.err = err
			if ctx.Err() == nil {
				log.Warn("pod watch stopped before it synced", "err", err)
			}
			return
		}
		st.synced = true
		log.Info("pod watch synced", "node", d.Node(), "after", time.Since(st.since).Round(time.Millisecond))
	}()
	return st
}

// Source returns the synced source, or the gRPC error that says why there is none.
func (s *Discovery) Source() (SidecarSource, error) {
	if s == nil {
		return nil, status.Error(codes.FailedPrecondition, "the agent was started without pod discovery")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.noAPI != nil:
		return nil, status.Errorf(codes.FailedPrecondition, "no Kubernetes API access, so no pod discovery: %v", s.noAPI)
	case s.err != nil:
		return nil, status.Errorf(codes.Unavailable, "pod watch stopped: %v", s.err)
	case !s.synced:
		return nil, status.Errorf(codes.Unavailable, "pod watch not synced yet (waiting %s for the first pod list from the API server)",
			time.Since(s.since).Round(time.Second))
	}
	return s.src, nil
}

// Snapshot measures every sidecar on the node over the requested window.
func (a *Agent) Snapshot(ctx context.Context, req *agentapi.SnapshotRequest) (*agentapi.SnapshotResponse, error) {
	window := DefaultWindow
	if req.GetWindow() != nil {
		if err := req.GetWindow().CheckValid(); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "window: %v", err)
		}
		window = req.GetWindow().AsDuration()
	}
	if window < MinWindow || window > MaxWindow {
		return nil, status.Errorf(codes.InvalidArgument, "window %s is outside %s..%s", window, MinWindow, MaxWindow)
	}
	src, err := a.disc.Source()
	if err != nil {
		return nil, err
	}
	if a.measurer == nil {
		return nil, status.Error(codes.FailedPrecondition, "the agent has no usage sampler (procfs or cgroups unreadable at start-up)")
	}
	snap, err := src.Snapshot()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "discover sidecars: %v", err)
	}
	snap = FilterNamespaces(snap, req.GetNamespaces())

	rep, err := a.measurer.Measure(ctx, Targets(snap.Sidecars, a.facts.CgroupNamespace), window)
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Errorf(codes.Internal, "measure: %v", err)
	}
	resp := &agentapi.SnapshotResponse{
		NodeName: a.facts.NodeName,
		Time:     timestamppb.Now(),
		Window:   durationpb.New(rep.Window),
	}
	resp.Sidecars, resp.Errors = Sidecars(snap, rep, a.facts.CgroupNamespace)
	if rep.Node != nil {
		resp.Node = rep.Node.Proto()
	}
	if rep.Agent != nil {
		resp.Agent = rep.Agent.Usage().Proto()
	}
	return resp, nil
}

// FilterNamespaces keeps the sidecars and errors of pods in namespaces (all when empty).
func FilterNamespaces(snap discovery.Snapshot, namespaces []string) discovery.Snapshot {
	if len(namespaces) == 0 {
		return snap
	}
	var out discovery.Snapshot
	for _, s := range snap.Sidecars {
		if slices.Contains(namespaces, s.Pod.Namespace) {
			out.Sidecars = append(out.Sidecars, s)
		}
	}
	for _, e := range snap.Errors {
		if slices.Contains(namespaces, e.Pod.Namespace) {
			out.Errors = append(out.Errors, e)
		}
	}
	return out
}

// Targets is what to sample for sidecars: each container's cgroup keyed by container ID,
// and every process in it.
func Targets(sidecars []discovery.Sidecar, ns NamespaceRoots) usage.Targets {
	t := usage.Targets{Containers: map[string]usage.CgroupPaths{}}
	for _, s := range sidecars {
		t.Containers[s.ContainerID] = hostPaths(s.CgroupPaths, ns)
		for _, p := range s.Processes {
			t.PIDs = append(t.PIDs, p.PID)
		}
	}
	return t
}

// Sidecars joins discovery and measurement. A sidecar whose container could not be
// measured is listed without usage (absent, not zero) and with a per-pod error, so that no
// figure is ever made up; discovery's own per-pod errors come first.
func Sidecars(snap discovery.Snapshot, rep *usage.Report, ns NamespaceRoots) ([]*agentapi.Sidecar, []*agentapi.PodError) {
	var errs []*agentapi.PodError
	for _, e := range snap.Errors {
		errs = append(errs, e.ToAPI())
	}
	var out []*agentapi.Sidecar
	for _, s := range snap.Sidecars {
		api := s.ToAPI()
		// The API carries host paths, the ones an admin can look up on the node.
		for k, v := range s.CgroupPaths {
			if v == api.CgroupPath {
				api.CgroupPath = ns.Resolve(k, v)
				break
			}
		}
		var problems []string
		var procs []usage.ProcessUsage
		api.Processes = api.Processes[:0]
		for _, p := range s.Processes {
			pa := &agentapi.ProcessUsage{Pid: int32(p.PID), Comm: p.Comm, Role: string(p.Role)}
			if pu, ok := rep.Processes[p.PID]; ok {
				pa = pu.Proto(string(p.Role))
				procs = append(procs, pu)
			} else {
				problems = append(problems, fmt.Sprintf("process %d (%s): %v", p.PID, p.Comm, reportErr(rep, fmt.Sprintf("pid %d", p.PID))))
			}
			api.Processes = append(api.Processes, pa)
		}
		if cu, ok := rep.Containers[s.ContainerID]; ok {
			switch {
			case !cu.HasCPU && !cu.HasMemory:
				problems = append(problems, fmt.Sprintf("container cgroup %s: neither CPU nor memory accounting readable", api.CgroupPath))
			case len(procs) < len(s.Processes):
				// RSS and PSS would be a partial sum; the cgroup figures alone still hold.
				u := cu.Usage()
				u.RSSBytes, u.PSSBytes = 0, 0
				api.Usage = u.Proto()
				problems = append(problems, "container RSS and PSS left at 0: not every process could be read")
			default:
				api.Usage = cu.Usage(procs...).Proto()
			}
			if cu.HasCPU != cu.HasMemory {
				missing := "CPU"
				if !cu.HasMemory {
					missing = "memory"
				}
				problems = append(problems, fmt.Sprintf("container cgroup %s: no %s accounting, reported as 0", api.CgroupPath, missing))
			}
		} else {
			problems = append(problems, fmt.Sprintf("container cgroup %s: %v", api.CgroupPath, reportErr(rep, "container "+s.ContainerID)))
		}
		if len(problems) > 0 {
			errs = append(errs, &agentapi.PodError{
				Pod:   discovery.APIPodRef(s.Pod),
				Error: "measure sidecar " + s.Container + ": " + strings.Join(problems, "; "),
			})
		}
		out = append(out, api)
	}
	sort.SliceStable(errs, func(i, j int) bool {
		a, b := errs[i].GetPod(), errs[j].GetPod()
		if a.GetNamespace() != b.GetNamespace() {
			return a.GetNamespace() < b.GetNamespace()
		}
		return a.GetName() < b.GetName()
	})
	return out, errs
}

func reportErr(rep *usage.Report, key string) error {
	if err := rep.Errors[key]; err != nil {
		return err
	}
	return errors.New("not measured")
}
