// Package abtest measures the latency a sidecar adds by A/B comparison: the same cheap HTTP/1.1
// request, interleaved, once through the sidecar (to the pod IP from the agent's network
// namespace, which the mesh's iptables redirect into the proxy) and once around it (to
// 127.0.0.1 on the app port, from a socket opened inside the pod's network namespace, which the
// redirect does not touch). Different requests take each path, so nothing can be subtracted per
// request; the two latency distributions are compared instead, as Δp50/Δp90/Δp99 (through −
// around) with bootstrap confidence intervals.
//
// The difference contains the proxy's own time, the extra loopback hop and the NAT, and also the
// crossing of the pod's veth, which only the through path makes. It is the added latency a client
// outside the pod sees, and it is an upper bound of the time spent inside the proxy.
//
// Schedule. Requests are sent open loop: request i is due at t0 + i/rate whatever the latency of
// the ones before, and goes through or around the sidecar by a fair coin (seeded), so the two
// paths are interleaved over the same moments and the same load. The coin, rather than strict
// ABAB alternation, is deliberate: a request's latency depends on how long the machine was idle
// before it (CPU idle states, vCPU halt polling, the Go scheduler's spinning threads, a CPU hog
// that got the core meanwhile), and with ABAB every around request follows a through request,
// so the through path's latency sets the idle gap before every around request. In an early
// version of the ground-truth test (the proxy inside the generator's process, normal priority,
// a busy machine), ABAB made the around path's p50 50–80 µs faster when the proxy held each
// request 1 ms than at d = 0, and that went straight into Δp50. With a coin, the request before
// any request is equally likely to be on either path, so both paths share one idle history.
// Order Alternate keeps strict ABAB for comparison. Each path has a small pool of keep-alive
// connections, one request in flight per connection. Requests due during the warm-up are sent
// but not recorded.
//
// Latency. Each request records its service time (response complete − request written) and its
// latency from the intended time (which adds the wait for the generator's timer and for a free
// connection, i.e. coordinated omission corrected). The deltas use service time by default: the
// Go timer that releases requests is often several hundred microseconds late, which is the
// generator's doing, not the sidecar's, and would only blur a comparison at this scale. If the
// paths fall behind the schedule (a busy connection delays requests), Result.Warnings says so.
//
// Accuracy. The package's tests build a pod from a network namespace, a veth pair and Istio's
// PREROUTING redirect, and put a known-delay proxy in the sidecar's place: Δp50(d) − Δp50(0)
// matched the proxy's own log of the residency it added within about 20 µs for d = 200 µs and
// d = 1 ms. On a busy node, holding a request also slows its later hops (the app's CPU went idle
// or to a neighbour meanwhile); A/B counts that as added latency, which it is.
package abtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"

	"github.com/kubectl-mesh/kubectl-mesh/agent/netns"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/bootstrap"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/histogram"
)

// Limits that keep a request for an A/B run from turning the agent into a load generator.
const (
	MaxRate        = 5000.0
	MaxDuration    = 10 * time.Minute
	MaxConnections = 64
	MaxResamples   = 10000
)

// Defaults for a Config's zero fields.
const (
	DefaultRate       = 200.0
	DefaultDuration   = 10 * time.Second
	DefaultWarmup     = time.Second
	DefaultTimeout    = 5 * time.Second
	DefaultResamples  = 1000
	DefaultConfidence = 0.95
	DefaultMaxSamples = 100_000
)

// DefaultQuantiles are the quantiles reported when Config.Quantiles is empty.
var DefaultQuantiles = []float64{0.5, 0.9, 0.99}

// Basis selects which per-request time the deltas compare.
type Basis int

const (
	// ServiceTime is response complete − request written.
	ServiceTime Basis = iota
	// FromIntended is response complete − intended send time (coordinated omission corrected).
	FromIntended
)

func (b Basis) String() string {
	if b == FromIntended {
		return "from-intended"
	}
	return "service"
}

// Order decides which path each scheduled request takes.
type Order int

const (
	// Random sends each request through or around by a fair coin.
	Random Order = iota
	// Alternate sends even requests through and odd ones around (ABAB…).
	Alternate
)

// Endpoint is one path to the app.
type Endpoint struct {
	// Addr is shown in errors and used as the Host header when Config.Host is empty.
	Addr string
	// Dial opens a new connection on this path.
	Dial func(ctx context.Context) (net.Conn, error)
}

// Through is the path through the sidecar: addr (the pod IP and app port) dialed from the
// caller's network namespace.
func Through(addr string) Endpoint {
	d := net.Dialer{Timeout: DefaultTimeout}
	return Endpoint{Addr: addr, Dial: func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	}}
}

// Around is the path around the sidecar: addr (normally 127.0.0.1 and the app port) dialed
// from inside the network namespace at nsPath (/proc/<pid>/ns/net of any process in the pod).
func Around(nsPath, addr string) Endpoint {
	d := &netns.Dialer{NSPath: nsPath, Dialer: net.Dialer{Timeout: DefaultTimeout}}
	return Endpoint{Addr: addr, Dial: func(ctx context.Context) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	}}
}

// Config describes one A/B run. Zero fields take the defaults above.
type Config struct {
	Through, Around Endpoint
	// Host header; default Through.Addr, so both paths send identical bytes.
	Host string
	// Path of the GET request; default "/".
	Path string
	// Rate is requests per second over both paths together.
	Rate float64
	// Duration is the measured time, after Warmup.
	Duration time.Duration
	Warmup   time.Duration
	// Connections per path.
	Connections int
	// Timeout bounds each request, including a reconnect.
	Timeout time.Duration
	// Quantiles to report, each in (0, 1).
	Quantiles []float64
	// Resamples for the bootstrap; Confidence is the interval's coverage.
	Resamples  int
	Confidence float64
	// MaxSamples bounds the raw samples kept per path; beyond it a uniform reservoir is kept.
	MaxSamples int
	// Seed makes the bootstrap and the reservoir repeatable; 0 seeds from the clock.
	Seed uint64
	// Basis of the deltas and Order of the paths; see the package comment.
	Basis Basis
	Order Order
}

func (c *Config) withDefaults() (Config, error) {
	out := *c
	if out.Through.Dial == nil || out.Around.Dial == nil {
		return out, errors.New("abtest: both the through and the around endpoint are needed")
	}
	if out.Host == "" {
		out.Host = out.Through.Addr
	}
	if out.Path == "" {
		out.Path = "/"
	}
	if !strings.HasPrefix(out.Path, "/") || strings.ContainsAny(out.Path+out.Host, "\r\n ") {
		return out, fmt.Errorf("abtest: invalid path %q or host %q", out.Path, out.Host)
	}
	if out.Rate == 0 {
		out.Rate = DefaultRate
	}
	if !(out.Rate > 0) || out.Rate > MaxRate {
		return out, fmt.Errorf("abtest: rate %g req/s outside (0, %g]", out.Rate, MaxRate)
	}
	if out.Duration == 0 {
		out.Duration = DefaultDuration
	}
	if out.Warmup == 0 {
		out.Warmup = DefaultWarmup
	}
	if out.Duration < 0 || out.Warmup < 0 || out.Duration+out.Warmup > MaxDuration {
		return out, fmt.Errorf("abtest: duration %v plus warm-up %v outside (0, %v]", out.Duration, out.Warmup, MaxDuration)
	}
	if out.Connections == 0 {
		out.Connections = 1
	}
	if out.Connections < 0 || out.Connections > MaxConnections {
		return out, fmt.Errorf("abtest: %d connections per path outside [1, %d]", out.Connections, MaxConnections)
	}
	if out.Timeout <= 0 {
		out.Timeout = DefaultTimeout
	}
	if len(out.Quantiles) == 0 {
		out.Quantiles = DefaultQuantiles
	}
	for _, q := range out.Quantiles {
		if !(q > 0 && q < 1) {
			return out, fmt.Errorf("abtest: quantile %g outside (0, 1)", q)
		}
	}
	if out.Resamples == 0 {
		out.Resamples = DefaultResamples
	}
	if out.Resamples < 100 || out.Resamples > MaxResamples {
		return out, fmt.Errorf("abtest: %d resamples outside [100, %d]", out.Resamples, MaxResamples)
	}
	if out.Confidence == 0 {
		out.Confidence = DefaultConfidence
	}
	if !(out.Confidence > 0 && out.Confidence < 1) {
		return out, fmt.Errorf("abtest: confidence %g outside (0, 1)", out.Confidence)
	}
	if out.MaxSamples == 0 {
		out.MaxSamples = DefaultMaxSamples
	}
	if out.MaxSamples < 10 {
		return out, fmt.Errorf("abtest: max samples %d below 10", out.MaxSamples)
	}
	if out.Seed == 0 {
		out.Seed = uint64(time.Now().UnixNano())
	}
	return out, nil
}

// PathResult holds one path's figures over the measured window.
type PathResult struct {
	Addr string
	// Requests that completed with a 1xx–3xx response inside the measured window.
	Requests uint64
	// Errors inside the measured window: connection failures, timeouts and 4xx/5xx responses.
	Errors    uint64
	LastError string
	// Sent counts every request this path sent, warm-up included.
	Sent uint64
	// Microsecond histograms of successful measured requests.
	Service      *hdrhistogram.Histogram
	FromIntended *hdrhistogram.Histogram
	// Lateness is request written − intended time: the generator's own delay.
	Lateness *hdrhistogram.Histogram
	// Samples are the raw times (nanoseconds, on the run's Basis) the deltas were computed
	// from, sorted; at most Config.MaxSamples.
	Samples []int64
}

// Histogram returns the histogram on the given basis.
func (p *PathResult) Histogram(b Basis) *hdrhistogram.Histogram {
	if b == FromIntended {
		return p.FromIntended
	}
	return p.Service
}

// Delta is one quantile's added latency with its bootstrap confidence interval.
type Delta = bootstrap.Delta

// Result of one A/B run.
type Result struct {
	Start, End      time.Time
	Config          Config
	Through, Around PathResult
	Deltas          []Delta
	// AchievedRate is requests sent per second over both paths inside the measured window.
	AchievedRate float64
	// Stopped is set when the context ended the run early.
	Stopped  bool
	Warnings []string
}

// Delta returns the delta at quantile q, if it was computed.
func (r *Result) Delta(q float64) (Delta, bool) {
	for _, d := range r.Deltas {
		if d.Quantile == q {
			return d, true
		}
	}
	return Delta{}, false
}

// Run performs an A/B run. It dials every connection first, so a path that refuses fails at
// once with an error naming it. A run stopped by ctx returns the figures so far with
// Result.Stopped set and no error, as long as both paths have samples.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	req := []byte("GET " + c.Path + " HTTP/1.1\r\nHost: " + c.Host + "\r\nUser-Agent: kubectl-mesh-abtest\r\n\r\n")
	rng := rand.New(rand.NewPCG(c.Seed, 0x9e3779b97f4a7c15))
	paths := [2]*path{
		newPath("through the sidecar", c.Through, c, rng.Uint64()),
		newPath("around the sidecar", c.Around, c, rng.Uint64()),
	}
	coin := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))

	// Dial everything before the schedule starts, so connection set-up is not measured and a
	// refused port is reported as such.
	var workers []*worker
	closeAll := func() {
		for _, w := range workers {
			w.close()
		}
	}
	for _, p := range paths {
		for range c.Connections {
			dctx, cancel := context.WithTimeout(ctx, c.Timeout)
			conn, err := p.ep.Dial(dctx)
			cancel()
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("abtest: %s (%s): %w", p.name, p.ep.Addr, err)
			}
			workers = append(workers, &worker{p: p, conn: conn, br: bufio.NewReader(conn)})
		}
	}

	start := time.Now()
	t0 := start
	measureFrom := t0.Add(c.Warmup)
	end := measureFrom.Add(c.Duration)
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(ctx, req, c.Timeout, measureFrom)
		}()
	}

	stopped := false
	timer := time.NewTimer(0)
	<-timer.C
	perRequest := float64(time.Second) / c.Rate
schedule:
	for i := 0; ; i++ {
		due := t0.Add(time.Duration(float64(i) * perRequest))
		if !due.Before(end) {
			break
		}
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				stopped = true
				break schedule
			}
		}
		which := i % 2
		if c.Order == Random {
			which = coin.IntN(2)
		}
		select {
		case paths[which].jobs <- due:
		case <-ctx.Done():
			stopped = true
			break schedule
		}
	}
	timer.Stop()
	for _, p := range paths {
		close(p.jobs)
	}
	wg.Wait()
	closeAll()
	finish := time.Now()

	res := &Result{Start: start, End: finish, Config: c, Stopped: stopped}
	window := c.Duration
	if stopped {
		window = finish.Sub(measureFrom)
	}
	var sentInWindow uint64
	for i, p := range paths {
		pr := p.result()
		if i == 0 {
			res.Through = pr
		} else {
			res.Around = pr
		}
		sentInWindow += pr.Requests + pr.Errors
	}
	if window > 0 {
		res.AchievedRate = float64(sentInWindow) / window.Seconds()
	}
	for _, pr := range []*PathResult{&res.Through, &res.Around} {
		if len(pr.Samples) == 0 {
			if stopped && ctx.Err() != nil {
				return res, fmt.Errorf("abtest: stopped before any measured request %s: %w", pr.Addr, ctx.Err())
			}
			return res, fmt.Errorf("abtest: no successful request to %s (%d errors, last: %s)", pr.Addr, pr.Errors, pr.LastError)
		}
	}
	res.Deltas = bootstrap.Deltas(res.Through.Samples, res.Around.Samples, c.Quantiles, c.Resamples, c.Confidence, rng)
	res.Warnings = warnings(res)
	return res, nil
}

func warnings(r *Result) []string {
	var w []string
	if !r.Stopped && r.AchievedRate < 0.95*r.Config.Rate {
		w = append(w, fmt.Sprintf("achieved %.1f req/s of the %.1f asked", r.AchievedRate, r.Config.Rate))
	}
	// Releases normally lag the schedule by up to a millisecond (Go timers); far more means
	// requests waited for a busy connection and the paths no longer see the intended load.
	for _, p := range []*PathResult{&r.Through, &r.Around} {
		if lat := time.Duration(p.Lateness.ValueAtQuantile(90)) * time.Microsecond; lat > 5*time.Millisecond {
			w = append(w, fmt.Sprintf("requests %s started %v late at p90: the path is saturated; lower the rate or add connections", p.Addr, lat))
		}
		if total := p.Requests + p.Errors; total > 0 && p.Errors*100 > total {
			w = append(w, fmt.Sprintf("%d of %d requests %s failed, last: %s", p.Errors, total, p.Addr, p.LastError))
		}
	}
	return w
}

type path struct {
	name string
	ep   Endpoint
	jobs chan time.Time

	mu                              sync.Mutex
	basis                           Basis
	service, fromIntended, lateness *hdrhistogram.Histogram
	samples                         []int64
	seen                            uint64
	maxSamples                      int
	rng                             *rand.Rand
	requests, errs, sent            uint64
	lastErr                         error
}

func newPath(name string, ep Endpoint, c Config, seed uint64) *path {
	// Room for a second of schedule: the dispatcher never blocks on a path that keeps up.
	buf := int(c.Rate) + 16
	return &path{
		name: name, ep: ep, jobs: make(chan time.Time, buf), basis: c.Basis,
		service:      histogram.New(),
		fromIntended: histogram.New(),
		lateness:     histogram.New(),
		maxSamples:   c.MaxSamples,
		rng:          rand.New(rand.NewPCG(seed, seed>>1|1)),
	}
}

func micros(d time.Duration) int64 {
	us := (int64(d) + 500) / 1000
	return min(max(us, histogram.Lowest), histogram.Highest)
}

func (p *path) record(due, sent, done time.Time, measured bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.sent++
	if !measured {
		return
	}
	if err != nil {
		p.errs++
		p.lastErr = err
		return
	}
	p.requests++
	service, fromIntended := done.Sub(sent), done.Sub(due)
	p.service.RecordValue(micros(service))
	p.fromIntended.RecordValue(micros(fromIntended))
	p.lateness.RecordValue(micros(sent.Sub(due)))
	v := int64(service)
	if p.basis == FromIntended {
		v = int64(fromIntended)
	}
	// Reservoir sampling keeps a uniform sample of bounded size for the bootstrap.
	p.seen++
	if len(p.samples) < p.maxSamples {
		p.samples = append(p.samples, v)
	} else if j := p.rng.Uint64N(p.seen); j < uint64(p.maxSamples) {
		p.samples[j] = v
	}
}

func (p *path) result() PathResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := append([]int64(nil), p.samples...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	pr := PathResult{
		Addr: p.ep.Addr, Requests: p.requests, Errors: p.errs, Sent: p.sent,
		Service: p.service, FromIntended: p.fromIntended, Lateness: p.lateness, Samples: s,
	}
	if p.lastErr != nil {
		pr.LastError = p.lastErr.Error()
	}
	return pr
}

// worker owns one keep-alive connection and sends one request at a time on it.
type worker struct {
	p    *path
	mu   sync.Mutex // guards conn against the cancellation callback
	conn net.Conn
	br   *bufio.Reader
}

func (w *worker) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn != nil {
		w.conn.Close()
		w.conn = nil
	}
}

func (w *worker) run(ctx context.Context, req []byte, timeout time.Duration, measureFrom time.Time) {
	for due := range w.p.jobs {
		if ctx.Err() != nil {
			continue // drain: the dispatcher closes the channel soon
		}
		sent := time.Now()
		err := w.roundTrip(ctx, req, sent.Add(timeout))
		done := time.Now()
		w.p.record(due, sent, done, !due.Before(measureFrom), err)
	}
}

// roundTrip writes the pre-built request and reads the whole response. A broken connection is
// replaced on the next request; the redial is part of that request's time.
func (w *worker) roundTrip(ctx context.Context, req []byte, deadline time.Time) error {
	w.mu.Lock()
	conn := w.conn
	w.mu.Unlock()
	if conn == nil {
		dctx, cancel := context.WithDeadline(ctx, deadline)
		c, err := w.p.ep.Dial(dctx)
		cancel()
		if err != nil {
			return fmt.Errorf("dial: %w", err)
		}
		w.mu.Lock()
		w.conn, w.br = c, bufio.NewReader(c)
		w.mu.Unlock()
		conn = c
	}
	// Cancellation must not wait for a slow response.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := conn.SetDeadline(deadline); err != nil {
		w.close()
		return err
	}
	if _, err := conn.Write(req); err != nil {
		w.close()
		return fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		w.close()
		return fmt.Errorf("read response: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		w.close()
		return fmt.Errorf("read body: %w", err)
	}
	if resp.Close {
		w.close()
	}
	if resp.StatusCode >= 400 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}
