package meshpods

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// DelayRecord is one request as the known-delay proxy logged it (see its package comment for
// the instants; all figures are durations measured by the proxy).
type DelayRecord struct {
	// Total is t_write − t_read: the proxy's view of the whole exchange, to the return of
	// its response write.
	Total time.Duration
	// Upstream is t_upstream_read − t_upstream_write: the upstream round trip inside Total.
	Upstream time.Duration
	// WriteStart (t_write_start − t_read) and UpstreamFromWriteStart (t_upstream_read −
	// t_upstream_write_start) take the writes at their call instead of their return; zero
	// when the proxy logged only the first two figures.
	WriteStart             time.Duration
	UpstreamFromWriteStart time.Duration
	// Fields is how many figures the line had (2 or 4).
	Fields int
}

// Residency is the time the request spent inside the proxy, bounded from above (Total −
// Upstream).
func (r DelayRecord) Residency() time.Duration { return r.Total - r.Upstream }

// ResidencyLow bounds the residency from below (WriteStart − UpstreamFromWriteStart); it
// equals Residency for a two-figure line.
func (r DelayRecord) ResidencyLow() time.Duration {
	if r.Fields < 4 {
		return r.Residency()
	}
	return r.WriteStart - r.UpstreamFromWriteStart
}

// DelayLog reads and parses the known-delay proxy's per-request log from the sidecar of a pod
// deployed with ProxyDelay. A partly written last line is left out.
func (p *Pod) DelayLog() ([]DelayRecord, error) {
	if p.DelayLogFile == "" {
		return nil, fmt.Errorf("meshpods: pod %s has no known-delay proxy", p.Name)
	}
	b, err := p.ReadSidecarFile(p.DelayLogFile)
	if err != nil {
		return nil, err
	}
	return ParseDelayLog(string(b))
}

// ParseDelayLog parses the known-delay proxy's lines of two or four nanosecond figures.
func ParseDelayLog(s string) ([]DelayRecord, error) {
	var out []DelayRecord
	lines := strings.Split(s, "\n")
	// The text after the last newline is a line still being written.
	for i, line := range lines[:len(lines)-1] {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 && len(f) != 4 {
			return nil, fmt.Errorf("meshpods: delay log line %d: %d fields: %q", i+1, len(f), line)
		}
		var d [4]time.Duration
		for j, x := range f {
			v, err := strconv.ParseInt(x, 10, 64)
			if err != nil || v < 0 {
				return nil, fmt.Errorf("meshpods: delay log line %d: %q", i+1, line)
			}
			d[j] = time.Duration(v)
		}
		r := DelayRecord{Total: d[0], Upstream: d[1], WriteStart: d[2], UpstreamFromWriteStart: d[3], Fields: len(f)}
		if r.Upstream > r.Total || r.UpstreamFromWriteStart > r.WriteStart {
			return nil, fmt.Errorf("meshpods: delay log line %d: upstream time exceeds total: %q", i+1, line)
		}
		out = append(out, r)
	}
	return out, nil
}
