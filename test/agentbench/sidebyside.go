package main

import (
	"context"
	"fmt"
	"math"
	"sync"

	"github.com/kubectl-mesh/kubectl-mesh/agent/ebpftier"
	"github.com/kubectl-mesh/kubectl-mesh/agent/residency"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
)

// chain is one proxy in front of the shared upstream, with the load aimed at it.
type chain struct {
	pids []uint32
	load loadgen.Options
}

// measureSideBySide loads two identical proxies at once, the residency programs tracing one
// of them, and returns per pair of rounds the traced proxy's rate over the untraced one's.
//
// Whatever slows the machine during a round (the host's other tenants move the rate by up
// to 20% from one round to the next here) slows both proxies alike, so the ratio keeps only
// what tracing costs. Each pair traces each proxy once, in ABBA order over pairs, and takes
// the geometric mean of its two ratios, which cancels a difference between the proxies
// themselves. The untraced proxy's events still run the attached programs and are
// rejected there, so this is the cost of tracing over that of rejecting: the caller adds
// the rejections' cost from the run-time accounting.
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
		logf("side by side pair %d: traced/untraced %.3f (proxy A traced %.3f, proxy B traced %.3f)", i+1, ratios[i], r[0], r[1])
	}
	return ratios, nil
}

// sideBySideRound runs both loads at once with chain traced's proxy traced, and returns its
// rate over the other's.
func sideBySideRound(ctx context.Context, chains [2]chain, traced int) (float64, error) {
	tr, attempts := residency.StartAuto(ebpftier.Order, chains[traced].pids, residency.Options{})
	if tr == nil {
		return 0, fmt.Errorf("no residency tier attached: %v", attempts)
	}
	defer tr.Close()
	var wg sync.WaitGroup
	var res [2]*loadgen.Result
	var errs [2]error
	for i, c := range chains {
		wg.Go(func() { res[i], errs[i] = loadgen.Run(ctx, c.load) })
	}
	wg.Wait()
	for i := range chains {
		if errs[i] != nil {
			return 0, errs[i]
		}
		if res[i].Stopped {
			return 0, ctx.Err()
		}
		if res[i].Errors > 0 || res[i].Requests == 0 {
			return 0, fmt.Errorf("proxy %c: %d requests, %d errors", 'A'+i, res[i].Requests, res[i].Errors)
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
