package residency

import (
	"testing"
	"time"
)

func TestBucketsCoverValuesContiguously(t *testing.T) {
	var prevHi uint64
	for i := range Buckets {
		lo, hi := BucketBounds(i)
		if lo != prevHi || hi <= lo {
			t.Fatalf("bucket %d = [%d, %d); previous ended at %d", i, lo, hi, prevHi)
		}
		if i >= subBuckets && float64(hi-lo)/float64(lo) > 1.0/subBuckets+1e-9 {
			t.Fatalf("bucket %d = [%d, %d) wider than 1/%d of its start", i, lo, hi, subBuckets)
		}
		for _, v := range []uint64{lo, hi - 1, lo + (hi-lo)/2} {
			if got := BucketOf(v); got != i {
				t.Fatalf("BucketOf(%d) = %d; want %d", v, got, i)
			}
		}
		prevHi = hi
	}
	if got := BucketOf(1 << 62); got != Buckets-1 {
		t.Fatalf("BucketOf(2^62) = %d; want the last bucket", got)
	}
}

func TestQuantileWithinOneBucket(t *testing.T) {
	var h Histogram
	// 1000 values spread uniformly over 100µs..1.1ms.
	for i := range 1000 {
		h.Counts[BucketOf(uint64(100_000+i*1000))]++
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 599 * time.Microsecond}, {0.9, 999 * time.Microsecond}, {0.01, 109 * time.Microsecond}} {
		got := h.Quantile(c.q)
		if d := got - c.want; d < -c.want/subBuckets || d > c.want/subBuckets {
			t.Errorf("Quantile(%v) = %v; want %v within 1/%d", c.q, got, c.want, subBuckets)
		}
	}
	hdr := h.HDR()
	if hdr.TotalCount() != 1000 {
		t.Fatalf("HDR total = %d", hdr.TotalCount())
	}
	if p50 := time.Duration(hdr.ValueAtQuantile(50)); p50 < 590*time.Microsecond || p50 > 610*time.Microsecond {
		t.Errorf("HDR p50 = %v", p50)
	}
	var empty Histogram
	if empty.Quantile(0.5) != 0 || empty.Mean() != 0 {
		t.Error("empty histogram has a quantile or a mean")
	}
	d := h.Sub(&empty)
	if d.Total() != 1000 {
		t.Errorf("Sub total = %d", d.Total())
	}
}

func TestParseListening(t *testing.T) {
	data := []byte(`  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2C4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 00000000:3AFE 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 3 1 0000000000000000 100 0 0 10 0
`)
	got := parseListening(data)
	if len(got) != 2 || got[0] != 8080 || got[1] != 15102 {
		t.Fatalf("parseListening = %v; want [8080 15102]", got)
	}
}

// TestConvolve: the sum of a uniform draw on [100, 200] µs and one on [1, 2] ms has a
// trapezoid density over [1.1, 2.2] ms whose 100 µs ramps each hold 5%: the median is
// 1.65 ms and the 1% and 99% points are sqrt(0.01·2·100·1000) ≈ 44.7 µs inside the ends
// (1.1447 and 2.1553 ms), give or take a bucket (1.6%).
func TestConvolve(t *testing.T) {
	var a, b Histogram
	for i := range 1000 {
		a.Counts[BucketOf(uint64(100_000+i*100))]++
		// Three times the samples: only the shapes may matter, not the counts.
		b.Counts[BucketOf(uint64(1_000_000+i*1000))] += 3
	}
	c := a.Convolve(&b)
	for _, q := range []struct {
		q      float64
		lo, hi time.Duration
	}{
		{0.5, 1625 * time.Microsecond, 1675 * time.Microsecond},
		{0.01, 1120 * time.Microsecond, 1170 * time.Microsecond},
		{0.99, 2130 * time.Microsecond, 2180 * time.Microsecond},
	} {
		if got := c.Quantile(q.q); got < q.lo || got > q.hi {
			t.Errorf("convolved q%v = %v; want within [%v, %v]", q.q, got, q.lo, q.hi)
		}
	}
	r := c.Rescaled(1000)
	if n := r.Total(); n != 1000 {
		t.Errorf("rescaled to 1000: total %d", n)
	}
	if got, want := r.Quantile(0.5), c.Quantile(0.5); (got - want).Abs() > want/subBuckets {
		t.Errorf("rescaled median %v; the convolution's is %v", got, want)
	}
	var empty Histogram
	if e := a.Convolve(&empty); e.Total() != 0 {
		t.Errorf("convolving with an empty histogram gave %d", e.Total())
	}
}
