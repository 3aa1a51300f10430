// Command agentbench measures what the mesh agent costs the node it runs on: its own idle
// CPU and memory while it tracks ten sidecars, and how much its eBPF residency tracing slows
// a proxy under maximum load. It prints each figure next to its target and asserts nothing;
// the figures go into the release notes, not into a pass/fail gate, because on a shared
// two-core CI machine they move with whatever else runs.
//
// It needs root (cgroups, eBPF), Debian's nginx, and the cluster binaries the simulated
// cluster builds. Run it from the repository: go run ./test/agentbench
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
)

// row is one line of the result table.
type row struct {
	name, value, target, verdict string
}

func main() {
	idleWindow := flag.Duration("idle-window", 30*time.Second, "how long to measure the agent's idle CPU")
	scrapeEvery := flag.Duration("scrape-every", 10*time.Second, "Prometheus scrape interval during the idle window")
	sidecars := flag.Int("sidecars", 10, "sidecars the agent tracks during the idle window")
	quartets := flag.Int("quartets", 60, "ABBA quartets of windows with tracing switched on and off under one load")
	windowLen := flag.Duration("window", 500*time.Millisecond, "length of each tracing window")
	roundLen := flag.Duration("round", 5*time.Second, "length of each run-time accounting round")
	conns := flag.Int("connections", 16, "closed-loop connections")
	skipIdle := flag.Bool("skip-idle", false, "skip the agent idle measurement")
	skipProxy := flag.Bool("skip-proxy", false, "skip the tracing-overhead measurement")
	child := flag.String(loadChild, "", "internal: run one load against this address and print its counts")
	flag.Parse()

	if *child != "" {
		load := loadgen.Options{Target: *child, Protocol: loadgen.HTTP1, Connections: *conns, Duration: *roundLen}
		if err := runLoadChild(context.Background(), load); err != nil {
			fmt.Fprintln(os.Stderr, "agentbench load process:", err)
			os.Exit(1)
		}
		return
	}

	if !*skipProxy && (*quartets < 1 || *windowLen <= 0 || *roundLen <= 0) {
		fmt.Fprintln(os.Stderr, "agentbench: the tracing measurement needs -quartets ≥ 1 and a positive -window and -round")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "agentbench: needs root (cgroups, eBPF)")
		os.Exit(2)
	}
	// Cancelling unwinds every measurement through its deferred cleanups, so Ctrl-C leaves
	// no process, cgroup or cluster behind.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var rows []row
	failed := false
	if !*skipIdle {
		r, err := measureIdle(ctx, idleConfig{sidecars: *sidecars, window: *idleWindow, scrapeEvery: *scrapeEvery})
		rows = append(rows, r...)
		if err != nil {
			failed = true
			fmt.Fprintln(os.Stderr, "agentbench: idle cost:", err)
		}
	}
	if !*skipProxy && ctx.Err() == nil {
		r, err := measureTracing(ctx, tracingConfig{quartets: *quartets, window: *windowLen, round: *roundLen, connections: *conns})
		rows = append(rows, r...)
		if err != nil {
			failed = true
			fmt.Fprintln(os.Stderr, "agentbench: tracing overhead:", err)
		}
	}

	fmt.Println()
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "FIGURE\tMEASURED\tTARGET\t")
	for _, r := range rows {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", r.name, r.value, r.target, r.verdict)
	}
	w.Flush()
	if failed || ctx.Err() != nil {
		os.Exit(1)
	}
}

// verdict labels a figure against its target, for the reader of the table only.
func verdict(ok bool) string {
	if ok {
		return "meets target"
	}
	return "MISSES target"
}

// freePort asks the kernel for a loopback port nobody holds. The port is released before
// the caller binds it, which is a race only with other programs picking ports the same way.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// cleanups runs registered teardown steps last-first and joins their errors.
type cleanups []func() error

func (c *cleanups) add(f func() error) { *c = append(*c, f) }

func (c *cleanups) run() error {
	var errs []error
	for i := len(*c) - 1; i >= 0; i-- {
		if err := (*c)[i](); err != nil {
			errs = append(errs, err)
		}
	}
	*c = nil
	return errors.Join(errs...)
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
