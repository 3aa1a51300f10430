package usage

import (
	"errors"
	"time"
)

// NodeSample is one read of node-wide CPU and memory.
type NodeSample struct {
	// Cores is the number of per-CPU lines in /proc/stat: the CPUs online now.
	Cores int
	// Busy is cumulative non-idle CPU time over all CPUs: user+nice+system+irq+softirq (guest
	// time is already inside user). iowait is idle time and steal was never ours.
	Busy time.Duration
	// MemTotal and MemUsed are bytes; used is total − MemAvailable, the share the kernel could
	// not hand out without swapping or dropping someone's working set.
	MemTotal uint64
	MemUsed  uint64
	// At is when /proc/stat was read (monotonic).
	At time.Time
}

// ReadNode samples /proc/stat and /proc/meminfo.
func (r *ProcReader) ReadNode() (NodeSample, error) {
	st, at, err := bracket(r.fs.Stat)
	if err != nil {
		return NodeSample{}, err
	}
	mi, err := r.fs.Meminfo()
	if err != nil {
		return NodeSample{}, err
	}
	if mi.MemTotalBytes == nil || mi.MemAvailableBytes == nil {
		return NodeSample{}, errors.New("meminfo: no MemTotal or MemAvailable")
	}
	c := st.CPUTotal
	// procfs reports the tick counters as seconds already divided by USER_HZ.
	busy := c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ
	n := NodeSample{
		Cores:    len(st.CPU),
		Busy:     time.Duration(busy * float64(time.Second)),
		MemTotal: *mi.MemTotalBytes,
		At:       at,
	}
	if avail := *mi.MemAvailableBytes; avail < n.MemTotal {
		n.MemUsed = n.MemTotal - avail
	}
	return n, nil
}
