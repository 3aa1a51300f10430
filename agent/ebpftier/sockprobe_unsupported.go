//go:build !(linux && (386 || amd64 || arm64))

package ebpftier

import (
	"errors"
	"runtime"
)

// The probe objects are compiled for Linux on x86 and arm64 only; elsewhere every tier is
// unavailable and the agent runs without eBPF.
var errUnsupported = errors.New("eBPF probes are not built for " + runtime.GOOS + "/" + runtime.GOARCH)

// SendCounter is one tier's probe program, attached, counting TCP sends on the node.
type SendCounter struct{ tier Tier }

// AttachSendCounter always fails on this platform.
func AttachSendCounter(tier Tier) (*SendCounter, error) { return nil, errUnsupported }

// Tier is the tier this counter's program was written for.
func (c *SendCounter) Tier() Tier { return c.tier }

// SendCount is the total over all CPUs since the program was attached.
type SendCount struct{ Calls, Bytes uint64 }

// Read always fails on this platform.
func (c *SendCounter) Read() (SendCount, error) { return SendCount{}, errUnsupported }

// Close does nothing on this platform.
func (c *SendCounter) Close() error { return nil }
