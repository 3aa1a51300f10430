//go:build !linux

package loadgen

import (
	"context"
	"sync/atomic"
)

// h1Loops are Linux's epoll event loops; elsewhere closed-loop HTTP/1.1 keeps a goroutine
// per connection (newH1Loops returns none).
type h1Loops struct{}

func newH1Loops(context.Context, *Options, []*worker, []*shard, func() int64, int64, int64, *atomic.Bool) (*h1Loops, error) {
	return nil, nil
}

func (*h1Loops) run()   {}
func (*h1Loops) wake()  {}
func (*h1Loops) close() {}
