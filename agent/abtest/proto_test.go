package abtest

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
)

func TestAddedLatencyProto(t *testing.T) {
	r := &Result{Deltas: []Delta{{Quantile: 0.5, Value: 90 * time.Microsecond, CILow: 80 * time.Microsecond, CIHigh: 100 * time.Microsecond}}}
	al := r.AddedLatency()
	if al.Method != "ab" || len(al.Deltas) != 1 {
		t.Fatalf("got %v", al)
	}
	q := al.Deltas[0]
	if q.Quantile != 0.5 || !proto(q.Value, 90*time.Microsecond) || !proto(q.CiLow, 80*time.Microsecond) || !proto(q.CiHigh, 100*time.Microsecond) {
		t.Fatalf("got %v", q)
	}
}

func proto(d *durationpb.Duration, want time.Duration) bool { return d.AsDuration() == want }

func TestConfigRejectsAbuse(t *testing.T) {
	ep := Through("127.0.0.1:1")
	for name, c := range map[string]Config{
		"rate":        {Through: ep, Around: ep, Rate: MaxRate + 1},
		"negative":    {Through: ep, Around: ep, Rate: -1},
		"duration":    {Through: ep, Around: ep, Duration: MaxDuration},
		"connections": {Through: ep, Around: ep, Connections: MaxConnections + 1},
		"quantile":    {Through: ep, Around: ep, Quantiles: []float64{1}},
		"path":        {Through: ep, Around: ep, Path: "/\r\nX: y"},
		"no around":   {Through: ep},
	} {
		if _, err := Run(context.Background(), c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRefusedPortIsAClearError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	_, err = Run(context.Background(), Config{Through: Through(addr), Around: Through(addr), Duration: time.Second})
	if err == nil || !strings.Contains(err.Error(), "through the sidecar") || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("got %v, want a refused through path", err)
	}
}
