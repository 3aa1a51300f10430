package server

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/agentapi"
)

// KeptResults is how many finished runs Result can still return: enough for a plugin that
// lost its connection to come back for its run while a few others ran since.
const KeptResults = 10

// errStopped is the cancellation cause of a run ended by Stop, which tells it apart from a
// client that went away.
var errStopped = errors.New("stopped by a Stop request")

// runStore allows one run at a time and keeps the last KeptResults results.
type runStore struct {
	mu      sync.Mutex
	current string
	cancel  context.CancelCauseFunc
	kept    []*agentapi.RunResult // oldest first
}

// begin registers run id as the current run, or says which run is in progress.
func (s *runStore) begin(id string, cancel context.CancelCauseFunc) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current != "" {
		return status.Errorf(codes.FailedPrecondition, "a run is in progress: %s", s.current)
	}
	s.current, s.cancel = id, cancel
	return nil
}

// finish keeps res (replacing an older result of the same id) and frees the agent for the
// next run.
func (s *runStore) finish(res *agentapi.RunResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.current, s.cancel = "", nil
	for i, r := range s.kept {
		if r.GetRunId() == res.GetRunId() {
			s.kept = append(s.kept[:i], s.kept[i+1:]...)
			break
		}
	}
	s.kept = append(s.kept, res)
	if len(s.kept) > KeptResults {
		s.kept = s.kept[len(s.kept)-KeptResults:]
	}
}

func (s *runStore) stop(id string) (*agentapi.StopResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id != "" && id == s.current {
		s.cancel(errStopped)
		return &agentapi.StopResponse{Stopped: true}, nil
	}
	for _, r := range s.kept {
		if r.GetRunId() == id {
			// Already over: nothing to stop, and its result stays as it was.
			return &agentapi.StopResponse{Stopped: false}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no run %q on this agent", id)
}

func (s *runStore) result(id string) (*agentapi.RunResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id != "" && id == s.current {
		return nil, status.Errorf(codes.Unavailable, "run %s still running", id)
	}
	for _, r := range s.kept {
		if r.GetRunId() == id {
			// Callers may change what they get; the kept copy must stay as measured.
			return proto.Clone(r).(*agentapi.RunResult), nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "no result for run %q on this agent (it keeps the last %d)", id, KeptResults)
}

// LastRun is the last finished run's result, nil before the first; the metrics show it.
func (a *Agent) LastRun() *agentapi.RunResult {
	a.runs.mu.Lock()
	defer a.runs.mu.Unlock()
	if len(a.runs.kept) == 0 {
		return nil
	}
	return a.runs.kept[len(a.runs.kept)-1]
}

// Stop ends the current run; its result is kept with stopped set.
func (a *Agent) Stop(_ context.Context, req *agentapi.StopRequest) (*agentapi.StopResponse, error) {
	return a.runs.stop(req.GetRunId())
}

// Result returns a finished run's result, so a dropped Run stream loses nothing.
func (a *Agent) Result(_ context.Context, req *agentapi.ResultRequest) (*agentapi.RunResult, error) {
	return a.runs.result(req.GetRunId())
}
