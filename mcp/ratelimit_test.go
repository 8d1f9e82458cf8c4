package mcp

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func mustLimiter(t *testing.T, rl *RateLimits, clock *fakeClock) *rateLimiter {
	t.Helper()
	l, err := newRateLimiter(rl, clock.now)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestRateLimitBucket(t *testing.T) {
	clock := newFakeClock()
	l := mustLimiter(t, &RateLimits{Principal: Limit{Rate: 1, Burst: 2}}, clock)
	for i := range 2 {
		if ok, _ := l.allow("alice", "echo"); !ok {
			t.Fatalf("call %d within the burst refused", i+1)
		}
	}
	ok, wait := l.allow("alice", "echo")
	if ok || wait != time.Second {
		t.Fatalf("third call: %v, wait %s; want refused for 1s", ok, wait)
	}
	if ok, _ := l.allow("bob", "echo"); !ok {
		t.Fatal("bob refused for alice's calls")
	}
	clock.advance(400 * time.Millisecond)
	ok, wait = l.allow("alice", "echo")
	if ok || wait != 600*time.Millisecond || retryAfterSeconds(wait) != 1 {
		t.Fatalf("after 400ms: %v, wait %s", ok, wait)
	}
	clock.advance(600 * time.Millisecond)
	if ok, _ := l.allow("alice", "echo"); !ok {
		t.Fatal("a token refilled after 1s, still refused")
	}
	// A long pause refills to the burst, not beyond.
	clock.advance(time.Hour)
	for i := range 2 {
		if ok, _ := l.allow("alice", "echo"); !ok {
			t.Fatalf("after a pause, call %d refused", i+1)
		}
	}
	if ok, _ := l.allow("alice", "echo"); ok {
		t.Fatal("a pause filled the bucket beyond its burst")
	}
}

func TestRateLimitPerTool(t *testing.T) {
	clock := newFakeClock()
	l := mustLimiter(t, &RateLimits{
		Principal: Limit{Rate: 1, Burst: 2},
		Tools:     map[string]Limit{"slow": {Rate: 1.0 / 60, Burst: 1}},
	}, clock)
	if ok, _ := l.allow("alice", "slow"); !ok {
		t.Fatal("first slow call refused")
	}
	ok, wait := l.allow("alice", "slow")
	if ok || retryAfterSeconds(wait) != 60 {
		t.Fatalf("second slow call: %v, wait %s; want refused for 60s", ok, wait)
	}
	// The refused call took no token from the principal's bucket.
	if ok, _ := l.allow("alice", "echo"); !ok {
		t.Fatal("echo refused: a refused call used the principal's token")
	}
	if ok, _ := l.allow("alice", "echo"); ok {
		t.Fatal("the principal's burst of 2 allowed a third call")
	}
	if ok, _ := l.allow("bob", "slow"); !ok {
		t.Fatal("bob's slow call refused for alice's")
	}
	// No limit at all without rules.
	if l, err := newRateLimiter(&RateLimits{}, nil); l != nil || err != nil {
		t.Fatalf("empty limits: %v %v", l, err)
	}
	if ok, _ := (*rateLimiter)(nil).allow("x", "y"); !ok {
		t.Fatal("nil limiter refused")
	}
	// Only the tool's bucket when only tools are limited.
	l = mustLimiter(t, &RateLimits{Tools: map[string]Limit{"slow": {Rate: 1, Burst: 1}}}, clock)
	for range 100 {
		if ok, _ := l.allow("alice", "echo"); !ok {
			t.Fatal("an unlimited tool refused")
		}
	}
}

// TestRateLimitBounded: random principals cannot grow the buckets past
// the bound, and idle buckets that refilled are dropped.
func TestRateLimitBounded(t *testing.T) {
	clock := newFakeClock()
	l := mustLimiter(t, &RateLimits{Principal: Limit{Rate: 10, Burst: 10}, Tools: map[string]Limit{"echo": {Rate: 1, Burst: 1}}, MaxBuckets: 100}, clock)
	for i := range 10_000 {
		l.allow(fmt.Sprintf("p%d", i), "echo")
		if n := l.size(); n > 100 {
			t.Fatalf("after %d principals: %d buckets", i+1, n)
		}
	}
	// A busy principal stays limited while the others churn, as long as
	// it is among the recently used.
	l.allow("busy", "echo")
	if ok, _ := l.allow("busy", "echo"); ok {
		t.Fatal("busy's second echo allowed")
	}
	// Idle and refilled: dropped as new buckets come.
	clock.advance(2 * time.Second)
	l.allow("newcomer", "other")
	if n := l.size(); n != 1 {
		t.Fatalf("after the others refilled: %d buckets, want 1", n)
	}
}

func TestRateLimitsValidate(t *testing.T) {
	for _, c := range []struct {
		rl   RateLimits
		want string
	}{
		{RateLimits{Principal: Limit{Rate: -1, Burst: 1}}, "rate_limits.principal: rate must be a positive"},
		{RateLimits{Principal: Limit{Rate: 1}}, "rate_limits.principal: burst must be at least 1"},
		{RateLimits{Principal: Limit{Burst: 3}}, "burst 3 given without a rate"},
		{RateLimits{Tools: map[string]Limit{"": {Rate: 1, Burst: 1}}}, "a tool name is empty"},
		{RateLimits{Tools: map[string]Limit{"echo": {}}}, "rate_limits.tools.echo: needs a rate"},
		{RateLimits{Principal: Limit{Rate: 1, Burst: 1}, MaxBuckets: -1}, "max_buckets"},
	} {
		err := c.rl.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.rl, err, c.want)
		}
	}
	ok := RateLimits{Principal: Limit{Rate: 0.5, Burst: 1}, Tools: map[string]Limit{"echo": {Rate: 100, Burst: 200}}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int{
		0: 1, time.Millisecond: 1, time.Second: 1, time.Second + time.Millisecond: 2, 59500 * time.Millisecond: 60,
	} {
		if got := retryAfterSeconds(d); got != want {
			t.Errorf("%s: %d, want %d", d, got, want)
		}
	}
}
