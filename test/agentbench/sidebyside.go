package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"sync"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
	"github.com/kubectl-mesh/kubectl-mesh/agent/residency"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
)

// chain is an upstream nginx and a proxy nginx in front of it, with the load aimed at the
// proxy.
type chain struct {
	upstream, proxy []int
	load            loadgen.Options
}

func (c chain) pids() []uint32 {
	out := make([]uint32, len(c.proxy))
	for i, p := range c.proxy {
		out[i] = uint32(p)
	}
	return out
}

// measureSideBySide loads two identical chains at once, the residency programs tracing one
// proxy, and returns per pair of rounds the traced chain's rate over the untraced one's.
//
// Whatever slows the machine during a round (the host's other tenants move the rate by up
// to 20% from one round to the next here) slows both chains alike, so the ratio keeps only
// what tracing costs. Nothing is shared but the CPUs: each chain has its own upstream and
// its own load generator process, so every program run a chain's traffic causes, in
// whichever of its tasks, is charged to that chain. Each pair traces each chain once, in
// ABBA order over pairs, and takes the geometric mean of its two ratios, which cancels a
// difference between the chains themselves. The untraced chain's events still run the
// attached programs and are rejected there, so this is the cost of tracing over that of
// rejecting: the caller adds the rejections' cost from the run-time accounting.
func measureSideBySide(ctx context.Context, chains [2]chain, pairs int) ([]float64, error) {
	var ratios []float64
	for i := range pairs {
		var r [2]float64 // by traced chain
		order := []int{0, 1}
		if i%2 == 1 {
			order = []int{1, 0}
		}
		for _, traced := range order {
			ratio, err := sideBySideRound(ctx, chains, traced)
			if err != nil {
				return ratios, err
			}
			r[traced] = ratio
		}
		ratios = append(ratios, math.Sqrt(r[0]*r[1]))
		logf("side by side pair %d: traced/untraced %.3f (chain A traced %.3f, chain B traced %.3f)", i+1, ratios[i], r[0], r[1])
	}
	return ratios, nil
}

// sideBySideRound runs both loads at once with chain traced's proxy traced, and returns its
// requests over the other's.
func sideBySideRound(ctx context.Context, chains [2]chain, traced int) (float64, error) {
	tr, attempts := residency.StartAuto(ebpftier.Order, chains[traced].pids(), residency.Options{})
	if tr == nil {
		return 0, fmt.Errorf("no residency tier attached: %v", attempts)
	}
	defer tr.Close()
	var wg sync.WaitGroup
	var res [2]loadResult
	var errs [2]error
	for i, c := range chains {
		wg.Go(func() { res[i], errs[i] = loadProcess(ctx, c.load) })
	}
	wg.Wait()
	for i := range chains {
		if errs[i] != nil {
			return 0, fmt.Errorf("chain %c: %w", 'A'+i, errs[i])
		}
		if res[i].Errors > 0 || res[i].Requests == 0 {
			return 0, fmt.Errorf("chain %c: %d requests, %d errors", 'A'+i, res[i].Requests, res[i].Errors)
		}
	}
	snap, err := tr.Read()
	if err != nil {
		return 0, err
	}
	if snap.Counters.Paired == 0 {
		return 0, fmt.Errorf("the traced proxy's requests were not paired (%+v)", snap.Counters)
	}
	return float64(res[traced].Requests) / float64(res[1-traced].Requests), nil
}

// loadResult is what a load process reports on its stdout.
type loadResult struct {
	Requests, Errors uint64
}

// loadChild is the flag that makes this program a load process (runLoadChild).
const loadChild = "load-child"

// loadProcess runs load in a child process of this program, so that its CPU is its own.
func loadProcess(ctx context.Context, load loadgen.Options) (loadResult, error) {
	var r loadResult
	cmd := exec.CommandContext(ctx, "/proc/self/exe", "-"+loadChild, load.Target,
		"-connections", fmt.Sprint(load.Connections), "-round", load.Duration.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return r, fmt.Errorf("load process: %w", err)
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("load process said %q: %w", out, err)
	}
	return r, nil
}

// runLoadChild is the load process: one closed-loop HTTP/1.1 load, its counts on stdout.
func runLoadChild(ctx context.Context, load loadgen.Options) error {
	res, err := loadgen.Run(ctx, load)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(loadResult{Requests: res.Requests, Errors: res.Errors})
}
