package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/agent/residency"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/loadgen"
)

// chain is an upstream nginx and a proxy nginx in front of it, with the load aimed at the
// proxy.
type chain struct {
	upstream, proxy []int
	// upstreamAddr also serves the upstream's stub_status page on /status.
	upstreamAddr string
	load         loadgen.Options
}

func (c chain) pids() []uint32 {
	out := make([]uint32, len(c.proxy))
	for i, p := range c.proxy {
		out[i] = uint32(p)
	}
	return out
}

// loadChild is the flag that makes this program a load process (runLoadChild).
const loadChild = "load-child"

// runLoadChild is the load process: one closed-loop HTTP/1.1 load, whose CPU time is then
// its own.
func runLoadChild(ctx context.Context, load loadgen.Options) error {
	_, err := loadgen.Run(ctx, load)
	return err
}

// attached is what a window's "on" attaches: the residency tracer, or empty programs.
type attached interface{ Close() error }

// settle is the pause after each switch, before the next window starts: loading the
// programs and creating their maps, or freeing them, stirs the caches, and that belongs to
// neither state.
const settle = 200 * time.Millisecond

// window is one stretch of the continuous load, with programs attached or not.
type window struct {
	on       bool
	elapsed  time.Duration
	requests uint64
	// cpu is the exchange's own processes' CPU time (load process, proxy, upstream).
	cpu                   time.Duration
	events, paired, drops uint64
}

func (w window) rate() float64 { return float64(w.requests) / w.elapsed.Seconds() }

func (w window) cpuPerRequest() float64 {
	return float64(w.cpu.Microseconds()) / float64(max(w.requests, 1))
}

// measureToggled loads chain c without a pause from a load process of its own and attaches
// programs (attach) and detaches them between windows of length w, in ABBA order, for the
// given number of quartets.
//
// The host's other tenants move the rate here by ±20% over seconds. Windows far shorter
// than those swings, each quartet's on windows against its off ones, and many quartets are
// what brings a few per cent within reach; the load runs on through the switches, so the
// connections and both nginx stay as warm in one window as in the next. The programs are
// loaded and attached between windows, outside them, as the agent starts its tracer.
func measureToggled(ctx context.Context, c chain, quartets int, w time.Duration, attach func() (attached, error)) ([]window, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	load := c.load
	// Long enough for every window and every switch between them; cancelled when done.
	load.Duration = time.Duration(quartets) * 4 * (w + settle + time.Second)
	cmd := exec.CommandContext(ctx, "/proc/self/exe", "-"+loadChild, load.Target,
		"-connections", fmt.Sprint(load.Connections), "-round", load.Duration.String())
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("load process: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cancel()
		<-exited
	}()
	parts := append(append([]int{cmd.Process.Pid}, c.upstream...), c.proxy...)
	status := fmt.Sprintf("http://%s/status", c.upstreamAddr)

	// The load's connections come up before the first window.
	if err := sleepCtx(ctx, time.Second); err != nil {
		return nil, err
	}
	var out []window
	for i := 0; i < 4*quartets; i++ {
		on := i%4 == 1 || i%4 == 2 // ABBA
		select {
		case err := <-exited:
			return out, fmt.Errorf("load process exited early: %v", err)
		default:
		}
		win, err := runWindow(ctx, on, w, attach, parts, status)
		if err != nil {
			return out, fmt.Errorf("window %d: %w", i+1, err)
		}
		out = append(out, win)
	}
	return out, nil
}

// runWindow measures one window, with attach's programs attached for it when on.
func runWindow(ctx context.Context, on bool, w time.Duration, attach func() (attached, error), parts []int, status string) (window, error) {
	win := window{on: on}
	var tr *residency.Tracer
	var before residency.Snapshot
	if on {
		a, err := attach()
		if err != nil {
			return win, err
		}
		defer a.Close()
		tr, _ = a.(*residency.Tracer)
	}
	if err := sleepCtx(ctx, settle); err != nil {
		return win, err
	}
	if tr != nil {
		var err error
		if before, err = tr.Read(); err != nil {
			return win, err
		}
	}
	req0, cpu0, err := counts(status, parts)
	if err != nil {
		return win, err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, w); err != nil {
		return win, err
	}
	req1, cpu1, err := counts(status, parts)
	if err != nil {
		return win, err
	}
	win.elapsed, win.requests, win.cpu = time.Since(t0), req1-req0, cpu1-cpu0
	if tr != nil {
		snap, err := tr.Read()
		if err != nil {
			return win, err
		}
		d := snap.Sub(&before)
		win.events, win.paired, win.drops = d.Counters.Events, d.Counters.Paired, d.Counters.Drops()
	}
	return win, nil
}

// counts reads the requests the upstream has served and the CPU time parts have used.
func counts(status string, parts []int) (uint64, time.Duration, error) {
	req, err := upstreamRequests(status)
	if err != nil {
		return 0, 0, err
	}
	cpu, err := processCPU(parts)
	return req, cpu, err
}

// upstreamRequests is the upstream nginx's count of requests served (stub_status): every
// proxied request, plus one per reading.
func upstreamRequests(url string) (uint64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	// Active connections: 17
	// server accepts handled requests
	//  18 18 123456
	sc := bufio.NewScanner(resp.Body)
	for i := 0; sc.Scan(); i++ {
		if i == 2 {
			f := strings.Fields(sc.Text())
			if len(f) == 3 {
				return strconv.ParseUint(f[2], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s: no request count in the stub_status page", url)
}

// quartetRatios are each ABBA quartet's on windows against its off ones: requests per
// second, and the CPU-bound ratio (CPU per request off over on).
func quartetRatios(ws []window) (rate, cpu []float64) {
	for i := 0; i+3 < len(ws); i += 4 {
		var req, sec, cpuT [2]float64 // by on
		for _, w := range ws[i : i+4] {
			k := 0
			if w.on {
				k = 1
			}
			req[k] += float64(w.requests)
			sec[k] += w.elapsed.Seconds()
			cpuT[k] += float64(w.cpu)
		}
		rate = append(rate, (req[1]/sec[1])/(req[0]/sec[0]))
		cpu = append(cpu, (cpuT[0]/req[0])/(cpuT[1]/req[1]))
	}
	return rate, cpu
}
