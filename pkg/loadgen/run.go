package loadgen

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
)

// Progress is reported about every ProgressInterval while a load runs.
type Progress struct {
	Elapsed time.Duration
	// Requests and Errors count since the start, warm-up included.
	Requests uint64
	Errors   uint64
	// AchievedRate is over the last interval.
	AchievedRate float64
	Warmup       bool
}

// Result is what one Run measured; counts and histograms exclude the warm-up.
type Result struct {
	Protocol    Protocol
	Target      string
	Connections int
	// IntendedRate is Options.Rate (0 for closed loop).
	IntendedRate float64
	// AchievedRate is Requests over Duration.
	AchievedRate float64
	// RateRatio is AchievedRate / IntendedRate (0 for closed loop).
	RateRatio float64
	// Saturated says the generator could not hold the asked rate: it fell more than
	// RateTolerance short or left due requests unsent.
	Saturated bool
	// Requests is every finished request, errors included.
	Requests uint64
	Errors   uint64
	// ErrorsByKind and ErrorSamples (one message per kind) explain Errors.
	ErrorsByKind map[ErrorKind]uint64
	ErrorSamples map[ErrorKind]string
	// Missed counts open-loop requests that fell due but were never sent before the end,
	// because every connection was busy.
	Missed uint64
	// Duration is the measured window (after warm-up), shorter when stopped.
	Duration time.Duration
	// SendSpan is the time from the first to the last counted request's actual send: with
	// Requests it gives the rate the target really saw, (Requests−1)/SendSpan.
	SendSpan time.Duration
	// Stopped is set when the context ended the load early.
	Stopped bool
	// Latency is from the intended send time (coordinated omission corrected); in closed
	// loop it equals Service. Service is from the actual send. Lateness is how long open-loop
	// requests waited past their intended time before being sent. All in microseconds,
	// successful requests only.
	Latency  *hdrhistogram.Histogram
	Service  *hdrhistogram.Histogram
	Lateness *hdrhistogram.Histogram
}

func (r *Result) String() string {
	return fmt.Sprintf("%v %s: %d requests (%d errors) in %v, %.1f/s (asked %.1f/s), p50 %v p99 %v max %v, service p50 %v p99 %v",
		r.Protocol, r.Target, r.Requests, r.Errors, r.Duration.Round(time.Millisecond), r.AchievedRate, r.IntendedRate,
		histogram.Quantile(r.Latency, 0.5), histogram.Quantile(r.Latency, 0.99), histogram.Quantile(r.Latency, 1),
		histogram.Quantile(r.Service, 0.5), histogram.Quantile(r.Service, 0.99))
}

type client interface {
	connect(ctx context.Context) error
	do(ctx context.Context) error
	abort()
	close()
}

func newClient(o *Options) (client, error) {
	switch o.Protocol {
	case HTTP1:
		return newH1Client(o), nil
	case HTTP2:
		return newH2Client(o), nil
	case GRPC:
		return newGRPCClient(o)
	case TCP:
		return newTCPClient(o), nil
	}
	return nil, invalid("protocol %v is not supported", o.Protocol)
}

// shard is a set of histograms shared by a few workers: one set per worker would cost
// ~400 KiB each, too much at MaxConnections.
type shard struct {
	mu                         sync.Mutex
	latency, service, lateness *hdrhistogram.Histogram
}

// worker state; the atomics are read by the progress reporter, the rest only after the end.
type worker struct {
	total, failed atomic.Uint64
	_             [48]byte // keep workers' hot counters on separate cache lines

	cl        client
	sh        *shard
	requests  uint64
	errs      [5]uint64
	samples   [5]string
	lastSend  int64
	firstSend int64 // -1 until a request counts
}

func (w *worker) finish(err error, intended, sent, done, warmup int64) {
	w.total.Add(1)
	if err != nil {
		w.failed.Add(1)
	}
	if intended < warmup {
		return
	}
	w.requests++
	if w.firstSend < 0 || sent < w.firstSend {
		w.firstSend = sent
	}
	if sent > w.lastSend {
		w.lastSend = sent
	}
	if err != nil {
		k := kindIndex(classify(err))
		w.errs[k]++
		if w.samples[k] == "" {
			w.samples[k] = err.Error()
		}
		return
	}
	w.sh.mu.Lock()
	histogram.Record(w.sh.latency, time.Duration(done-intended))
	histogram.Record(w.sh.service, time.Duration(done-sent))
	histogram.Record(w.sh.lateness, time.Duration(sent-intended))
	w.sh.mu.Unlock()
}

// h1EventLoops lets closed-loop HTTP/1.1 run on event loops (h1loop_linux.go); tests turn
// it off to check the goroutine-per-connection path against them.
var h1EventLoops = true

// ErrConnectFailed is returned by Run when a connection cannot be opened before the load
// starts (refused, unreachable, no gRPC server), so no figure is measured against a target
// that is not there.
var ErrConnectFailed = errors.New("cannot connect to the target")

// Run generates the load and returns what it measured. Options are validated first
// (errors wrap ErrInvalidOptions); every connection is opened before the clock starts, and
// a target that refuses them fails the run with ErrConnectFailed. Cancelling ctx stops the
// load at once: the result holds what was measured so far, with Stopped set.
func Run(ctx context.Context, opts Options) (*Result, error) {
	o := opts.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	workers := make([]*worker, o.Connections)
	nShards := min(o.Connections, 2*runtime.GOMAXPROCS(0))
	shards := make([]*shard, nShards)
	for i := range shards {
		shards[i] = &shard{latency: histogram.New(), service: histogram.New(), lateness: histogram.New()}
	}
	closeAll := func() {
		for _, w := range workers {
			if w != nil && w.cl != nil {
				w.cl.close()
			}
		}
	}
	// Open connections in parallel: 1024 sequential dials to a slow target would eat the
	// caller's patience before the load even starts.
	var dialErr error
	var dialMu sync.Mutex
	var wg sync.WaitGroup
	for i := range workers {
		cl, err := newClient(&o)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("connection %d to %s: %w", i, o.Target, err)
		}
		workers[i] = &worker{cl: cl, sh: shards[i%nShards], firstSend: -1}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := cl.connect(ctx); err != nil {
				dialMu.Lock()
				if dialErr == nil {
					dialErr = fmt.Errorf("%w: connection %d to %s: %w", ErrConnectFailed, i, o.Target, err)
				}
				dialMu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		closeAll()
		return nil, err
	}
	if dialErr != nil {
		closeAll()
		return nil, dialErr
	}
	defer closeAll()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stopped atomic.Bool
	var stopAt atomic.Int64
	var start time.Time
	now := func() int64 { return int64(time.Since(start)) }
	warmupNs, endNs := int64(o.Warmup), int64(o.Duration)
	var loops *h1Loops
	if o.Rate == 0 && o.Protocol == HTTP1 && h1EventLoops {
		l, err := newH1Loops(runCtx, &o, workers, shards, now, warmupNs, endNs, &stopped)
		if err != nil {
			return nil, fmt.Errorf("HTTP/1.1 event loop: %w", err)
		}
		if l != nil {
			loops = l
			defer loops.close()
		}
	}
	start = time.Now()

	// On cancellation, break every request in flight so Run returns at once.
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		<-runCtx.Done()
		if ctx.Err() != nil {
			stopAt.Store(now())
			stopped.Store(true)
		}
		for _, w := range workers {
			w.cl.abort()
		}
		if loops != nil {
			loops.wake()
		}
	}()

	progressDone := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(progressDone)
		if o.Progress == nil {
			return
		}
		t := time.NewTicker(ProgressInterval)
		defer t.Stop()
		var lastN uint64
		lastT := int64(0)
		for {
			select {
			case <-finished:
				return
			case <-t.C:
			}
			var n, e uint64
			for _, w := range workers {
				n += w.total.Load()
				e += w.failed.Load()
			}
			el := now()
			rate := 0.0
			if el > lastT {
				rate = float64(n-lastN) / time.Duration(el-lastT).Seconds()
			}
			lastN, lastT = n, el
			o.Progress(Progress{Elapsed: time.Duration(el), Requests: n, Errors: e, AchievedRate: rate, Warmup: el < warmupNs})
		}
	}()

	var missed uint64
	if o.Rate > 0 {
		jobs := make(chan int64, o.Connections)
		for _, w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for intended := range jobs {
					sent := now()
					err := w.cl.do(runCtx)
					done := now()
					if stopped.Load() || err != nil && runCtx.Err() != nil {
						continue // cut short by the stop; drain the queue without sending
					}
					w.finish(err, intended, sent, done, warmupNs)
				}
			}()
		}
		missed = schedule(runCtx, o.Rate, start, now, warmupNs, endNs, jobs)
		close(jobs)
	} else if loops != nil {
		loops.run()
	} else {
		for _, w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stopped.Load() {
					sent := now()
					if sent >= endNs {
						return
					}
					err := w.cl.do(runCtx)
					done := now()
					if stopped.Load() || err != nil && runCtx.Err() != nil {
						return
					}
					w.finish(err, sent, sent, done, warmupNs)
				}
			}()
		}
	}
	wg.Wait()
	close(finished)
	<-progressDone
	cancel()
	<-watchDone

	res := &Result{
		Protocol:     o.Protocol,
		Target:       o.Target,
		Connections:  o.Connections,
		IntendedRate: o.Rate,
		ErrorsByKind: map[ErrorKind]uint64{},
		ErrorSamples: map[ErrorKind]string{},
		Missed:       missed,
		Stopped:      stopped.Load(),
	}
	var lastSend int64
	firstSend := int64(-1)
	for _, w := range workers {
		if w.firstSend >= 0 && (firstSend < 0 || w.firstSend < firstSend) {
			firstSend = w.firstSend
		}
		res.Requests += w.requests
		for k, n := range w.errs {
			if n > 0 {
				res.Errors += n
				res.ErrorsByKind[errorKinds[k]] += n
				if _, ok := res.ErrorSamples[errorKinds[k]]; !ok {
					res.ErrorSamples[errorKinds[k]] = w.samples[k]
				}
			}
		}
		lastSend = max(lastSend, w.lastSend)
	}
	hs := make([][3]*hdrhistogram.Histogram, 0, len(shards))
	for _, s := range shards {
		hs = append(hs, [3]*hdrhistogram.Histogram{s.latency, s.service, s.lateness})
	}
	res.Latency, _ = histogram.Merge(column(hs, 0)...)
	res.Service, _ = histogram.Merge(column(hs, 1)...)
	res.Lateness, _ = histogram.Merge(column(hs, 2)...)

	if firstSend >= 0 {
		res.SendSpan = time.Duration(lastSend - firstSend)
	}
	// The window ends at the nominal end, later if queued requests were still being sent,
	// earlier if stopped.
	end := max(endNs, lastSend)
	if res.Stopped {
		end = min(end, stopAt.Load())
	}
	if end > warmupNs {
		res.Duration = time.Duration(end - warmupNs)
		res.AchievedRate = float64(res.Requests) / res.Duration.Seconds()
	}
	if o.Rate > 0 {
		res.RateRatio = res.AchievedRate / o.Rate
		res.Saturated = !res.Stopped && (res.Missed > 0 || res.RateRatio < 1-RateTolerance)
	}
	return res, nil
}

func column(hs [][3]*hdrhistogram.Histogram, i int) []*hdrhistogram.Histogram {
	out := make([]*hdrhistogram.Histogram, len(hs))
	for j := range hs {
		out[j] = hs[j][i]
	}
	return out
}

// ErrSaturated is returned by Result.Check when the asked rate was not held.
var ErrSaturated = errors.New("the generator could not hold the asked rate")

// Check turns a saturated result into an error that says achieved vs asked, for callers that
// must not report latency measured at a rate other than the one asked.
func (r *Result) Check() error {
	if !r.Saturated {
		return nil
	}
	return fmt.Errorf("%w: achieved %.1f/s of %.1f/s asked (%.1f%%), %d due requests never sent",
		ErrSaturated, r.AchievedRate, r.IntendedRate, 100*r.RateRatio, r.Missed)
}
