package abtest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func loopbackServer(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return strings.TrimPrefix(s.URL, "http://")
}

// TestRunOnLoopback exercises the engine without namespaces: "through" is a server that
// holds each request 2 ms, "around" one that answers at once.
func TestRunOnLoopback(t *testing.T) {
	slow := loopbackServer(t, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(2 * time.Millisecond)
		w.Write([]byte("ok"))
	})
	fast := loopbackServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	r, err := Run(context.Background(), Config{
		Through: Through(slow), Around: Through(fast),
		Rate: 200, Duration: time.Second, Warmup: 200 * time.Millisecond, Seed: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := r.Through.Requests + r.Around.Requests
	if got < 190 || got > 210 {
		t.Errorf("%d requests measured in 1 s at 200 req/s", got)
	}
	if sent := r.Through.Sent + r.Around.Sent; sent < 230 || sent > 250 {
		t.Errorf("%d requests sent in 1.2 s at 200 req/s", sent)
	}
	if r.Through.Errors+r.Around.Errors != 0 {
		t.Errorf("errors: %s / %s", r.Through.LastError, r.Around.LastError)
	}
	d, ok := r.Delta(0.5)
	if !ok || d.Value < 2*time.Millisecond || d.CILow <= 0 || d.Value > 20*time.Millisecond {
		t.Errorf("Δp50 %+v, want at least the 2 ms the through server sleeps", d)
	}
	if h := r.Through.Service; h.TotalCount() != int64(r.Through.Requests) || h.ValueAtQuantile(50) < 2000 {
		t.Errorf("through histogram: %d values, p50 %d µs", h.TotalCount(), h.ValueAtQuantile(50))
	}
	through, around := r.Histograms()
	if through == nil || around == nil || len(through.Counts) == 0 {
		t.Error("no histograms for the API")
	}
	if al := r.AddedLatency(); al.Method != "ab" || len(al.Deltas) != 3 {
		t.Errorf("AddedLatency %v", al)
	}
}

func TestRunStopsAtOnce(t *testing.T) {
	srv := loopbackServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(600*time.Millisecond, cancel)
	start := time.Now()
	r, err := Run(ctx, Config{Through: Through(srv), Around: Through(srv), Rate: 200, Duration: time.Minute, Warmup: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a cancelled run took %v", took)
	}
	if !r.Stopped || r.Through.Requests == 0 {
		t.Errorf("stopped %v with %d requests", r.Stopped, r.Through.Requests)
	}
}

func TestFailingAppIsAnError(t *testing.T) {
	srv := loopbackServer(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusServiceUnavailable) })
	ok := loopbackServer(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	r, err := Run(context.Background(), Config{Through: Through(srv), Around: Through(ok), Rate: 100, Duration: 300 * time.Millisecond, Warmup: 50 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("got %v, want an error naming the 503", err)
	}
	if r == nil || r.Through.Errors == 0 {
		t.Fatalf("result %+v", r)
	}
}
