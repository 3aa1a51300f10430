//go:build race

package loadgen

// The race detector slows every goroutine several times over; timing bounds widen with it.
const raceEnabled = true
