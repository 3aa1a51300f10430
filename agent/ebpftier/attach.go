package ebpftier

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Attach attaches a loaded program written for tier to target: a tracepoint name for
// tp_btf and raw_tp, a kernel function for fentry and kprobe. For tp_btf and fentry the
// target was fixed at load time by the program's section name; it is used here only in
// errors.
func Attach(tier Tier, prog *ebpf.Program, target string) (link.Link, error) {
	switch tier {
	case TPBTF, FEntry:
		return link.AttachTracing(link.TracingOptions{Program: prog})
	case RawTP:
		return link.AttachRawTracepoint(link.RawTracepointOptions{Name: target, Program: prog})
	case KProbe:
		return link.Kprobe(target, prog, nil)
	}
	return nil, fmt.Errorf("cannot attach %s to %s: no attach mechanism for tier %s", prog, target, tier)
}
