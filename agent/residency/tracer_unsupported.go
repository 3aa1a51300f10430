//go:build !(linux && (386 || amd64 || arm64))

package residency

import (
	"errors"
	"runtime"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
)

// The objects are compiled for Linux on x86 and arm64 only; elsewhere every tier is
// unavailable and latency comes from A/B probing alone.
var errUnsupported = errors.New("residency programs are not built for " + runtime.GOOS + "/" + runtime.GOARCH)

// ErrNotImplemented is returned for a tier that has no residency programs.
var ErrNotImplemented = errors.New("no residency programs for this tier")

// Options tune a Tracer; the zero value is the default.
type Options struct {
	StaleAfter time.Duration
	RunStats   bool
}

// ErrRunStatsOff is StatsErr when Options.RunStats was not asked for.
var ErrRunStatsOff = errors.New("run-time accounting not requested (Options.RunStats)")

// Tracer is unavailable on this platform.
type Tracer struct{ tier ebpftier.Tier }

// Start always fails on this platform.
func Start(tier ebpftier.Tier, pids []uint32) (*Tracer, error) { return nil, errUnsupported }

// StartWith always fails on this platform.
func StartWith(tier ebpftier.Tier, pids []uint32, opts Options) (*Tracer, error) {
	return nil, errUnsupported
}

// StartAuto always fails on this platform.
func StartAuto(tiers []ebpftier.Tier, pids []uint32, opts Options) (*Tracer, []ebpftier.Attempt) {
	_, t, attempts := ebpftier.Select(tiers, func(tier ebpftier.Tier) (*Tracer, error) {
		return StartWith(tier, pids, opts)
	})
	return t, attempts
}

// Tier is the tier whose programs are running.
func (t *Tracer) Tier() ebpftier.Tier { return t.tier }

// Track always fails on this platform.
func (t *Tracer) Track(pids ...uint32) error { return errUnsupported }

// Untrack always fails on this platform.
func (t *Tracer) Untrack(pids ...uint32) error { return errUnsupported }

// SetTracked always fails on this platform.
func (t *Tracer) SetTracked(pids []uint32) error { return errUnsupported }

// Tracked always fails on this platform.
func (t *Tracer) Tracked() ([]uint32, error) { return nil, errUnsupported }

// Read always fails on this platform.
func (t *Tracer) Read() (Snapshot, error) { return Snapshot{}, errUnsupported }

// Stats always fails on this platform.
func (t *Tracer) Stats() (ProgramStats, error) { return ProgramStats{}, errUnsupported }

// StatsErr always reports the platform.
func (t *Tracer) StatsErr() error { return errUnsupported }

// Close does nothing on this platform.
func (t *Tracer) Close() error { return nil }
