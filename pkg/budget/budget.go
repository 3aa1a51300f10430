// Package budget is the CI gate of `kubectl mesh perf run --fail-if`: budgets such as
// `added_p99>2ms,cpu_per_1k_rps>250m` are parsed once and checked against a finished run, on
// the whole run and on every node, so a pipeline fails when the mesh costs more than agreed.
//
// A budget states the failure condition: `added_p99>2ms` fails the gate when the added
// latency's 99th percentile is above 2ms.
//
// A budget that cannot be checked fails the gate too: if A/B and eBPF residency both did not
// run, or a node returned no result, `added_p99>2ms` is reported as breached ("could not be
// checked"), because a gate that passes whenever measuring fails would pass exactly when
// something is wrong.
package budget

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
)

// ExitCode is the exit status of a run that breached a budget.
const ExitCode = 3

// Op is a comparison.
type Op string

// The comparisons a budget may use.
const (
	Greater      Op = ">"
	GreaterEqual Op = ">="
	Less         Op = "<"
	LessEqual    Op = "<="
)

func (o Op) holds(v, limit float64) bool {
	switch o {
	case Greater:
		return v > limit
	case GreaterEqual:
		return v >= limit
	case Less:
		return v < limit
	case LessEqual:
		return v <= limit
	}
	return false
}

// unit is how a metric's values are written and kept.
type unit int

const (
	// Durations, kept in nanoseconds, written as Go durations ("2ms", "500us", "1.5ms").
	unitDuration unit = iota
	// CPU, kept in millicores, written as Kubernetes quantities ("250m" or "0.25" cores).
	unitCPU
	// Memory, kept in bytes, written as Kubernetes quantities ("64Mi", "1Gi", "500M").
	unitMemory
	// A fraction, written as one ("0.01") or as a percentage ("1%").
	unitFraction
)

func (u unit) example() string {
	switch u {
	case unitDuration:
		return "a duration with a unit, like 2ms, 500us or 1.5ms"
	case unitCPU:
		return "CPU in millicores like 250m, or in cores like 0.25"
	case unitMemory:
		return "memory in bytes with an optional suffix, like 64Mi, 1Gi or 500M"
	default:
		return "a fraction like 0.01 or a percentage like 1%"
	}
}

// Budget is one `metric OP limit` term.
type Budget struct {
	Metric string
	Op     Op
	// Limit is in the metric's unit: nanoseconds, millicores, bytes or a fraction.
	Limit float64
	// LimitText is the limit as the user wrote it, shown back in messages.
	LimitText string
}

func (b Budget) String() string { return b.Metric + string(b.Op) + b.LimitText }

// Parse reads a comma-separated list of budgets, e.g. "added_p99>2ms, cpu_per_1k_rps>250m".
func Parse(s string) ([]Budget, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("no budget given; write metric OP limit, e.g. added_p99>2ms (metrics: %s)", strings.Join(Metrics(), ", "))
	}
	terms := strings.Split(s, ",")
	var out []Budget
	for i, term := range terms {
		b, err := parseTerm(term)
		if err != nil {
			if len(terms) > 1 {
				return nil, fmt.Errorf("budget %d of %d: %w", i+1, len(terms), err)
			}
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

func parseTerm(term string) (Budget, error) {
	t := strings.TrimSpace(term)
	if t == "" {
		return Budget{}, errors.New("empty budget (two commas in a row, or a trailing comma?)")
	}
	i := strings.IndexAny(t, "<>")
	if i < 0 {
		hint := ""
		if strings.ContainsAny(t, "=!") {
			hint = " (= and != are not supported)"
		}
		return Budget{}, fmt.Errorf("budget %q has no comparison%s; write metric OP limit with OP one of >, >=, <, <=, e.g. added_p99>2ms", t, hint)
	}
	name := strings.ToLower(strings.TrimSpace(t[:i]))
	op := Op(t[i : i+1])
	rest := t[i+1:]
	if strings.HasPrefix(rest, "=") {
		op += "="
		rest = rest[1:]
	}
	if strings.ContainsAny(name, "=!") || strings.HasPrefix(strings.TrimSpace(rest), "<") || strings.HasPrefix(strings.TrimSpace(rest), ">") || strings.HasPrefix(strings.TrimSpace(rest), "=") {
		return Budget{}, fmt.Errorf("budget %q: bad comparison; use one of >, >=, <, <=", t)
	}
	if name == "" {
		return Budget{}, fmt.Errorf("budget %q names no metric; metrics: %s", t, strings.Join(Metrics(), ", "))
	}
	m, ok := lookup(name)
	if !ok {
		return Budget{}, fmt.Errorf("budget %q: unknown metric %q%s; metrics: %s", t, name, suggest(name), strings.Join(Metrics(), ", "))
	}
	text := strings.TrimSpace(rest)
	if text == "" {
		return Budget{}, fmt.Errorf("budget %q has no limit; %s takes %s", t, m.name, m.unit.example())
	}
	limit, err := parseLimit(m.unit, text)
	if err != nil {
		return Budget{}, fmt.Errorf("budget %q: limit %q: %v; %s takes %s", t, text, err, m.name, m.unit.example())
	}
	return Budget{Metric: m.name, Op: op, Limit: limit, LimitText: text}, nil
}

func parseLimit(u unit, s string) (float64, error) {
	var v float64
	switch u {
	case unitDuration:
		d, err := time.ParseDuration(s)
		if err != nil {
			if _, ferr := strconv.ParseFloat(s, 64); ferr == nil {
				return 0, errors.New("no unit")
			}
			return 0, errors.New("not a duration")
		}
		v = float64(d)
	case unitCPU:
		q, err := resource.ParseQuantity(s)
		if err != nil {
			return 0, errors.New("not a CPU quantity")
		}
		if q.Format == resource.BinarySI {
			return 0, errors.New("binary suffixes (Ki, Mi, ...) are for memory")
		}
		v = q.AsApproximateFloat64() * 1000
	case unitMemory:
		q, err := resource.ParseQuantity(s)
		if err != nil {
			return 0, errors.New("not a memory quantity")
		}
		if q.MilliValue()%1000 != 0 {
			// "128m" is 0.128 bytes to Kubernetes; it is always a typo for M or Mi.
			return 0, errors.New("not a whole number of bytes (m is milli; did you mean M or Mi?)")
		}
		v = q.AsApproximateFloat64()
	case unitFraction:
		num, pct := strings.CutSuffix(s, "%")
		f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil {
			return 0, errors.New("not a number")
		}
		if pct {
			f /= 100
		}
		if f > 1 {
			return 0, errors.New("more than 100%")
		}
		v = f
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, errors.New("not a finite number")
	}
	if v < 0 {
		return 0, errors.New("negative")
	}
	return v, nil
}

// suggest names the closest metric when the name looks like a typo of it.
func suggest(name string) string {
	best, bestD := "", 3
	for _, m := range metrics {
		if d := editDistance(name, m.name); d < bestD {
			best, bestD = m.name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// List is a flag value holding budgets; each use of the flag adds to it, so
// `--fail-if a>1ms --fail-if b>2ms` and `--fail-if 'a>1ms,b>2ms'` mean the same.
type List []Budget

// Set parses and appends budgets.
func (l *List) Set(s string) error {
	bs, err := Parse(s)
	if err != nil {
		return err
	}
	*l = append(*l, bs...)
	return nil
}

func (l *List) String() string {
	if l == nil {
		return ""
	}
	parts := make([]string, len(*l))
	for i, b := range *l {
		parts[i] = b.String()
	}
	return strings.Join(parts, ",")
}

// Type names the flag's value in help output.
func (l *List) Type() string { return "budgets" }

// Metrics lists the metric names budgets may use.
func Metrics() []string {
	names := make([]string, len(metrics))
	for i, m := range metrics {
		names[i] = m.name
	}
	return names
}

func lookup(name string) (metric, bool) {
	i := slices.IndexFunc(metrics, func(m metric) bool { return m.name == name })
	if i < 0 {
		return metric{}, false
	}
	return metrics[i], true
}
