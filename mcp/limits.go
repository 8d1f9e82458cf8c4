package mcp

import (
	"context"
	"errors"
	"sync/atomic"
)

// limiter admits at most cap(slots) requests at once and lets at most
// cap(queue) more wait for a slot; anything beyond is refused at once.
type limiter struct {
	slots   chan struct{}
	queue   chan struct{}
	waiting atomic.Int64
	free    func() // gives a slot back (one func, not a method value a call)
}

func newLimiter(concurrent, queue int) *limiter {
	l := &limiter{slots: make(chan struct{}, concurrent), queue: make(chan struct{}, queue)}
	l.free = l.release
	return l
}

// errNoSlot: every slot is taken (tryAcquire does not wait).
var errNoSlot = errors.New("no free slot")

// tryAcquire takes a free slot without waiting.
func (l *limiter) tryAcquire() (func(), error) {
	select {
	case l.slots <- struct{}{}:
		return l.free, nil
	default:
		return nil, errNoSlot
	}
}

// acquire takes a slot, waiting in the queue (until ctx ends) when all are
// taken, and returns the function that gives it back. A full queue is
// ErrBusy at once.
func (l *limiter) acquire(ctx context.Context) (func(), error) {
	if free, err := l.tryAcquire(); err == nil {
		return free, nil
	}
	select {
	case l.queue <- struct{}{}:
	default:
		return nil, ErrBusy
	}
	l.waiting.Add(1)
	defer func() {
		l.waiting.Add(-1)
		<-l.queue
	}()
	select {
	case l.slots <- struct{}{}:
		return l.free, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *limiter) release() { <-l.slots }

// inUse is how many slots are taken; queued is how many wait.
func (l *limiter) inUse() int  { return len(l.slots) }
func (l *limiter) queued() int { return int(l.waiting.Load()) }
