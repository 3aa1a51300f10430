// Package residency measures the time each request spends inside a proxy process (its
// residency: what a sidecar adds to a request's latency), in the kernel, from the socket and
// TCP tracepoints, without touching the proxy or its traffic.
//
// The BPF side (bpf/residency.c) pairs each HTTP/1.1 request with its response per proxy
// socket and adds the two legs it spends inside the proxy into per-CPU log-linear
// histograms; for protocols whose requests cannot be paired (HTTP/2, gRPC, TCP) it times
// each burst of data from its arrival on one side to the proxy's next write on the other
// (connection-level queueing). This package loads it for one eBPF tier, keeps the set of
// traced proxy processes, and reads the histograms merged across CPUs.
package residency

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// The bucket layout is bpf/residency.c's: exact below 2^subBits ns, then subBuckets
// buckets per power of two (1.6% wide) up to 2^maxExp ns.
const (
	subBits    = 6
	subBuckets = 1 << subBits
	maxExp     = 35
	// Buckets is the number of buckets in each histogram.
	Buckets = subBuckets + (maxExp-subBits)*subBuckets
)

// Metric names one of the histograms the programs fill.
type Metric int

const (
	// Residency is request leg + response leg, each from the data's arrival at the proxy's
	// socket: the latency the proxy adds, including its wake-up and socket queueing.
	Residency Metric = iota
	// ResidencyRead is the same with each leg starting at the proxy's first read, as a
	// proxy timing itself from its reads would see it.
	ResidencyRead
	// RequestLeg is arrival on the downstream socket to the write on the upstream one.
	RequestLeg
	// ResponseLeg is arrival on the upstream socket to the write on the downstream one.
	ResponseLeg
	// QueueDownstream is arrival to first read on the proxy's downstream sockets: the
	// proxy's wake-up and socket queueing alone. One value per request, or per arrival
	// with Options.Queueing.
	QueueDownstream
	// QueueUpstream is the same on the proxy's upstream sockets.
	QueueUpstream
	// ForwardRequest is connection-level queueing in the request direction: from the
	// arrival of data the proxy reads on a downstream socket to its next write on an
	// upstream one, once per such read→forward burst. It pairs nothing with anything, so
	// it holds for multiplexed protocols (HTTP/2, gRPC) and opaque TCP.
	ForwardRequest
	// ForwardResponse is the same in the response direction: upstream arrival to the next
	// downstream write.
	ForwardResponse
	// Metrics is the number of metrics.
	Metrics
)

var metricNames = [Metrics]string{"residency", "residency_read", "request_leg", "response_leg", "queue_downstream", "queue_upstream", "forward_request", "forward_response"}

func (m Metric) String() string {
	if m >= 0 && m < Metrics {
		return metricNames[m]
	}
	return fmt.Sprintf("metric(%d)", int(m))
}

// BucketBounds returns the range of nanosecond values bucket i holds: [lo, hi).
func BucketBounds(i int) (lo, hi uint64) {
	if i < subBuckets {
		return uint64(i), uint64(i) + 1
	}
	if i >= Buckets-1 {
		i = Buckets - 1
	}
	group, sub := (i-subBuckets)/subBuckets, (i-subBuckets)%subBuckets
	shift := uint(group)
	lo = uint64(subBuckets+sub) << shift
	return lo, lo + 1<<shift
}

// BucketOf is the bucket a value of ns nanoseconds falls in, as the BPF side computes it.
func BucketOf(ns uint64) int {
	if ns < subBuckets {
		return int(ns)
	}
	msb := 63 - leadingZeros(ns)
	if msb >= maxExp {
		return Buckets - 1
	}
	return subBuckets + (msb-subBits)*subBuckets + int(ns>>uint(msb-subBits)) - subBuckets
}

func leadingZeros(v uint64) int {
	n := 0
	for v&(1<<63) == 0 {
		v <<= 1
		n++
	}
	return n
}

// Histogram is one metric's counts per bucket, summed over CPUs.
type Histogram struct {
	Counts [Buckets]uint64
}

// Total is the number of values recorded.
func (h *Histogram) Total() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Sub returns h minus an earlier read of the same histogram: what was recorded between.
func (h *Histogram) Sub(earlier *Histogram) Histogram {
	var d Histogram
	for i := range h.Counts {
		d.Counts[i] = h.Counts[i] - earlier.Counts[i]
	}
	return d
}

// Quantile estimates the q-quantile (0 < q <= 1), interpolating linearly inside the
// bucket, so its error is below one bucket's width (1.6%). Zero when empty.
func (h *Histogram) Quantile(q float64) time.Duration {
	total := h.Total()
	if total == 0 {
		return 0
	}
	rank := math.Max(1, math.Ceil(q*float64(total)))
	var seen uint64
	for i, c := range h.Counts {
		if c == 0 || float64(seen+c) < rank {
			seen += c
			continue
		}
		lo, hi := BucketBounds(i)
		frac := (rank - float64(seen) - 0.5) / float64(c)
		return time.Duration(float64(lo) + frac*float64(hi-lo))
	}
	lo, _ := BucketBounds(Buckets - 1)
	return time.Duration(lo)
}

// Mean is the mean of the bucket midpoints, weighted by their counts.
func (h *Histogram) Mean() time.Duration {
	var sum float64
	var n uint64
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		lo, hi := BucketBounds(i)
		sum += float64(c) * (float64(lo) + float64(hi-lo)/2)
		n += c
	}
	if n == 0 {
		return 0
	}
	return time.Duration(sum / float64(n))
}

// Convolve is the distribution of a + b for independent draws a from h and b from o: the
// two directions' forward times combined into one exchange's time in the proxy, where
// multiplexing leaves no way to pair them. Each pair of buckets weighs the product of their
// shares at the sum of their midpoints; the result is scaled to a total of about 2^30 so
// that long runs cannot overflow it, so its quantiles, not its total, are what it is for.
// Empty when either is.
func (h *Histogram) Convolve(o *Histogram) Histogram {
	type bin struct {
		mid   uint64
		share float64
	}
	nonzero := func(x *Histogram) []bin {
		total := float64(x.Total())
		var bs []bin
		for i, c := range x.Counts {
			if c > 0 {
				lo, hi := BucketBounds(i)
				bs = append(bs, bin{lo + (hi-lo)/2, float64(c) / total})
			}
		}
		return bs
	}
	var out Histogram
	bs := nonzero(o)
	for _, a := range nonzero(h) {
		for _, b := range bs {
			out.Counts[BucketOf(a.mid+b.mid)] += uint64(math.Round(a.share * b.share * (1 << 30)))
		}
	}
	return out
}

// Rescaled is h with its total brought to total, for showing a Convolve result as counts of
// exchanges. Counts are rounded on the cumulative sum, so the total is exact and every
// quantile moves by at most one count's rank; buckets with a share below one count vanish
// rather than each being raised to one, which would fatten the tail.
func (h *Histogram) Rescaled(total uint64) Histogram {
	var out Histogram
	t := h.Total()
	if t == 0 {
		return out
	}
	f := float64(total) / float64(t)
	var cum float64
	var given uint64
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		cum += float64(c) * f
		upTo := min(uint64(math.Round(cum)), total)
		out.Counts[i] = upTo - given
		given = upTo
	}
	return out
}

// HDR converts the histogram to an HDR histogram in nanoseconds (1 ns to about 34 s,
// three significant digits), each bucket recorded at its midpoint, so it merges with the
// load generator's histograms and across nodes.
func (h *Histogram) HDR() *hdrhistogram.Histogram {
	_, top := BucketBounds(Buckets - 1)
	out := hdrhistogram.New(1, int64(top), 3)
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		lo, hi := BucketBounds(i)
		// Cannot fail: every midpoint is inside the histogram's range.
		_ = out.RecordValues(int64(lo+(hi-lo)/2), int64(c))
	}
	return out
}

// Counters are the programs' event and pairing counts, summed over CPUs.
type Counters struct {
	// Events is the number of program runs that concerned a traced proxy or its sockets.
	Events uint64
	// Paired is the number of request/response exchanges recorded into Residency.
	Paired uint64
	// NoResponse counts answers written downstream with no upstream arrival seen.
	NoResponse uint64
	// LocalReply counts answers to requests the proxy never forwarded (its own replies).
	LocalReply uint64
	// UnpairedForward counts upstream writes with no downstream request waiting.
	UnpairedForward uint64
	// Stale counts exchanges with a leg above the stale limit, not recorded.
	Stale uint64
	// StateFull counts sockets whose state could not be stored.
	StateFull uint64
}

// Drops is every exchange seen but not recorded.
func (c Counters) Drops() uint64 {
	return c.NoResponse + c.UnpairedForward + c.Stale + c.StateFull
}

func (c *Counters) set(i int, v uint64) {
	switch i {
	case 0:
		c.Events = v
	case 1:
		c.Paired = v
	case 2:
		c.NoResponse = v
	case 3:
		c.LocalReply = v
	case 4:
		c.UnpairedForward = v
	case 5:
		c.Stale = v
	case 6:
		c.StateFull = v
	}
}

const numCounters = 7

// Snapshot is one read of every histogram and counter.
type Snapshot struct {
	Histograms [Metrics]Histogram
	Counters   Counters
}

// Sub returns what was recorded between an earlier snapshot and s.
func (s *Snapshot) Sub(earlier *Snapshot) Snapshot {
	var d Snapshot
	for m := range s.Histograms {
		d.Histograms[m] = s.Histograms[m].Sub(&earlier.Histograms[m])
	}
	a, b := s.Counters, earlier.Counters
	d.Counters = Counters{
		Events: a.Events - b.Events, Paired: a.Paired - b.Paired,
		NoResponse: a.NoResponse - b.NoResponse, LocalReply: a.LocalReply - b.LocalReply,
		UnpairedForward: a.UnpairedForward - b.UnpairedForward, Stale: a.Stale - b.Stale, StateFull: a.StateFull - b.StateFull,
	}
	return d
}

// ProgramStats is the kernel's run-time accounting of the attached programs.
type ProgramStats struct {
	// Runs and Runtime sum every attached program.
	Runs    uint64
	Runtime time.Duration
	// PerProgram is keyed by program name.
	PerProgram map[string]ProgramStat
}

// ProgramStat is one program's run count and total run time.
type ProgramStat struct {
	Runs    uint64
	Runtime time.Duration
}

// MeanRuntime is the mean run time per program run; zero if nothing ran or the kernel's
// run-time statistics could not be enabled.
func (s ProgramStats) MeanRuntime() time.Duration {
	if s.Runs == 0 {
		return 0
	}
	return s.Runtime / time.Duration(s.Runs)
}

// parseListening reads the local ports of LISTEN entries (state 0A) from the text of
// /proc/net/tcp or tcp6.
func parseListening(data []byte) []uint16 {
	var ports []uint16
	for i, line := range bytes.Split(data, []byte("\n")) {
		f := bytes.Fields(line)
		if i == 0 || len(f) < 4 || string(f[3]) != "0A" {
			continue
		}
		_, hexPort, ok := bytes.Cut(f[1], []byte(":"))
		if !ok {
			continue
		}
		if p, err := strconv.ParseUint(string(hexPort), 16, 16); err == nil {
			ports = append(ports, uint16(p))
		}
	}
	return ports
}
