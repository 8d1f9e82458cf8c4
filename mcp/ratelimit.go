package mcp

import (
	"container/list"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Limit is one token bucket: Rate calls per second on average, Burst at
// once after a pause.
type Limit struct {
	Rate  float64 // tokens added per second; 0: no bucket
	Burst int     // bucket size; at least 1 when Rate is set
}

func (l Limit) set() bool { return l.Rate > 0 }

// RateLimits bounds the tools/call requests each principal sends through
// this node (the node that takes the request, before forwarding). Limits
// are per node: a client spreading its calls over N nodes may make up to
// N times as many.
type RateLimits struct {
	// Principal is every principal's own bucket, over all tools.
	Principal Limit
	// Tools are buckets per principal and tool (by cluster name), taken
	// besides Principal's.
	Tools map[string]Limit
	// MaxBuckets bounds the buckets kept (default 10000). Idle buckets
	// that have filled up again are dropped first (a full bucket is the
	// same as a new one); past the bound the least recently used goes.
	MaxBuckets int
}

// DefaultMaxBuckets is RateLimits.MaxBuckets when unset.
const DefaultMaxBuckets = 10000

// Validate reports the first problem of the limits.
func (rl *RateLimits) Validate() error {
	check := func(where string, l Limit) error {
		switch {
		case math.IsNaN(l.Rate) || math.IsInf(l.Rate, 0) || l.Rate < 0:
			return fmt.Errorf("%s: rate must be a positive number of calls", where)
		case l.Rate == 0 && l.Burst != 0:
			return fmt.Errorf("%s: burst %d given without a rate", where, l.Burst)
		case l.Rate > 0 && l.Burst < 1:
			return fmt.Errorf("%s: burst must be at least 1, got %d", where, l.Burst)
		}
		return nil
	}
	if err := check("rate_limits.principal", rl.Principal); err != nil {
		return err
	}
	for tool, l := range rl.Tools {
		if tool == "" {
			return errors.New("rate_limits.tools: a tool name is empty")
		}
		if err := check("rate_limits.tools."+tool, l); err != nil {
			return err
		}
		if !l.set() {
			return fmt.Errorf("rate_limits.tools.%s: needs a rate", tool)
		}
	}
	if rl.MaxBuckets < 0 || rl.MaxBuckets == 1 {
		return fmt.Errorf("rate_limits.max_buckets: want 0 (the default, %d) or at least 2, got %d", DefaultMaxBuckets, rl.MaxBuckets)
	}
	return nil
}

// bucket is one principal's (or principal and tool's) tokens.
type bucket struct {
	key    string
	limit  Limit
	tokens float64
	last   time.Time // when tokens was last brought up to date
	elem   *list.Element
}

// refill brings the tokens up to now.
func (b *bucket) refill(now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(float64(b.limit.Burst), b.tokens+el*b.limit.Rate)
	}
	b.last = now
}

// full reports whether the bucket has refilled by now, so forgetting it
// changes nothing.
func (b *bucket) full(now time.Time) bool {
	need := (float64(b.limit.Burst) - b.tokens) / b.limit.Rate
	return now.Sub(b.last).Seconds() >= need
}

// wait is how long until the bucket holds one token.
func (b *bucket) wait() time.Duration {
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) / b.limit.Rate * float64(time.Second))
}

// rateLimiter keeps the token buckets of one node, bounded in number:
// least recently used first in lru's back.
type rateLimiter struct {
	cfg RateLimits
	now func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
	lru     *list.List // *bucket, most recently used at the front
}

// newRateLimiter returns nil when rl sets no limit.
func newRateLimiter(rl *RateLimits, now func() time.Time) (*rateLimiter, error) {
	if rl == nil || (!rl.Principal.set() && len(rl.Tools) == 0) {
		return nil, nil
	}
	if err := rl.Validate(); err != nil {
		return nil, err
	}
	cfg := *rl
	if cfg.MaxBuckets == 0 {
		cfg.MaxBuckets = DefaultMaxBuckets
	}
	if now == nil {
		now = time.Now
	}
	return &rateLimiter{cfg: cfg, now: now, buckets: map[string]*bucket{}, lru: list.New()}, nil
}

// allow takes a token for a call of tool by principal from each bucket
// that applies, or none when one is empty; then it returns how long to
// wait before the call can pass.
func (l *rateLimiter) allow(principal, tool string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	// Make room first: a bucket fetched below must not be dropped by the
	// next one's arrival.
	l.evict(now, 2)
	var bs [2]*bucket
	n := 0
	// Length-prefixed keys: no principal and tool pair collides with another.
	if l.cfg.Principal.set() {
		bs[n] = l.get("p:"+strconv.Itoa(len(principal))+":"+principal, l.cfg.Principal, now)
		n++
	}
	if tl, ok := l.cfg.Tools[tool]; ok && tl.set() {
		bs[n] = l.get("t:"+strconv.Itoa(len(principal))+":"+principal+tool, tl, now)
		n++
	}
	var wait time.Duration
	for _, b := range bs[:n] {
		wait = max(wait, b.wait())
	}
	if wait > 0 {
		return false, wait
	}
	for _, b := range bs[:n] {
		b.tokens--
	}
	return true, 0
}

// get returns the bucket of key, brought up to now and marked used.
func (l *rateLimiter) get(key string, lim Limit, now time.Time) *bucket {
	if b, ok := l.buckets[key]; ok {
		b.refill(now)
		l.lru.MoveToFront(b.elem)
		return b
	}
	b := &bucket{key: key, limit: lim, tokens: float64(lim.Burst), last: now}
	b.elem = l.lru.PushFront(b)
	l.buckets[key] = b
	return b
}

// evict drops the least recently used buckets while they have filled up
// again (forgetting them changes nothing), and while fewer than room
// buckets could be added within the bound.
func (l *rateLimiter) evict(now time.Time, room int) {
	for e := l.lru.Back(); e != nil; e = l.lru.Back() {
		b := e.Value.(*bucket)
		if len(l.buckets)+room <= l.cfg.MaxBuckets && !b.full(now) {
			return
		}
		l.lru.Remove(e)
		delete(l.buckets, b.key)
	}
}

// size is how many buckets are kept.
func (l *rateLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// retryAfterSeconds rounds a wait up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

// writeRateLimited answers 429 with Retry-After and a JSON-RPC error for
// request id.
func writeRateLimited(w http.ResponseWriter, id json.RawMessage, principal, tool string, wait time.Duration) {
	secs := retryAfterSeconds(wait)
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	who := "anonymous callers"
	if principal != "" {
		who = strconv.Quote(principal)
	}
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "error": map[string]any{
		"code":    busyCode,
		"message": fmt.Sprintf("rate limit: %s may not call %q again on this node for %ds", who, tool, secs),
		"data":    map[string]any{"reason": "rate_limit", "retryAfter": secs},
	}})
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusTooManyRequests)
	w.Write(append(b, '\n'))
}
