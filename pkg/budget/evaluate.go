package budget

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// Result is one budget checked on the whole run or on one node.
type Result struct {
	Budget Budget
	// Node is the node checked; empty for the whole run.
	Node string
	// Measured says whether the metric could be measured; Value is it, in the metric's unit.
	Measured bool
	Value    float64
	// Method says how the value was obtained when that matters ("A/B", or "eBPF residency"
	// when A/B did not run), with its detail (the A/B confidence interval, the eBPF tier).
	Method string
	// Why the metric could not be measured.
	Why string
	// Breached: the budget's condition holds, or the metric could not be measured.
	Breached bool
}

// Breaches keeps the breached results.
func Breaches(rs []Result) []Result {
	var out []Result
	for _, r := range rs {
		if r.Breached {
			out = append(out, r)
		}
	}
	return out
}

func (r Result) where() string {
	if r.Node == "" {
		return "the whole run"
	}
	return "node " + r.Node
}

// String is the result's one-line message, e.g.
// "budget breached: added_p99 = 2.41ms > 2ms on node kind-worker (A/B, 95% CI 2.30ms to 2.52ms)".
func (r Result) String() string {
	b := r.Budget
	if !r.Measured {
		return fmt.Sprintf("budget breached: %s could not be checked on %s: %s (a budget that cannot be checked fails the gate)", b, r.where(), r.Why)
	}
	m, _ := lookup(b.Metric)
	value := format(m.unit, r.Value, 3)
	// Near the limit, three digits can print the limit itself; show enough to see the side.
	if limit := format(m.unit, b.Limit, 3); value == limit && r.Value != b.Limit {
		value = format(m.unit, r.Value, 6)
	}
	method := ""
	if r.Method != "" {
		method = " (" + r.Method + ")"
	}
	if r.Breached {
		return fmt.Sprintf("budget breached: %s = %s %s %s on %s%s", b.Metric, value, b.Op, b.LimitText, r.where(), method)
	}
	return fmt.Sprintf("budget met: %s = %s, not %s %s, on %s%s", b.Metric, value, b.Op, b.LimitText, r.where(), method)
}

// Evaluate checks every budget on the whole run and on every node, in that order per budget.
// A budget breached on any node is a breach even when the whole run is within it, since a
// node's figures are what its pods' users see. The agents' own cost (agent_cpu,
// agent_memory) is a per-agent budget and is checked per node only.
func Evaluate(r *perfrun.Run, budgets []Budget) []Result {
	nodeSums, total := perfrun.Summarize(r)
	whole := &scope{sum: total}
	var nodes []*scope
	for i, n := range r.GetNodes() {
		sc := &scope{node: n.GetNode(), sum: nodeSums[i]}
		if n.GetResult() == nil {
			sc.failure = "the node returned no result"
			if e := n.GetError(); e != "" {
				sc.failure += ": " + e
			}
		}
		for _, p := range n.GetResult().GetPods() {
			if p.GetSidecarLoaded() != nil {
				sc.sidecarUsage, whole.sidecarUsage = true, true
			}
		}
		if n.GetResult().GetAgent() != nil {
			sc.agentUsage, whole.agentUsage = true, true
		}
		nodes = append(nodes, sc)
	}
	if len(nodes) == 0 {
		whole.failure = "no node took part in the run"
	}

	var out []Result
	for _, b := range budgets {
		m, ok := lookup(b.Metric)
		if !ok {
			out = append(out, Result{Budget: b, Why: fmt.Sprintf("unknown metric %q", b.Metric), Breached: true})
			continue
		}
		scopes := nodes
		if !m.nodeOnly || len(nodes) == 0 {
			scopes = append([]*scope{whole}, nodes...)
		}
		for _, sc := range scopes {
			res := Result{Budget: b, Node: sc.node}
			var ms measurement
			if sc.failure != "" {
				ms.why = sc.failure
			} else {
				ms = m.measure(sc)
			}
			if ms.ok {
				res.Measured, res.Value, res.Method = true, ms.value, ms.method
				res.Breached = b.Op.holds(ms.value, b.Limit)
			} else {
				res.Why, res.Breached = ms.why, true
			}
			out = append(out, res)
		}
	}
	return out
}

// scope is what a budget is checked on: one node or the whole run.
type scope struct {
	node string
	sum  perfrun.Summary
	// Whether any sidecar's or agent's usage was measured; Summary's zero cannot tell.
	sidecarUsage, agentUsage bool
	// failure says why nothing was measured here.
	failure string
}

type measurement struct {
	value  float64
	ok     bool
	method string
	why    string
}

func measured(v float64, method string) measurement {
	return measurement{value: v, ok: true, method: method}
}
func missing(why string) measurement { return measurement{why: why} }

type metric struct {
	name string
	unit unit
	help string
	// nodeOnly metrics are summed over nodes on the whole run, which a budget does not mean.
	nodeOnly bool
	measure  func(*scope) measurement
}

var metrics = buildMetrics()

func buildMetrics() []metric {
	var ms []metric
	for _, q := range perfrun.Quantiles {
		ms = append(ms, metric{
			name: "added_" + pname(q), unit: unitDuration,
			help: fmt.Sprintf("latency the sidecars add at the %s: by A/B (through minus around the sidecar); by eBPF residency when A/B did not run", ordinal(q)),
			measure: func(sc *scope) measurement {
				if d, ok := sc.sum.ABDelta(q); ok {
					return measured(float64(d.Value), fmt.Sprintf("A/B, %g%% CI %s to %s", perfrun.Confidence*100,
						format(unitDuration, float64(d.CILow), 3), format(unitDuration, float64(d.CIHigh), 3)))
				}
				if d, ok := sc.sum.ResidencyAt(q); ok {
					return measured(float64(d), "eBPF residency"+tiers(sc.sum)+"; A/B did not run")
				}
				return missing("neither A/B nor eBPF residency ran")
			},
		})
	}
	for _, q := range perfrun.Quantiles {
		ms = append(ms, metric{
			name: "residency_" + pname(q), unit: unitDuration,
			help: fmt.Sprintf("time requests spend in the sidecar at the %s, measured by eBPF", ordinal(q)),
			measure: func(sc *scope) measurement {
				if d, ok := sc.sum.ResidencyAt(q); ok {
					return measured(float64(d), "eBPF residency"+tiers(sc.sum))
				}
				return missing("eBPF residency did not run")
			},
		})
	}
	for _, q := range perfrun.Quantiles {
		ms = append(ms, metric{
			name: "latency_" + pname(q), unit: unitDuration,
			help: fmt.Sprintf("latency through the mesh at the %s", ordinal(q)),
			measure: func(sc *scope) measurement {
				if !sc.sum.Measured() {
					return missing("no latency was measured")
				}
				return measured(float64(sc.sum.Latency(q)), "")
			},
		})
	}
	ms = append(ms,
		metric{
			name: "cpu_per_1k_rps", unit: unitCPU,
			help: "sidecar CPU per 1000 requests per second through it",
			measure: func(sc *scope) measurement {
				if sc.sum.CPUPer1kRPS <= 0 {
					return missing("sidecar CPU under load or the requests through it were not measured")
				}
				return measured(sc.sum.CPUPer1kRPS, "")
			},
		},
		metric{
			name: "sidecar_cpu", unit: unitCPU,
			help: "sidecar CPU under load, averaged over the sidecars",
			measure: func(sc *scope) measurement {
				if !sc.sidecarUsage {
					return missing("sidecar usage was not measured")
				}
				return measured(sc.sum.SidecarCPU, "")
			},
		},
		metric{
			name: "sidecar_memory", unit: unitMemory,
			help: "sidecar working set under load, averaged over the sidecars",
			measure: func(sc *scope) measurement {
				if !sc.sidecarUsage {
					return missing("sidecar usage was not measured")
				}
				return measured(float64(sc.sum.SidecarMemory), "")
			},
		},
		metric{
			name: "error_rate", unit: unitFraction,
			help: "failed requests over requests sent",
			measure: func(sc *scope) measurement {
				if sc.sum.Requests == 0 {
					return missing("no request was sent")
				}
				return measured(float64(sc.sum.Errors)/float64(sc.sum.Requests), "")
			},
		},
		metric{
			name: "agent_cpu", unit: unitCPU, nodeOnly: true,
			help: "the mesh-agent's own CPU while it ran (per node)",
			measure: func(sc *scope) measurement {
				if !sc.agentUsage {
					return missing("the agent's usage was not measured")
				}
				return measured(sc.sum.AgentCPU, "")
			},
		},
		metric{
			name: "agent_memory", unit: unitMemory, nodeOnly: true,
			help: "the mesh-agent's own working set while it ran (per node)",
			measure: func(sc *scope) measurement {
				if !sc.agentUsage {
					return missing("the agent's usage was not measured")
				}
				return measured(float64(sc.sum.AgentMemory), "")
			},
		},
	)
	return ms
}

// Help describes the metrics and their units, one per line, for the flag's help text.
func Help() string {
	var b strings.Builder
	for _, m := range metrics {
		var u string
		switch m.unit {
		case unitDuration:
			u = "duration: 2ms, 500us"
		case unitCPU:
			u = "CPU: 250m or 0.25"
		case unitMemory:
			u = "bytes: 64Mi, 1Gi"
		case unitFraction:
			u = "fraction: 0.01 or 1%"
		}
		fmt.Fprintf(&b, "  %-15s %s (%s)\n", m.name, m.help, u)
	}
	return b.String()
}

func pname(q float64) string { return "p" + strconv.FormatFloat(q*100, 'f', -1, 64) }

func ordinal(q float64) string { return strconv.FormatFloat(q*100, 'f', -1, 64) + "th percentile" }

func tiers(s perfrun.Summary) string {
	if len(s.ResidencyTiers) == 0 {
		return ""
	}
	names := make([]string, len(s.ResidencyTiers))
	for i, t := range s.ResidencyTiers {
		names[i] = strings.ToLower(strings.TrimPrefix(t.String(), "EBPF_TIER_"))
	}
	return ", tier " + strings.Join(names, "+")
}

// format renders a value of unit u with about sig significant digits.
func format(u unit, v float64, sig int) string {
	switch u {
	case unitDuration:
		a := math.Abs(v)
		switch {
		case a >= float64(time.Second):
			return num(v/float64(time.Second), sig) + "s"
		case a >= float64(time.Millisecond):
			return num(v/float64(time.Millisecond), sig) + "ms"
		case a >= float64(time.Microsecond):
			return num(v/float64(time.Microsecond), sig) + "µs"
		}
		return num(v, sig) + "ns"
	case unitCPU:
		return num(v, sig) + "m"
	case unitMemory:
		for _, s := range []struct {
			suffix string
			size   float64
		}{{"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
			if v >= s.size {
				return num(v/s.size, sig) + s.suffix
			}
		}
		return num(v, sig)
	default:
		return num(v*100, sig) + "%"
	}
}

// num prints v with sig significant digits (at least the integer part), without trailing zeros.
func num(v float64, sig int) string {
	digits := 0
	if a := math.Abs(v); a > 0 {
		digits = max(0, sig-1-int(math.Floor(math.Log10(a))))
	}
	s := strconv.FormatFloat(v, 'f', digits, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
