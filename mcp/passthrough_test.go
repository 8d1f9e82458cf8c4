package mcp

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
)

// headerLog is an MCP server at an HTTP URL that records the headers of
// every request it gets.
type headerLog struct {
	mu   sync.Mutex
	seen []http.Header
}

func (h *headerLog) all() []http.Header {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]http.Header(nil), h.seen...)
}

func startHeaderUpstream(t *testing.T) (*headerLog, string) {
	log := &headerLog{}
	s := server.NewMCPServer("recorder", "1")
	s.AddTool(mcplib.NewTool("remote_echo", mcplib.WithString("text")), func(_ context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
		return mcplib.NewToolResultText(req.GetString("text", "")), nil
	})
	h := server.NewStreamableHTTPServer(s)
	url := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.mu.Lock()
		log.seen = append(log.seen, r.Header.Clone())
		log.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	return log, url
}

// TestNoTokenPassthrough: an HTTP upstream gets the headers its provider
// declares and never the token a client presented to mcpcluster.
func TestNoTokenPassthrough(t *testing.T) {
	log, upURL := startHeaderUpstream(t)
	idp := newTestIdP(t)
	kid := idp.newKey("k", jose.RS256)
	jwtTok := idp.sign(kid, claims("alice", ""))
	const static = "static-token-0123456789"
	_, s := newSoloNodeConfig(t, func(n *cluster.Node) []ProviderSpec {
		up, err := NewHTTP("remote", upURL, map[string]string{"X-Upstream-Key": "the-provider-credential"}, discard)
		if err != nil {
			t.Fatal(err)
		}
		return []ProviderSpec{{Provider: up}}
	}, func(c *Config) {
		c.OAuth = idp.oauthConfig()
		c.Tokens = map[string]string{static: "ops"}
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	url := serve(t, mux)
	for _, tok := range []string{jwtTok, static} {
		c := connectAs(t, url, tok)
		if got := resultText(callTool(t, c, "remote_echo", map[string]any{"text": "hi"})); got != "hi" {
			t.Fatalf("remote_echo: %q", got)
		}
	}
	seen := log.all()
	if len(seen) == 0 {
		t.Fatal("the upstream saw no request")
	}
	for _, h := range seen {
		if h.Get("X-Upstream-Key") != "the-provider-credential" {
			t.Fatalf("declared header missing: %v", h)
		}
		for name, values := range h {
			for _, v := range values {
				if strings.Contains(v, jwtTok) || strings.Contains(v, static) || strings.Contains(v, jwtTok[:40]) {
					t.Fatalf("upstream got the client's token in %s", name)
				}
			}
		}
		if h.Get("Authorization") != "" {
			t.Fatalf("upstream got an Authorization header: %q", h.Get("Authorization"))
		}
	}
}
