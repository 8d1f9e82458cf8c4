package mcp

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mcpcluster/mcpcluster/cluster"
	"github.com/mcpcluster/mcpcluster/fsm"
)

func TestToolJSONIsFaithful(t *testing.T) {
	in := `{"annotations":{"idempotentHint":true},"description":"d","inputSchema":{"$schema":"https://json-schema.org/draft/2020-12/schema","oneOf":[{"required":["a"]},{"required":["b"]}],"properties":{"a":{"type":"string","title":"A"},"b":{"type":"integer"}},"type":"object"},"name":"t","outputSchema":{"type":"object","properties":{"x":{"type":"number"}}}}`
	tool, err := toolFromJSON([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	out, err := toolJSON(tool)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	_ = json.Unmarshal([]byte(in), &a)
	_ = json.Unmarshal(out, &b)
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) != string(jb) {
		t.Fatalf("round trip changed the tool:\n in %s\nout %s", ja, jb)
	}
	if !safeToRepeat(tool) {
		t.Fatal("idempotent tool not safe to repeat")
	}
	if _, err := toolFromJSON([]byte(`{"description":"no name"}`)); err == nil {
		t.Fatal("tool without a name accepted")
	}
}

func TestSafeToRepeat(t *testing.T) {
	yes, no := true, false
	cases := []struct {
		ro, idem *bool
		want     bool
	}{{nil, nil, false}, {&no, &no, false}, {&yes, nil, true}, {nil, &yes, true}, {&no, &yes, true}}
	for _, c := range cases {
		tool := mcplib.Tool{Annotations: mcplib.ToolAnnotation{ReadOnlyHint: c.ro, IdempotentHint: c.idem}}
		if got := safeToRepeat(tool); got != c.want {
			t.Errorf("readOnly=%v idempotent=%v: %v, want %v", c.ro, c.idem, got, c.want)
		}
	}
}

func TestPrefixedProvider(t *testing.T) {
	p := WithPrefix(NewBuiltin("demo", nil), "demo_")
	tools, err := p.Tools(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, tl := range tools {
		if !strings.HasPrefix(tl.Name, "demo_") {
			t.Fatalf("tool %q not prefixed", tl.Name)
		}
	}
	req := mcplib.CallToolRequest{}
	req.Params.Name = "demo_echo"
	req.Params.Arguments = map[string]any{"text": "x"}
	res, err := p.Call(context.Background(), req)
	if err != nil || res.Content[0].(mcplib.TextContent).Text != "x" {
		t.Fatalf("demo_echo: %+v %v", res, err)
	}
	req.Params.Name = "echo"
	if _, err := p.Call(context.Background(), req); !errors.Is(err, ErrUnknownTool) {
		t.Fatalf("unprefixed name: %v", err)
	}
}

// runnerFunc adapts a function to localRunner.
type runnerFunc func(ctx context.Context, p mcplib.CallToolParams) (*mcplib.CallToolResult, error)

func (f runnerFunc) runForwarded(ctx context.Context, p mcplib.CallToolParams) (*mcplib.CallToolResult, error) {
	return f(ctx, p)
}

var discard = slog.New(slog.DiscardHandler)

func forwardTo(t *testing.T, run runnerFunc) (*forwarder, string) {
	srv := httptest.NewServer(&internalHandler{node: "holder", run: run, logger: discard})
	t.Cleanup(srv.Close)
	f := newForwarder("caller", func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	})
	t.Cleanup(f.close)
	return f, strings.TrimPrefix(srv.URL, "http://")
}

func TestForwardRelaysProgressAndResult(t *testing.T) {
	var sawDeadline atomic.Bool
	f, addr := forwardTo(t, func(ctx context.Context, p mcplib.CallToolParams) (*mcplib.CallToolResult, error) {
		_, ok := ctx.Deadline()
		sawDeadline.Store(ok)
		for i := 1; i <= 3; i++ {
			ReportProgress(ctx, float64(i), 3, "step")
		}
		args, _ := p.Arguments.(map[string]any)
		return mcplib.NewToolResultText(p.Name + ":" + args["text"].(string)), nil
	})
	var got []float64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = withProgress(ctx, func(p, total float64, msg string) { got = append(got, p) })
	params := mcplib.CallToolParams{Name: "echo", Arguments: map[string]any{"text": "hi"}}
	res, err := f.call(ctx, addr, params)
	if err != nil {
		t.Fatal(err)
	}
	if text := res.Content[0].(mcplib.TextContent).Text; text != "echo:hi" {
		t.Fatalf("result %q", text)
	}
	if len(got) != 3 || got[2] != 3 {
		t.Fatalf("progress relayed: %v", got)
	}
	if !sawDeadline.Load() {
		t.Fatal("the caller's deadline did not cross the hop")
	}
}

func TestForwardErrorsSayWhetherSent(t *testing.T) {
	f, addr := forwardTo(t, func(context.Context, mcplib.CallToolParams) (*mcplib.CallToolResult, error) {
		return nil, ErrNotHolder
	})
	_, err := f.call(context.Background(), addr, mcplib.CallToolParams{Name: "x"})
	var se *sendError
	if !errors.As(err, &se) || se.sent || !errors.Is(err, ErrNotHolder) {
		t.Fatalf("not a holder: %v", err)
	}
	// Nothing listens here: refused, never sent.
	_, err = f.call(context.Background(), "127.0.0.1:1", mcplib.CallToolParams{Name: "x"})
	if !errors.As(err, &se) || se.sent {
		t.Fatalf("refused dial: %v", err)
	}
	// A tool error is the tool's answer, not a transport failure.
	f2, addr2 := forwardTo(t, func(context.Context, mcplib.CallToolParams) (*mcplib.CallToolResult, error) {
		return nil, errors.New("disk full")
	})
	if _, err := f2.call(context.Background(), addr2, mcplib.CallToolParams{Name: "x"}); err == nil || errors.As(err, &se) || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("handler error: %v", err)
	}
}

func TestForwardCancellationReachesHolder(t *testing.T) {
	cancelled := make(chan error, 1)
	started := make(chan struct{})
	f, addr := forwardTo(t, func(ctx context.Context, _ mcplib.CallToolParams) (*mcplib.CallToolResult, error) {
		close(started)
		<-ctx.Done()
		cancelled <- ctx.Err()
		return nil, ctx.Err()
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-started
		cancel()
	}()
	if _, err := f.call(ctx, addr, mcplib.CallToolParams{Name: "slow"}); err == nil {
		t.Fatal("cancelled call succeeded")
	}
	select {
	case err := <-cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("holder saw %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("holder never saw the cancellation")
	}
}

func TestSessionsOnSoloNode(t *testing.T) {
	n, s := newSoloNode(t)
	alice := &sessionManager{s: s.sessions, principal: "alice"}
	bob := &sessionManager{s: s.sessions, principal: "bob"}
	deadline := time.Now().Add(10 * time.Second)
	for n.FSM().SessionKey() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the leader set no session key")
		}
		time.Sleep(20 * time.Millisecond)
	}
	id := alice.Generate()
	if !strings.HasPrefix(id, sessionIDPrefix) {
		t.Fatalf("session id %q is not a signed one", id)
	}
	if _, err := alice.Validate(id); err != nil {
		t.Fatalf("owner rejected: %v", err)
	}
	if _, err := bob.Validate(id); !errors.Is(err, ErrSessionOwner) && !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("other principal: %v", err)
	}
	// The tag's first character changed: whole bits of the tag differ.
	at := strings.LastIndex(id, ".") + 1
	flip := byte('A')
	if id[at] == 'A' {
		flip = 'B'
	}
	forged := id[:at] + string(flip) + id[at+1:]
	for _, bad := range []string{"nope", forged, sessionIDPrefix + "x.y", id + "x"} {
		if _, err := alice.Validate(bad); !errors.Is(err, ErrUnknownSession) {
			t.Fatalf("id %q: %v", bad, err)
		}
	}
	// Its use reaches the replicated state with the next flush.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.sessions.flush(ctx)
	if sess, ok := n.FSM().Session(id); !ok || sess.Principal != "alice" || sess.Deleted() {
		t.Fatalf("session after a flush: %+v %v", sess, ok)
	}
	if _, err := bob.Validate(id); !errors.Is(err, ErrSessionOwner) {
		t.Fatalf("other principal, session known: %v", err)
	}
	// mcp-go's idle sweeper (no request) only drops local state.
	sweeper := s.sessions.ResolveSessionIdManager(nil)
	if _, err := sweeper.Terminate(id); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.FSM().Session(id); !ok {
		t.Fatal("the local sweeper deleted a replicated session")
	}
	if _, err := alice.Terminate(id); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Validate(id); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("deleted session: %v", err)
	}
	if sess, ok := n.FSM().Session(id); !ok || !sess.Deleted() || n.FSM().Counts().Sessions != 0 {
		t.Fatalf("after Terminate: %+v %v, %d sessions counted", sess, ok, n.FSM().Counts().Sessions)
	}
	// A late use of a deleted session does not bring it back.
	s.sessions.used(id, "alice", time.Now(), time.Now())
	s.sessions.flush(ctx)
	if _, err := alice.Validate(id); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("deleted session after a late use: %v", err)
	}
	// A session deleted before any node flushed its use is refused too.
	early := alice.Generate()
	if _, err := alice.Terminate(early); err != nil {
		t.Fatal(err)
	}
	s.sessions.flush(ctx)
	if _, err := alice.Validate(early); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("session deleted before its flush: %v", err)
	}
	// Past the lifetime, or idle past the TTL: expired.
	key := n.FSM().SessionKey()
	for name, created := range map[string]time.Time{
		"past its lifetime": time.Now().Add(-DefaultSessionMaxLifetime - time.Minute),
		"idle":              time.Now().Add(-DefaultConfig().SessionIdleTTL - cluster.SessionIdleGrace(DefaultConfig().SessionIdleTTL) - time.Second),
	} {
		if _, err := alice.Validate(newSignedID(key, created, "alice")); !errors.Is(err, ErrUnknownSession) {
			t.Fatalf("session %s: %v", name, err)
		}
	}
	if _, err := alice.Validate(newSignedID(key, time.Now().Add(-time.Minute), "alice")); err != nil {
		t.Fatalf("a session opened a minute ago through another node: %v", err)
	}
	// Idle a little past its TTL, but within the time a use takes to reach
	// the state from another node: still valid.
	ttl := DefaultConfig().SessionIdleTTL
	if _, err := alice.Validate(newSignedID(key, time.Now().Add(-ttl-time.Minute), "alice")); err != nil {
		t.Fatalf("a session idle for its TTL and a minute: %v", err)
	}

	// A session opened before the key existed (a plain id): deleted, and a
	// late use of it flushed afterwards does not bring it back.
	plain := "0123456789abcdef0123456789abcdef"
	if _, err := n.Apply(ctx, &fsm.Command{Type: fsm.TypeSessionOpen, Session: &fsm.Session{ID: plain, Principal: "alice"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Validate(plain); err != nil {
		t.Fatalf("plain session: %v", err)
	}
	s.sessions.used(plain, "alice", time.Now(), time.Now().Add(time.Hour)) // queued, as if from another node
	if _, err := alice.Terminate(plain); err != nil {
		t.Fatal(err)
	}
	s.sessions.mu.Lock()
	s.sessions.pending[plain] = fsm.Session{ID: plain, Principal: "alice", CreatedAt: time.Now().UnixNano(), LastSeen: time.Now().UnixNano()}
	s.sessions.mu.Unlock()
	s.sessions.flush(ctx)
	if _, err := alice.Validate(plain); !errors.Is(err, ErrUnknownSession) {
		t.Fatalf("deleted plain session after a late use: %v", err)
	}
}

func TestBodyLimit(t *testing.T) {
	_, s := newSoloNode(t)
	s.cfg.MaxBodyBytes = 64
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(strings.Repeat("x", 65)))
	req.Header.Set("Content-Type", "application/json")
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge || !strings.Contains(rec.Body.String(), "exceeds the limit of 64 bytes") {
		t.Fatalf("got %d %s", rec.Code, rec.Body)
	}
}

// laggingCluster is a node's view before it has applied anything: an
// empty state until a read barrier catches it up with the real one.
type laggingCluster struct {
	Cluster
	empty    *fsm.FSM
	caughtUp atomic.Bool
}

func (c *laggingCluster) FSM() *fsm.FSM {
	if c.caughtUp.Load() {
		return c.Cluster.FSM()
	}
	return c.empty
}

func (c *laggingCluster) ReadBarrier(ctx context.Context, level cluster.Consistency) (cluster.ReadInfo, error) {
	c.caughtUp.Store(true)
	return c.Cluster.ReadBarrier(ctx, level)
}

// TestSessionOnNodeWithoutKeyYet: a node that has not applied the session
// key yet (just joined) catches up before it judges a signed id, rather
// than answering 404 to a valid session.
func TestSessionOnNodeWithoutKeyYet(t *testing.T) {
	n, s := newSoloNode(t)
	deadline := time.Now().Add(10 * time.Second)
	for n.FSM().SessionKey() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the leader set no session key")
		}
		time.Sleep(20 * time.Millisecond)
	}
	id := (&sessionManager{s: s.sessions, principal: "alice"}).Generate()
	lag := &laggingCluster{Cluster: n, empty: fsm.New()}
	late := newSessionStore(lag, time.Minute, time.Hour, discard, make(chan struct{}))
	if _, err := (&sessionManager{s: late, principal: "alice"}).Validate(id); err != nil {
		t.Fatalf("a valid session on a node without the key yet: %v", err)
	}
	if !lag.caughtUp.Load() {
		t.Fatal("validated without catching up")
	}
}
