package mcp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mcpcluster/mcpcluster/cluster"
)

func TestAuditArguments(t *testing.T) {
	got, cut := auditArguments(json.RawMessage(`{ "text" : "hi" }`))
	if got != `{"text":"hi"}` || cut {
		t.Fatalf("small arguments: %q %v", got, cut)
	}
	big := json.RawMessage(`{"text":"` + strings.Repeat("é", 2000) + `"}`)
	got, cut = auditArguments(big)
	if !cut || len(got) > MaxAuditArguments || len(got) < MaxAuditArguments-4 || !utf8.ValidString(got) {
		t.Fatalf("big arguments: %d bytes, cut %v, valid UTF-8 %v", len(got), cut, utf8.ValidString(got))
	}
}

// readAudit parses the audit file at path.
func readAudit(t *testing.T, path string) []AuditRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []AuditRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, rec)
	}
	return out
}

func TestAuditFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, []byte(`{"tool":"before"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := newAuditor(path, true, discard)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.write(&AuditRecord{Tool: fmt.Sprintf("t%d", i), ID: json.RawMessage(fmt.Sprint(i)), Outcome: auditOK,
				Arguments: strings.Repeat("x", 1000)})
		}()
	}
	wg.Wait()
	if err := a.close(); err != nil {
		t.Fatal(err)
	}
	recs := readAudit(t, path)
	if len(recs) != 51 || recs[0].Tool != "before" {
		t.Fatalf("%d records, first %q: appends must keep what was there", len(recs), recs[0].Tool)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// A new file is created 0600.
	fresh := filepath.Join(t.TempDir(), "new.jsonl")
	b, err := newAuditor(fresh, false, discard)
	if err != nil {
		t.Fatal(err)
	}
	b.close()
	if st2, err := os.Stat(fresh); err != nil || st2.Mode().Perm() != 0o600 || st.Mode().Perm() != 0o600 {
		t.Fatalf("modes: %v %v", st2.Mode(), err)
	}
	if _, err := newAuditor(filepath.Join(t.TempDir(), "no", "such", "dir"), false, discard); err == nil {
		t.Fatal("an audit log in a missing directory accepted")
	}
}

func TestAuditToLog(t *testing.T) {
	var buf bytes.Buffer
	a, _ := newAuditor("", false, slog.New(slog.NewJSONHandler(&buf, nil)))
	a.write(&AuditRecord{Principal: "alice", Tool: "echo", ID: json.RawMessage(`"req-1"`), Node: "n1", Route: "forwarded",
		RanOn: "n2", Outcome: auditOK, Arguments: "secret"})
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%q: %v", buf.String(), err)
	}
	if line["msg"] != "audit" || line["level"] != "INFO" || line["principal"] != "alice" || line["id"] != "req-1" ||
		line["node"] != "n1" || line["ran_on"] != "n2" || line["route"] != "forwarded" || line["outcome"] != "ok" {
		t.Fatalf("log line: %s", buf.String())
	}
	if _, ok := line["arguments"]; ok {
		t.Fatal("arguments logged without audit_arguments")
	}
}

// TestAuditAndRateLimitThroughHandler: a local call, a rate-limited one
// (429, Retry-After, the request's id) and a policy refusal each leave
// one audit record.
func TestAuditAndRateLimitThroughHandler(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clock := newFakeClock()
	rec := &rejections{}
	_, s := newSoloNodeConfig(t, func(n *cluster.Node) []ProviderSpec {
		return []ProviderSpec{{Provider: NewBuiltin(BuiltinName, func() any { return n.Status() })}}
	}, func(c *Config) {
		c.Tokens = map[string]string{"alice-token-0123456789": "alice", "bob-token-0123456789ab": "bob"}
		c.RateLimits = &RateLimits{Tools: map[string]Limit{"echo": {Rate: 1.0 / 30, Burst: 1}}}
		c.Now = clock.now
		c.AuditLog, c.AuditArguments = path, true
		c.ToolPolicy = []string{`principal == "alice"`}
		c.Observer = rec
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	url := serve(t, mux)
	alice := connectAs(t, url, "alice-token-0123456789")
	if got := resultText(callTool(t, alice, "echo", map[string]any{"text": "first"})); got != "first" {
		t.Fatalf("echo: %q", got)
	}
	call := `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":"second"}}}`
	resp, body := post(t, url, map[string]string{"Authorization": "Bearer alice-token-0123456789"}, call)
	var msg struct {
		ID    any `json:"id"`
		Error struct {
			Code int `json:"code"`
			Data struct {
				Reason     string `json:"reason"`
				RetryAfter int    `json:"retryAfter"`
			} `json:"data"`
		} `json:"error"`
	}
	json.Unmarshal([]byte(body), &msg)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "30" || msg.ID != float64(42) ||
		msg.Error.Code != busyCode || msg.Error.Data.Reason != "rate_limit" || msg.Error.Data.RetryAfter != 30 {
		t.Fatalf("rate-limited call: %d Retry-After %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	clock.advance(29*time.Second + 500*time.Millisecond)
	if resp, _ := post(t, url, map[string]string{"Authorization": "Bearer alice-token-0123456789"}, call); resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("half a second before the token: Retry-After %q", resp.Header.Get("Retry-After"))
	}
	deny := strings.Replace(call, `"id":42`, `"id":"bob-1"`, 1)
	if resp, body := post(t, url, map[string]string{"Authorization": "Bearer bob-token-0123456789ab"}, deny); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("bob's call: %d %s", resp.StatusCode, body)
	}
	// A stateless (2026-07-28) client's call: audited without a session.
	tr, err := transport.NewStreamableHTTP(url, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer alice-token-0123456789"}))
	if err != nil {
		t.Fatal(err)
	}
	modern := client.NewClient(tr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := modern.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { modern.Close() })
	init := mcplib.InitializeRequest{}
	init.Params.ProtocolVersion = mcplib.ProtocolVersion20260728
	if _, err := modern.Initialize(ctx, init); err != nil {
		t.Fatal(err)
	}
	callTool(t, modern, "sha256", map[string]any{"text": "stateless"})
	if got := rec.count("rate_limit"); got != 2 {
		t.Fatalf("rate_limit rejections observed: %d", got)
	}

	recs := readAudit(t, path)
	if len(recs) != 5 {
		t.Fatalf("%d audit records, want 5: %+v", len(recs), recs)
	}
	if st := recs[4]; st.Tool != "sha256" || st.Session != "" || st.Route != "local" || st.RanOn != "solo" || st.Outcome != "ok" || st.Principal != "alice" {
		t.Fatalf("stateless call: %+v", st)
	}
	ok := recs[0]
	if ok.Principal != "alice" || ok.Tool != "echo" || ok.Node != "solo" || ok.RanOn != "solo" || ok.Route != "local" ||
		ok.Outcome != "ok" || ok.Session == "" || string(ok.ID) == "null" || ok.Arguments != `{"text":"first"}` || ok.Time.IsZero() || ok.DurationMS <= 0 {
		t.Fatalf("local call: %+v", ok)
	}
	limited := recs[1]
	if limited.Outcome != "refused" || limited.Reason != "rate_limit" || string(limited.ID) != "42" || limited.RanOn != "" ||
		limited.Arguments != `{"text":"second"}` {
		t.Fatalf("rate-limited call: %+v", limited)
	}
	if denied := recs[3]; denied.Principal != "bob" || denied.Outcome != "refused" || denied.Reason != "policy" || string(denied.ID) != `"bob-1"` {
		t.Fatalf("policy refusal: %+v", denied)
	}
}

// rejections is an Observer that counts rejections by reason.
type rejections struct {
	nopObserver
	mu sync.Mutex
	n  map[string]int
}

func (r *rejections) Rejected(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[reason]++
}

func (r *rejections) count(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[reason]
}
