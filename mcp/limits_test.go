package mcp

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLimiterQueuesThenRefuses(t *testing.T) {
	l := newLimiter(2, 1)
	ctx := context.Background()
	r1, _ := l.acquire(ctx)
	r2, _ := l.acquire(ctx)
	got := make(chan error, 1)
	go func() {
		release, err := l.acquire(ctx) // queued
		if err == nil {
			release()
		}
		got <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for l.queued() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("third request never queued")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := l.acquire(ctx); !errors.Is(err, ErrBusy) {
		t.Fatalf("fourth request with a full queue: %v, want ErrBusy", err)
	}
	r1()
	if err := <-got; err != nil {
		t.Fatalf("queued request: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	r3, _ := l.acquire(ctx)
	if _, err := l.acquire(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued past its deadline: %v", err)
	}
	r2()
	r3()
	if l.inUse() != 0 || l.queued() != 0 {
		t.Fatalf("leaked: %d in use, %d queued", l.inUse(), l.queued())
	}
}
