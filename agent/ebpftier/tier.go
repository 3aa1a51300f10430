// Package ebpftier decides which eBPF attach mechanism a node allows, by loading and
// attaching real programs in a fixed order and keeping the first that works.
//
// Feature probes are not enough: a kernel can accept the kprobe program type while having
// no kprobes at all, and can refuse fentry by policy while allowing tp_btf, which is the
// same program type. So every tier is decided by trying the program the agent will run.
package ebpftier

import (
	"fmt"
	"strings"
)

// Tier is an attach mechanism for the agent's programs.
type Tier int

const (
	// None means no eBPF: the agent measures with procfs, cgroups and A/B probing only.
	None Tier = iota
	// TPBTF is BTF-typed raw tracepoints (tp_btf): typed arguments, direct field loads.
	TPBTF
	// RawTP is untyped raw tracepoints, for kernels that refuse Tracing programs.
	RawTP
	// FEntry is fentry/fexit trampolines, for kernels older than the sock_* tracepoints.
	FEntry
	// KProbe is kprobes, the last resort.
	KProbe
)

// Order is the order tiers are tried in: most precise and cheapest first.
var Order = []Tier{TPBTF, RawTP, FEntry, KProbe}

var tierNames = map[Tier]string{
	None:   "none",
	TPBTF:  "tp_btf",
	RawTP:  "raw_tp",
	FEntry: "fentry",
	KProbe: "kprobe",
}

func (t Tier) String() string {
	if n, ok := tierNames[t]; ok {
		return n
	}
	return fmt.Sprintf("tier(%d)", int(t))
}

// ParseTier reads a tier name as String prints it.
func ParseTier(s string) (Tier, error) {
	for t, n := range tierNames {
		if strings.EqualFold(s, n) {
			return t, nil
		}
	}
	return None, fmt.Errorf("unknown eBPF tier %q (want one of none, tp_btf, raw_tp, fentry, kprobe)", s)
}

// Attempt is the outcome of loading and attaching one tier's program.
type Attempt struct {
	Tier Tier
	// Err is nil when the tier loaded and attached.
	Err error
}

// OK reports whether the tier loaded and attached.
func (a Attempt) OK() bool { return a.Err == nil }

// Select calls attach for each tier in turn and returns the first that succeeds, with every
// attempt made. Tiers after the winner are not tried, so nothing is attached needlessly.
// Any error counts as "tier unavailable": the kernel's reasons (ENOENT for a missing hook,
// EPERM from a policy, a verifier rejection) all mean the same thing to the agent.
// With no tier working it returns None and the zero T.
func Select[T any](tiers []Tier, attach func(Tier) (T, error)) (Tier, T, []Attempt) {
	var attempts []Attempt
	for _, t := range tiers {
		v, err := attach(t)
		attempts = append(attempts, Attempt{Tier: t, Err: err})
		if err == nil {
			return t, v, attempts
		}
	}
	var zero T
	return None, zero, attempts
}
