package mcp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
	"github.com/mcpcluster/mcpcluster/fsm"
	"go.opentelemetry.io/otel/trace"
)

// Session errors; mcp-go answers each with HTTP 404.
var (
	ErrUnknownSession = errors.New("unknown session")
	ErrSessionOwner   = errors.New("session belongs to another principal")
)

// sessionStore keeps MCP sessions in the replicated state, so a session
// opened on one node is accepted by every node and survives the node that
// opened it.
type sessionStore struct {
	c       Cluster
	node    string
	idleTTL time.Duration
	timeout time.Duration
	logger  *slog.Logger

	mu      sync.Mutex
	touched map[string]time.Time // when this node last replicated a touch
}

func newSessionStore(c Cluster, idleTTL time.Duration, logger *slog.Logger) *sessionStore {
	return &sessionStore{c: c, node: c.ID(), idleTTL: idleTTL, timeout: 5 * time.Second, logger: logger, touched: map[string]time.Time{}}
}

// ResolveSessionIdManager binds the request's principal to the manager.
// mcp-go passes a nil request from its idle sweeper: that manager only
// lets mcp-go drop this node's local state, because a session idle here may
// be in use on another node; the leader expires sessions cluster-wide from
// their replicated last use.
func (s *sessionStore) ResolveSessionIdManager(r *http.Request) server.SessionIdManager {
	m := &sessionManager{s: s, local: r == nil}
	if r != nil {
		m.principal = principalFrom(r.Context())
		m.protocol = r.Header.Get("Mcp-Protocol-Version")
		m.span = trace.SpanFromContext(r.Context())
	}
	return m
}

// sessionManager is the mcp-go SessionIdManager of one request.
type sessionManager struct {
	s         *sessionStore
	principal string
	protocol  string
	local     bool // no request: mcp-go's own housekeeping
	// span is the request's span: the session's raft writes are its
	// children (the writes outlive the request's cancellation).
	span trace.Span
}

// context is a fresh context for a replicated write of the session,
// carrying the request's span.
func (m *sessionManager) context() (context.Context, context.CancelFunc) {
	ctx := context.Background()
	if m.span != nil {
		ctx = trace.ContextWithSpan(ctx, m.span)
	}
	return context.WithTimeout(ctx, m.s.timeout)
}

// Generate opens a session and returns its id once the cluster has
// committed it, so that the client may use it on any node right away.
// When the cluster cannot commit, no id is issued and the client carries
// on without a session (every node serves session-less requests).
func (m *sessionManager) Generate() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	ctx, cancel := m.context()
	defer cancel()
	_, err := m.s.c.Apply(ctx, &fsm.Command{Type: fsm.TypeSessionOpen, Session: &fsm.Session{
		ID: id, Principal: m.principal, ProtocolVersion: m.protocol, Node: m.s.node,
	}})
	if err != nil {
		m.s.logger.Warn("session not replicated; serving the client without a session", "error", err)
		return ""
	}
	m.s.markTouched(id, time.Now())
	return id
}

// Validate accepts a session known to the replicated state and owned by
// the request's principal. A session this node has not applied yet is
// looked up again after catching up with the leader, before a 404.
func (m *sessionManager) Validate(id string) (bool, error) {
	if id == "" {
		return false, nil // a client that was given no session
	}
	sess, ok := m.s.c.FSM().Session(id)
	if !ok {
		ctx, cancel := m.context()
		_, err := m.s.c.ReadBarrier(ctx, cluster.Default)
		cancel()
		if err != nil {
			return false, fmt.Errorf("look up session: %w", err)
		}
		if sess, ok = m.s.c.FSM().Session(id); !ok {
			return false, ErrUnknownSession
		}
	}
	if sess.Principal != m.principal {
		return false, ErrSessionOwner
	}
	m.s.touch(id)
	return false, nil
}

// Terminate deletes the session cluster-wide (DELETE /mcp).
func (m *sessionManager) Terminate(id string) (bool, error) {
	if m.local {
		m.s.mu.Lock()
		delete(m.s.touched, id)
		m.s.mu.Unlock()
		return false, nil
	}
	if _, err := m.Validate(id); err != nil {
		return false, err
	}
	ctx, cancel := m.context()
	defer cancel()
	res, err := m.s.c.Apply(ctx, &fsm.Command{Type: fsm.TypeSessionDelete, SessionID: id})
	if err != nil {
		return false, fmt.Errorf("delete session: %w", err)
	}
	if errors.Is(res.Err(), fsm.ErrNotFound) {
		return false, ErrUnknownSession
	}
	// Read-your-writes: this node answers 404 for the session from now on.
	// Other nodes do once they apply the delete (the next raft heartbeat).
	if _, err := m.s.c.ReadBarrier(ctx, cluster.Default); err != nil {
		return false, fmt.Errorf("wait for session delete: %w", err)
	}
	m.s.mu.Lock()
	delete(m.s.touched, id)
	m.s.mu.Unlock()
	return false, nil
}

func (s *sessionStore) markTouched(id string, at time.Time) {
	s.mu.Lock()
	s.touched[id] = at
	s.mu.Unlock()
}

// touch replicates that the session is in use, at most once a quarter of
// the idle TTL per session and node, in the background.
func (s *sessionStore) touch(id string) {
	if s.idleTTL <= 0 {
		return
	}
	now := time.Now()
	s.mu.Lock()
	last, ok := s.touched[id]
	due := !ok || now.Sub(last) >= s.idleTTL/4
	if due {
		s.touched[id] = now
	}
	s.mu.Unlock()
	if !due {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		if _, err := s.c.Apply(ctx, &fsm.Command{Type: fsm.TypeSessionTouch, SessionID: id}); err != nil {
			s.logger.Debug("session touch not replicated", "error", err)
		}
	}()
}

// forget drops local bookkeeping of sessions that no longer exist.
func (s *sessionStore) forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.touched {
		if _, ok := s.c.FSM().Session(id); !ok {
			delete(s.touched, id)
		}
	}
}

type principalKey struct{}

// withPrincipal returns ctx carrying the authenticated caller.
func withPrincipal(ctx context.Context, p string) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

func principalFrom(ctx context.Context) string {
	p, _ := ctx.Value(principalKey{}).(string)
	return p
}
