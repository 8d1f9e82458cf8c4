package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mcpcluster/mcpcluster/cluster"
)

const pinnedProvider = `
  - name: pinned
    type: builtin
    prefix: pinned_
    replicas: 1
`

// Acceptance 3.2: a replicas-1 tool held by X, called through Y, runs on
// X; after SIGKILL of X it gets a new holder and calls succeed again.
func TestReplicaOneHolderFailover(t *testing.T) {
	c := newProviderCluster(t, 3, pinnedProvider)
	x := c.node(c.nodes[0].holders(t, "pinned_echo", 1)[0])
	y := c.except(x.id)[0]
	cl := mcpgoClient(t, y.mcpURL(), legacy)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	text, ranOn, err := callTool(ctx, cl, "pinned_echo", map[string]any{"text": "where"})
	if err != nil || text != "where" || ranOn != x.id {
		t.Fatalf("call through %s: %q ran on %q (%v), want it on holder %s", y.id, text, ranOn, err, x.id)
	}

	x.kill()
	killed := time.Now()
	failures := 0
	var window time.Duration
	for i := 0; ; i++ {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		_, ranOn, err = callTool(cctx, cl, "pinned_echo", map[string]any{"text": fmt.Sprint(i)})
		ccancel()
		if err == nil {
			window = time.Since(killed)
			break
		}
		failures++
		if time.Since(killed) > 45*time.Second {
			t.Fatalf("no successful call within 45s of killing the holder: %v", err)
		}
	}
	if ranOn == x.id || ranOn == "" {
		t.Fatalf("call after the kill ran on %q", ranOn)
	}
	if h := y.holders(t, "pinned_echo", 1); h[0] == x.id {
		t.Fatalf("holder still %s", x.id)
	}
	t.Logf("replicas-1 holder SIGKILL: first successful call %s after the kill (%d failed calls before it), new holder %s",
		window.Round(time.Millisecond), failures, ranOn)
}

// Acceptance 3.3: a replicas-2 idempotent tool keeps answering through a
// surviving node while one of its holders is SIGKILLed: zero failed calls.
func TestIdempotentReplicasZeroFailures(t *testing.T) {
	c := newProviderCluster(t, 3, `
  - name: idem
    type: builtin
    prefix: idem_
    replicas: 2
`)
	holders := c.nodes[0].holders(t, "idem_sleep", 2)
	via := c.except(holders...)[0] // every call is forwarded
	victim := c.node(holders[0])

	var ok, failed atomic.Int64
	var mu sync.Mutex
	var errs []string
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		cl := mcpgoClient(t, via.mcpURL(), legacy)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
				_, _, err := callTool(cctx, cl, "idem_sleep", map[string]any{"ms": 20})
				ccancel()
				if err != nil {
					failed.Add(1)
					mu.Lock()
					errs = append(errs, fmt.Sprintf("worker %d call %d: %v", w, i, err))
					mu.Unlock()
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	waitFor(t, 20*time.Second, func() error {
		if ok.Load() < 50 {
			return fmt.Errorf("%d calls so far", ok.Load())
		}
		return nil
	})
	victim.kill()
	before := ok.Load()
	waitFor(t, 30*time.Second, func() error {
		if ok.Load() < before+200 {
			return fmt.Errorf("%d calls since the kill", ok.Load()-before)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed:\n%s", failed.Load(), ok.Load()+failed.Load(), strings.Join(errs, "\n"))
	}
	t.Logf("%d calls through %s, holder %s killed after %d: zero failures", ok.Load(), via.id, victim.id, before)
}

// rawMCP posts one JSON-RPC message to node n's /mcp and returns the status
// and body (the last SSE data line, for event-stream answers).
func rawMCP(t testing.TB, n *node, method, session, contentType, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, n.mcpURL(), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Mcp-Protocol-Version", legacy)
	if session != "" {
		req.Header.Set("Mcp-Session-Id", session)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, n.id, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := string(b)
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		for _, line := range strings.Split(out, "\n") {
			if d, ok := strings.CutPrefix(line, "data: "); ok {
				out = d
			}
		}
	}
	return resp.StatusCode, out
}

const echoCall = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"still here"}}}`

// Acceptance 3.4: a session initialized on A works on B after A is killed;
// DELETE through B makes it 404 on every node, A included after A restarts.
func TestSessionSurvivesNodeDeath(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	a, b, third := c.nodes[0], c.nodes[1], c.nodes[2]
	cl := mcpgoClient(t, a.mcpURL(), legacy)
	sid := cl.GetSessionId()
	if sid == "" {
		t.Fatal("no session id issued")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := callTool(ctx, cl, "echo", map[string]any{"text": "on a"}); err != nil {
		t.Fatal(err)
	}

	a.kill()
	// The same session, through B, by a second mcp-go client that resumes it.
	tr, err := transport.NewStreamableHTTP(b.mcpURL(), transport.WithSession(sid))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	params, _ := json.Marshal(map[string]any{"name": "echo", "arguments": map[string]any{"text": "on b"}})
	resp, err := tr.SendRequest(ctx, transport.JSONRPCRequest{JSONRPC: "2.0", ID: mcplib.NewRequestId(1), Method: "tools/call", Params: json.RawMessage(params)})
	if err != nil || resp.Error != nil || !strings.Contains(string(resp.Result), "on b") {
		t.Fatalf("session %s on %s after %s died: %+v %v", sid, b.id, a.id, resp, err)
	}

	if code, body := rawMCP(t, b, http.MethodDelete, sid, "application/json", ""); code != http.StatusOK {
		t.Fatalf("DELETE through %s: %d %s", b.id, code, body)
	}
	// The node that took the DELETE answers 404 at once; the others once
	// they apply it, within a raft heartbeat.
	if code, body := rawMCP(t, b, http.MethodPost, sid, "application/json", echoCall); code != http.StatusNotFound {
		t.Fatalf("deleted session on %s right after its DELETE: %d %s", b.id, code, body)
	}
	gone := func(nd *node) func() error {
		return func() error {
			if code, body := rawMCP(t, nd, http.MethodPost, sid, "application/json", echoCall); code != http.StatusNotFound {
				return fmt.Errorf("deleted session on %s: %d %s", nd.id, code, body)
			}
			return nil
		}
	}
	waitFor(t, 2*time.Second, gone(third))
	a.start()
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	waitFor(t, 2*time.Second, gone(a))
	for _, nd := range c.nodes {
		if err := gone(nd)(); err != nil {
			t.Fatal(err)
		}
	}
}

// Acceptance 3.5: a stdio upstream (examples/stdio-server) and an HTTP
// upstream become cluster tools; killing the stdio upstream's holder starts
// it on another node and its tools keep answering.
func TestUpstreamProviders(t *testing.T) {
	up := startHTTPUpstream(t)
	c := newProviderCluster(t, 3, fmt.Sprintf(`
  - name: demo
    type: stdio
    command: [%q]
    prefix: demo_
    replicas: 1
  - name: weather
    type: http
    url: %s
    replicas: 2
`, stdioServer, up.url))
	holder := c.node(c.nodes[0].holders(t, "demo_whoami", 1)[0])
	c.nodes[0].holders(t, "forecast", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var pid string
	for _, nd := range c.nodes {
		cl := mcpgoClient(t, nd.mcpURL(), legacy)
		who, ranOn, err := callTool(ctx, cl, "demo_whoami", nil)
		if err != nil || ranOn != holder.id {
			t.Fatalf("demo_whoami through %s: %q on %q, %v", nd.id, who, ranOn, err)
		}
		if pid != "" && who != pid {
			t.Fatalf("two stdio processes answered: %q and %q", pid, who)
		}
		pid = who
		if text, _, err := callTool(ctx, cl, "forecast", map[string]any{"city": "Porto"}); err != nil || text != "sunny in Porto" {
			t.Fatalf("forecast through %s: %q %v", nd.id, text, err)
		}
	}
	if got := up.calls.Load(); got != 3 {
		t.Fatalf("HTTP upstream ran %d calls, want 3", got)
	}

	// The stdio upstream dies on its own: its holder starts it again.
	var childPID int
	if _, err := fmt.Sscanf(pid, "pid %d", &childPID); err != nil {
		t.Fatalf("whoami answer %q: %v", pid, err)
	}
	if err := syscall.Kill(childPID, syscall.SIGKILL); err != nil {
		t.Fatalf("kill stdio upstream %d: %v", childPID, err)
	}
	onHolder := mcpgoClient(t, holder.mcpURL(), legacy)
	waitFor(t, 20*time.Second, func() error {
		who, ranOn, err := callTool(ctx, onHolder, "demo_whoami", nil)
		if err != nil {
			return err
		}
		if ranOn != holder.id || who == pid {
			return fmt.Errorf("answered by %q on %s", who, ranOn)
		}
		pid = who
		return nil
	})

	holder.kill()
	via := c.except(holder.id)[0]
	cl := mcpgoClient(t, via.mcpURL(), legacy)
	waitFor(t, 30*time.Second, func() error {
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		who, ranOn, err := callTool(cctx, cl, "demo_whoami", nil)
		if err != nil {
			return err
		}
		if ranOn == holder.id || who == pid {
			return fmt.Errorf("answered by %q on %s", who, ranOn)
		}
		return nil
	})
	if text, _, err := callTool(ctx, cl, "demo_echo", map[string]any{"text": "moved"}); err != nil || text != "moved" {
		t.Fatalf("demo_echo after the move: %q %v", text, err)
	}
}

// Acceptance 3.6: bad input gets the spec's clear error, and the node keeps
// serving.
func TestBadMCPInput(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	n := c.nodes[1]
	const limit = 1 << 20
	padded := func(size int) string {
		head := `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"`
		tail := `"}}}`
		return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
	}
	cases := []struct {
		name, ctype, body string
		status            int
		want              string
	}{
		{"unknown tool", "application/json", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"nope","arguments":{}}}`, 200, `"code":-32602`},
		{"malformed json", "application/json", `{"jsonrpc":"2.0","id":`, 400, `"code":-32700`},
		{"wrong content type", "text/plain", echoCall, 400, "content type"},
		{"body over the limit", "application/json", padded(limit + 1), 413, "exceeds the limit"},
		{"body just under the limit", "application/json", padded(limit - 1), 200, `"result"`},
		{"unknown method", "application/json", `{"jsonrpc":"2.0","id":2,"method":"tools/frobnicate"}`, 200, `"code":-32601`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body := rawMCP(t, n, http.MethodPost, "", tc.ctype, tc.body)
			if code != tc.status || !strings.Contains(body, tc.want) {
				t.Fatalf("got %d %.200s, want %d containing %q", code, body, tc.status, tc.want)
			}
		})
	}
	t.Run("unknown session", func(t *testing.T) {
		if code, body := rawMCP(t, n, http.MethodPost, "0123456789abcdef", "application/json", echoCall); code != 404 {
			t.Fatalf("got %d %s", code, body)
		}
	})
	if code, body := rawMCP(t, n, http.MethodPost, "", "application/json", echoCall); code != 200 || !strings.Contains(body, "still here") {
		t.Fatalf("node stopped serving after bad input: %d %s", code, body)
	}
}

// Progress notifications and cancellation cross the forwarding hop.
func TestProgressAndCancelAcrossHop(t *testing.T) {
	c := newProviderCluster(t, 3, pinnedProvider)
	holder := c.node(c.nodes[0].holders(t, "pinned_sleep", 1)[0])
	via := c.except(holder.id)[0]
	cl := mcpgoClient(t, via.mcpURL(), legacy)
	var mu sync.Mutex
	var progress []float64
	cl.OnNotification(func(n mcplib.JSONRPCNotification) {
		if n.Method == "notifications/progress" && fmt.Sprint(n.Params.AdditionalFields["progressToken"]) == "tok-1" {
			p, _ := n.Params.AdditionalFields["progress"].(float64)
			mu.Lock()
			progress = append(progress, p)
			mu.Unlock()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := mcplib.CallToolRequest{}
	req.Params.Name = "pinned_sleep"
	req.Params.Arguments = map[string]any{"ms": 200}
	req.Params.Meta = &mcplib.Meta{ProgressToken: "tok-1"}
	if _, err := cl.CallTool(ctx, req); err != nil {
		t.Fatal(err)
	}
	// The holder reports 10 steps. mcp-go queues notifications and may
	// write the response before the last one, so the last can be lost on
	// a busy machine: most must arrive, in order, across the hop.
	mu.Lock()
	got := slices.Clone(progress)
	mu.Unlock()
	if len(got) < 8 || !slices.IsSorted(got) || got[0] != 1 {
		t.Fatalf("progress through %s: %v, want steps 1..10 in order (the last may be lost)", via.id, got)
	}

	// A call the client abandons is cancelled on the holder.
	short, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer scancel()
	req.Params.Arguments = map[string]any{"ms": 20000}
	req.Params.Meta = nil
	if _, err := cl.CallTool(short, req); err == nil {
		t.Fatal("a 20 s sleep returned within 300 ms")
	}
	holder.waitLog(5*time.Second, "sleep cancelled") // the holder saw the cancellation
}

// Idle sessions expire on every node; with auth on, a session answers
// only the principal that opened it.
func TestSessionExpiryAndOwnership(t *testing.T) {
	dir := t.TempDir()
	cfg := dir + "/auth.yaml"
	const alice, bob = "alice-token-0123456789", "bob-token-0123456789ab"
	if err := os.WriteFile(cfg, []byte("auth_tokens:\n  "+alice+": alice\n  "+bob+": bob\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, 3, "--config", cfg, "--session-idle-ttl", "2s")
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	a, b := c.nodes[0], c.nodes[1]

	post := func(nd *node, token, session string) int {
		req, _ := http.NewRequest(http.MethodPost, nd.mcpURL(), strings.NewReader(echoCall))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Mcp-Protocol-Version", legacy)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if session != "" {
			req.Header.Set("Mcp-Session-Id", session)
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(a, "", ""); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d, want 401", code)
	}
	cl := mcpgoClient(t, a.mcpURL(), legacy, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + alice}))
	sid := cl.GetSessionId()
	if code := post(b, alice, sid); code != http.StatusOK {
		t.Fatalf("alice's session through %s: %d", b.id, code)
	}
	if code := post(b, bob, sid); code != http.StatusNotFound {
		t.Fatalf("bob using alice's session: %d, want 404", code)
	}
	// Its use reaches every replica (lazily, within a flush interval)...
	waitFor(t, 10*time.Second, func() error {
		for _, nd := range c.nodes {
			if st, err := nd.status(); err != nil || st.FSM.Sessions != 1 {
				return fmt.Errorf("%s: %+v %v", nd.id, st.FSM, err)
			}
		}
		return nil
	})
	// ...and, unused for longer than the idle TTL (watched without using
	// it), is gone from every node's replica, and answered 404 everywhere.
	c.waitDrained(15*time.Second, "sessions", func(st cluster.Status) int { return st.FSM.Sessions })
	for _, nd := range c.nodes {
		if code := post(nd, alice, sid); code != http.StatusNotFound {
			t.Fatalf("%s answers the expired session: %d", nd.id, code)
		}
	}
}
