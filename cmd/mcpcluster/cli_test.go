package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// fakeNode answers every request with code and body and records the
// Authorization header of each.
type fakeNode struct {
	mu    sync.Mutex
	auth  []string
	paths []string
	code  int
	body  string
	srv   *httptest.Server
}

func newFakeNode(t *testing.T, code int, body string) *fakeNode {
	f := &fakeNode{code: code, body: body}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		f.paths = append(f.paths, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(f.code)
		io.WriteString(w, f.body)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeNode) addr() string { return strings.TrimPrefix(f.srv.URL, "http://") }

func (f *fakeNode) headers() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.auth...)
}

const cliTok = "cli-token-0123456789"

func TestCLISendsToken(t *testing.T) {
	node := newFakeNode(t, http.StatusOK, `{"node":"n1","entries":[],"version":1,"status":"left"}`)
	commands := [][]string{
		{"status"}, {"members"}, {"tools"}, {"leave"},
		{"cache", "get", "k"}, {"cache", "set", "k", "v"}, {"cache", "del", "k"}, {"cache", "list"},
	}
	for _, source := range []string{"flag", "env", "both", "none"} {
		t.Run(source, func(t *testing.T) {
			node.mu.Lock()
			node.auth = nil
			node.mu.Unlock()
			want := "Bearer " + cliTok
			switch source {
			case "env":
				t.Setenv("MCPCLUSTER_ADMIN_TOKEN", cliTok)
			case "both":
				t.Setenv("MCPCLUSTER_ADMIN_TOKEN", "env-token-is-overridden")
			case "none":
				t.Setenv("MCPCLUSTER_ADMIN_TOKEN", "")
				want = ""
			}
			for _, c := range commands {
				args := append(append([]string{}, c...), "--http-addr", node.addr())
				if source == "flag" || source == "both" {
					args = append(args, "--token", cliTok)
				}
				var out, errOut strings.Builder
				if code := run(args, &out, &errOut); code != 0 {
					t.Fatalf("%v: exit %d: %s", c, code, errOut.String())
				}
			}
			got := node.headers()
			if len(got) != len(commands) {
				t.Fatalf("%d requests for %d commands", len(got), len(commands))
			}
			for i, h := range got {
				if h != want {
					t.Errorf("%v sent Authorization %q, want %q", commands[i], h, want)
				}
			}
		})
	}
}

func TestCLIAuthErrors(t *testing.T) {
	t.Setenv("MCPCLUSTER_ADMIN_TOKEN", "")
	cases := []struct {
		code int
		body string
		want string
	}{
		{401, `{"error":"missing admin token: send Authorization: Bearer <token>"}`, "missing admin token: send Authorization: Bearer <token> (HTTP 401; pass --token or set MCPCLUSTER_ADMIN_TOKEN)"},
		{403, `{"error":"PUT /v1/cache/k needs a write token, this one has read access"}`, "PUT /v1/cache/k needs a write token, this one has read access (HTTP 403)"},
		{401, `not json`, "401 Unauthorized (HTTP 401"},
	}
	for _, c := range cases {
		node := newFakeNode(t, c.code, c.body)
		for _, args := range [][]string{{"status"}, {"cache", "set", "k", "v"}, {"cache", "get", "k"}, {"leave"}} {
			args = append(args, "--http-addr", node.addr())
			var out, errOut strings.Builder
			code := run(args, &out, &errOut)
			msg := errOut.String()
			if code != 1 || !strings.Contains(msg, c.want) || strings.Count(msg, "\n") != 1 {
				t.Errorf("%v on %d: exit %d, stderr %q; want exit 1 and one line with %q", args, c.code, code, msg, c.want)
			}
		}
	}
}

func TestBenchSendsToken(t *testing.T) {
	node := newFakeNode(t, http.StatusOK, `{}`)
	cfg, _, err := parseBenchFlags([]string{"--targets", node.addr(), "--scenario", "cache-set", "--token", cliTok}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkCacheAccess(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if err := httpDo(context.Background(), cfg.token, http.MethodPut, cfg.targets[0]+"/v1/cache/x", "v"); err != nil {
		t.Fatal(err)
	}
	for _, h := range node.headers() {
		if h != "Bearer "+cliTok {
			t.Fatalf("bench sent Authorization %q", h)
		}
	}
	denied := newFakeNode(t, http.StatusForbidden, `{"error":"PUT /v1/cache/bench/preflight needs a write token, this one has read access"}`)
	cfg.targets = []string{denied.srv.URL}
	err = checkCacheAccess(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "needs a write token") {
		t.Fatalf("403 preflight: %v", err)
	}
	cfg.scenario = "call"
	if err := checkCacheAccess(context.Background(), cfg); err != nil {
		t.Fatalf("call scenario checked cache access: %v", err)
	}
}

// An agent with tokens guards the admin API and profiles and leaves the
// probes and metrics open; the CLI gets in with a token.
func TestAgentAdminTokens(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	tokens, err := cluster.ParseTokenFile([]byte("read read-token-0123456789\n" + cliTok + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaultAgentConfig()
	cfg.Dev, cfg.BootstrapExpect, cfg.DataDir = true, 1, t.TempDir()
	cfg.HTTPAddr, cfg.RPCAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.GossipProfile = "local"
	cfg.EnableDebug = true
	cfg.AdminTokens = tokens
	agent, err := NewAgent(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	base := "http://" + agent.HTTPAddr()
	get := func(path, tok string) int {
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	deadline := time.Now().Add(20 * time.Second)
	for get("/readyz", "") != http.StatusOK {
		if time.Now().After(deadline) {
			t.Fatal("agent not ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cases := []struct {
		path, tok string
		want      int
	}{
		{"/healthz", "", 200}, {"/metrics", "", 200},
		{"/v1/status", "", 401}, {"/v1/status", "read-token-0123456789", 200},
		{"/debug/pprof/", "", 401}, {"/debug/pprof/", "read-token-0123456789", 403}, {"/debug/pprof/", cliTok, 200},
		{"/debug/pprof/symbol", "read-token-0123456789", 403},
	}
	for _, c := range cases {
		if got := get(c.path, c.tok); got != c.want {
			t.Errorf("GET %s with %q: %d, want %d", c.path, c.tok, got, c.want)
		}
	}
	t.Setenv("MCPCLUSTER_ADMIN_TOKEN", "")
	var out, errOut strings.Builder
	if code := run([]string{"status", "--json", "--http-addr", agent.HTTPAddr()}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "HTTP 401") {
		t.Errorf("status without a token: exit %d %s", code, errOut.String())
	}
	out.Reset()
	if code := run([]string{"status", "--json", "--http-addr", agent.HTTPAddr(), "--token", cliTok}, &out, &errOut); code != 0 {
		t.Fatalf("status with a token: exit %d %s", code, errOut.String())
	}
	var st cluster.Status
	if err := json.Unmarshal([]byte(out.String()), &st); err != nil || st.Node == "" {
		t.Fatalf("status: %v %s", err, out.String())
	}
}
