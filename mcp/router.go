package mcp

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/membership"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// router runs every tools/call of this node's MCP clients: here when this
// node runs the tool's provider, else on a holder chosen by load.
type router struct {
	s *Server

	mu       sync.Mutex
	reported map[string]time.Time // holder → when this node last reported it unreachable
	pending  map[string]int       // holder → calls this node has outstanding there
}

// outstanding adds delta to the calls this node has running at holder id.
func (r *router) outstanding(id string, delta int) {
	r.mu.Lock()
	if r.pending == nil {
		r.pending = map[string]int{}
	}
	r.pending[id] += delta
	if r.pending[id] <= 0 {
		delete(r.pending, id)
	}
	r.mu.Unlock()
}

// slowHolder is how long a forwarded call may run before the holder is
// reported for a liveness check.
const slowHolder = time.Second

// reportInterval limits how often this node reports one holder unreachable.
const reportInterval = 250 * time.Millisecond

// reportUnreachable tells the leader about a holder that refused a
// connection, at most once per reportInterval per holder.
func (r *router) reportUnreachable(id string) {
	now := time.Now()
	r.mu.Lock()
	due := now.Sub(r.reported[id]) >= reportInterval
	if due {
		if r.reported == nil {
			r.reported = map[string]time.Time{}
		}
		r.reported[id] = now
	}
	r.mu.Unlock()
	if due {
		r.s.cfg.Cluster.ReportUnreachable(id)
	}
}

// holderWait is how often a call with no reachable holder looks again
// (a holder may be reassigned while the call waits, within its deadline).
const holderWait = 50 * time.Millisecond

// handle is the mcp-go handler of every catalog tool.
func (r *router) handle(ctx context.Context, req mcplib.CallToolRequest) (res *mcplib.CallToolResult, err error) {
	name := req.Params.Name
	timeout := r.s.timeout(name)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	trace := traceFrom(ctx)
	if trace == nil {
		trace = &callTrace{}
		ctx = withTrace(ctx, trace)
	}
	setRoute(ctx, "local", r.s.node)
	defer func() {
		failed := err != nil || (res != nil && res.IsError)
		trace.end(failed, err)
		r.s.cfg.Observer.Call(name, trace.route(), time.Since(start), failed)
		r.s.cfg.Observer.Request(string(mcplib.MethodToolsCall), name, failed)
	}()
	if req.Params.Meta != nil && req.Params.Meta.ProgressToken != nil {
		ctx = withProgress(ctx, clientProgress(ctx, req.Params.Meta.ProgressToken))
	}
	ttl := r.s.cacheTTL(req.Params.Name)
	var key string
	if ttl > 0 {
		var err error
		if key, err = resultKey(req.Params.Name, r.s.cachePrincipal(ctx, name), req.Params.Arguments); err != nil {
			return nil, err
		}
		if res, ok := r.s.cachedResult(ctx, key); ok {
			setRoute(ctx, "cache", "")
			return res, nil
		}
	}
	res, err = r.route(ctx, req.Params)
	if err == nil && ttl > 0 && res != nil && !res.IsError {
		r.s.storeResult(ctx, key, res, ttl)
	}
	// The holder's copy of the deadline may fire a moment before ours.
	if err != nil && (ctx.Err() == context.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded)) {
		return nil, fmt.Errorf("tool %q timed out after %s: %w", name, timeout, err)
	}
	return res, err
}

// clientProgress sends progress to this node's MCP client.
func clientProgress(ctx context.Context, token mcplib.ProgressToken) ProgressFunc {
	srv := server.ServerFromContext(ctx)
	return func(progress, total float64, message string) {
		if srv == nil {
			return
		}
		params := map[string]any{"progressToken": token, "progress": progress}
		if total > 0 {
			params["total"] = total
		}
		if message != "" {
			params["message"] = message
		}
		_ = srv.SendNotificationToClient(ctx, "notifications/progress", params)
	}
}

// route runs the call here or on a holder. A holder that cannot be reached
// is skipped at once; one that may have run the call is retried elsewhere
// only when the tool is read-only or idempotent. With no holder left, the
// call waits for the leader to reassign, until its deadline.
func (r *router) route(ctx context.Context, params mcplib.CallToolParams) (*mcplib.CallToolResult, error) {
	s := r.s
	provider, _, ok := s.cfg.Cluster.FSM().ToolProvider(params.Name)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownTool, params.Name)
	}
	if s.assigned(provider) {
		setRoute(ctx, "local", s.node)
		res, err := s.runLocal(ctx, params)
		if !errors.Is(err, ErrNotHolder) {
			return res, err
		}
	}
	rep, _ := s.repeatable.Load(params.Name)
	repeatable, _ := rep.(bool)
	// skip: holders that could not take the call, or failed it mid-call
	// when it is safe to repeat, until the next wait. A call that is not
	// safe to repeat is never sent twice: its mid-call failure is returned.
	skip := map[string]bool{}
	var lastErr error
	for {
		candidates := r.holders(provider, skip)
		if len(candidates) == 0 {
			if lastErr == nil {
				lastErr = fmt.Errorf("%w for provider %q of tool %q", ErrNoHolder, provider, params.Name)
			}
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
			case <-time.After(holderWait):
			}
			clear(skip)
			if s.assigned(provider) {
				setRoute(ctx, "local", s.node)
				res, err := s.runLocal(ctx, params)
				if !errors.Is(err, ErrNotHolder) {
					return res, err
				}
			}
			continue
		}
		m := candidates[0]
		setRoute(ctx, "forwarded", m.ID)
		r.outstanding(m.ID, 1)
		res, err := r.attempt(ctx, m, provider, params, repeatable)
		r.outstanding(m.ID, -1)
		if err == nil {
			return res, nil
		}
		lastErr = err
		var se *sendError
		if errors.Is(err, context.DeadlineExceeded) {
			// The holder took the call and never answered: perhaps paused
			// or wedged. The leader checks, and moves its providers if so.
			r.reportUnreachable(m.ID)
		}
		switch {
		case ctx.Err() != nil:
			return nil, err
		case errors.As(err, &se) && !se.sent:
			skip[m.ID] = true
			s.logger.DebugContext(ctx, "holder could not take the call, trying another", "holder", m.ID, "tool", params.Name, "error", err)
			if !errors.Is(err, ErrNotHolder) && !errors.Is(err, ErrBusy) {
				r.reportUnreachable(m.ID)
			}
		case errors.As(err, &se) && repeatable:
			// The connection broke with the call inside: the holder may have
			// died. The leader checks, and moves its providers if it refuses
			// connections; the call is safe to repeat, on another holder or
			// on this one once it answers again (it may restart before
			// gossip notices it was gone, and stay the holder).
			skip[m.ID] = true
			r.reportUnreachable(m.ID)
			s.logger.DebugContext(ctx, "holder failed mid-call, repeating (tool is safe to repeat)", "holder", m.ID, "tool", params.Name, "error", err)
		default:
			return nil, err
		}
	}
}

// attempt forwards the call to holder m. If the holder takes long it may be
// paused or wedged: it is reported so the leader checks it (a live one
// answers its ping and nothing changes); and a call that is safe to repeat
// is abandoned, to go elsewhere, once the leader moves the provider away.
func (r *router) attempt(ctx context.Context, m membership.Member, provider string, params mcplib.CallToolParams, repeatable bool) (*mcplib.CallToolResult, error) {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	slow := time.AfterFunc(slowHolder, func() {
		r.reportUnreachable(m.ID)
		if !repeatable {
			return
		}
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if a, ok := r.s.cfg.Cluster.FSM().Assignment(provider); ok && !containsString(a.Holders, m.ID) {
					cancel()
					return
				}
			}
		}
	})
	var span trace.Span
	if trace.SpanFromContext(actx).IsRecording() { // no attributes built when not traced
		actx, span = startCallSpan(actx, params.Name, append(serverAttrs(m.RPCAddr),
			attribute.String(attrHolder, m.ID), attribute.String(attrTransport, "tcp"), attribute.String(attrProtoName, "http"))...)
	}
	res, err := r.s.fwd.call(actx, m.RPCAddr, params)
	endCallSpan(span, res, err)
	close(done)
	slow.Stop()
	return res, err
}

// holders returns the provider's live holders other than this node, minus
// skip, best first: the less loaded of two random picks leads
// (power of two choices), the rest follow.
func (r *router) holders(provider string, skip map[string]bool) []membership.Member {
	s := r.s
	a, ok := s.cfg.Cluster.FSM().Assignment(provider)
	if !ok {
		return nil
	}
	live := map[string]membership.Member{}
	for _, m := range s.cfg.Cluster.Members() {
		if m.State == membership.StateAlive && m.Status != membership.StatusStopping && m.RPCAddr != "" {
			live[m.ID] = m
		}
	}
	var out []membership.Member
	for _, id := range a.Holders {
		if m, ok := live[id]; ok && id != s.node && !skip[id] {
			out = append(out, m)
		}
	}
	if len(out) >= 2 {
		r.mu.Lock()
		load := func(m membership.Member) float64 {
			// What this node sees at once (its own calls there) plus what
			// the holder gossips (everyone's, up to a second old).
			n := float64(r.pending[m.ID] + m.InFlight)
			if m.Capacity > 0 {
				return n / float64(m.Capacity)
			}
			return n
		}
		i, j := rand.IntN(len(out)), rand.IntN(len(out)-1)
		if j >= i {
			j++
		}
		if load(out[j]) < load(out[i]) {
			i = j
		}
		r.mu.Unlock()
		out[0], out[i] = out[i], out[0]
	}
	return out
}
