package loadgen

import (
	"context"
	"math"
	"runtime"
	"time"
)

const (
	// spinWindow is the most the scheduler spins before an intended time: a sleep can wake
	// a few tens of microseconds late even with 1 ns timer slack. It spins only as long as
	// sleeps have lately overslept (plus spinMargin), because on a busy node every spun
	// microsecond is taken from the target and the workers.
	spinWindow = 50 * time.Microsecond
	spinMargin = 5 * time.Microsecond
	// maxSleep bounds one sleep so a cancellation is noticed within it.
	maxSleep = 5 * time.Millisecond
	// drainGrace is how long past the end requests that fell due before it may still be
	// sent: a generator briefly starved of CPU catches up instead of dropping them, and the
	// late sends lengthen the measured window (lowering the achieved rate) rather than vanish.
	drainGrace = time.Second
	// schedulerNice is the scheduler thread's nice value when the process may raise it.
	schedulerNice = -10
)

// schedule sends the intended send times t0 + i/rate (as offsets from start) to jobs, from
// one goroutine on its own OS thread. It sleeps with nanosleep and 1 ns timer slack rather
// than time.Sleep, whose wake-ups on an idle Go runtime can be a millisecond late, then
// spins for the last spinWindow. When every worker is busy the send blocks, and the times
// that fall due meanwhile are sent as soon as workers free up, still stamped with their
// intended times. It returns how many requests of the measured window were never sent
// (still unsent drainGrace after the end).
func schedule(ctx context.Context, rate float64, start time.Time, now func() int64, warmupNs, endNs int64, jobs chan<- int64) (missed uint64) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer tuneThread()()
	stopNs := endNs + int64(drainGrace)
	end := time.NewTimer(time.Until(start.Add(time.Duration(stopNs))))
	defer end.Stop()

	interval := 1e9 / rate
	// Requests i.. that fall inside [warmup, end), by the same arithmetic as the loop below.
	countMissed := func(i int64) uint64 {
		first := max(i, int64(math.Ceil(float64(warmupNs)/interval)))
		for first > 0 && int64(float64(first-1)*interval) >= warmupNs && first-1 >= i {
			first--
		}
		for int64(float64(first)*interval) < warmupNs {
			first++
		}
		last := int64(math.Ceil(float64(endNs) / interval)) // first index at or past the end
		for int64(float64(last)*interval) < endNs {
			last++
		}
		for last > 0 && int64(float64(last-1)*interval) >= endNs {
			last--
		}
		if last <= first {
			return 0
		}
		return uint64(last - first)
	}
	spin, oversleep := spinWindow, spinWindow
	for i := int64(0); ; i++ {
		t := int64(float64(i) * interval)
		if t >= endNs {
			return 0
		}
		for {
			if ctx.Err() != nil {
				return 0
			}
			n := now()
			if n >= stopNs {
				return countMissed(i)
			}
			wait := time.Duration(t - n)
			if wait <= 0 {
				break
			}
			if wait > spin {
				d := min(wait-spin, maxSleep)
				sleep(d)
				// A decaying maximum of recent oversleeps sets the next spin.
				over := time.Duration(now()-n) - d
				oversleep = max(over, oversleep-oversleep/64)
				spin = min(max(oversleep+spinMargin, spinMargin), spinWindow)
			}
		}
		select {
		case jobs <- t:
		default:
			select {
			case jobs <- t:
			case <-ctx.Done():
				return 0
			case <-end.C:
				return countMissed(i)
			}
		}
	}
}
