package loadgen

import (
	"time"

	"golang.org/x/sys/unix"
)

// tuneThread gives the scheduler's (locked) thread 1 ns timer slack and, when the process
// may raise it, a higher priority: ahead of other threads for the CPU when the node is
// busy, since a scheduler that waits for a time slice sends late. It returns the undo.
func tuneThread() (restore func()) {
	var undo []func()
	if old, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0); err == nil {
		if unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0) == nil {
			undo = append(undo, func() { _ = unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(old), 0, 0, 0) })
		}
	}
	tid := unix.Gettid()
	if old, err := unix.Getpriority(unix.PRIO_PROCESS, tid); err == nil {
		if unix.Setpriority(unix.PRIO_PROCESS, tid, schedulerNice) == nil {
			// getpriority(2) returns 20 − nice.
			undo = append(undo, func() { _ = unix.Setpriority(unix.PRIO_PROCESS, tid, 20-old) })
		}
	}
	return func() {
		for _, u := range undo {
			u()
		}
	}
}

// sleep is nanosleep(2): with the thread's 1 ns slack it wakes far closer to d than
// time.Sleep does on an idle Go runtime.
func sleep(d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	_ = unix.Nanosleep(&ts, nil)
}
