//go:build !linux

package loadgen

import "time"

// The load generator runs in the agent, on Linux; elsewhere the package only has to build,
// so that clients can validate a load with the agent's own rules.

func tuneThread() (restore func()) { return func() {} }

func sleep(d time.Duration) { time.Sleep(d) }
