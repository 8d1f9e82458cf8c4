package mcp

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
)

// newCacheNode starts a one-node cluster whose front door serves the cache
// tools and "count", a tool whose results are cached, and returns the node,
// an MCP client of it and how many times count really ran.
func newCacheNode(t *testing.T) (*cluster.Node, *client.Client, *atomic.Int64) {
	var runs atomic.Int64
	count := server.ServerTool{
		Tool: mcplib.NewTool("count", mcplib.WithString("text"), readOnlyTool),
		Handler: func(_ context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			runs.Add(1)
			return mcplib.NewToolResultText("ran " + req.GetString("text", "")), nil
		},
	}
	n, s := newSoloNodeWith(t, func(n *cluster.Node) []ProviderSpec {
		return []ProviderSpec{
			{Provider: NewStatic(BuiltinName, CacheTools(n)...)},
			{Provider: NewStatic("counted", count), Placement: Placement{CacheTTL: time.Minute}},
		}
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	return n, connect(t, serve(t, mux), mcplib.ProtocolVersion20251125), &runs
}

func callTool(t *testing.T, c *client.Client, name string, args map[string]any) *mcplib.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := mcplib.CallToolRequest{}
	req.Params.Name = name
	req.Params.Arguments = args
	res, err := c.CallTool(ctx, req)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return res
}

func resultText(res *mcplib.CallToolResult) string {
	if len(res.Content) == 0 {
		return ""
	}
	tc, _ := res.Content[0].(mcplib.TextContent)
	return tc.Text
}

// TestResultCacheIsInternal: tool results are cached under the reserved
// prefix, and no MCP client can read, plant or delete them with the cache
// tools.
func TestResultCacheIsInternal(t *testing.T) {
	n, c, runs := newCacheNode(t)

	first := callTool(t, c, "count", map[string]any{"text": "a"})
	second := callTool(t, c, "count", map[string]any{"text": "a"})
	if first.IsError || resultText(second) != "ran a" || runs.Load() != 1 {
		t.Fatalf("second call not answered from the cache: %q, %d runs", resultText(second), runs.Load())
	}
	if second.Meta == nil || second.Meta.AdditionalFields["mcpcluster/cache"] != "hit" {
		t.Fatalf("no cache hit mark: %+v", second.Meta)
	}
	key, err := resultKey("count", "", map[string]any{"text": "a"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(key, cluster.InternalKeyPrefix) {
		t.Fatalf("result key %q is not internal", key)
	}
	entry, ok := n.FSM().CacheGet(key, time.Now().UnixNano())
	if !ok {
		t.Fatalf("no cached result under %q", key)
	}

	const reserved = "key prefix mcpcluster/ is reserved for the cluster's own use"
	for _, call := range []struct {
		tool string
		args map[string]any
	}{
		{"cache_get", map[string]any{"key": key}},
		{"cache_set", map[string]any{"key": key, "value": `{"content":[{"type":"text","text":"planted"}]}`}},
		{"cache_delete", map[string]any{"key": key}},
		{"cache_set", map[string]any{"key": cluster.InternalKeyPrefix + "result/count/other", "value": "x"}},
	} {
		res := callTool(t, c, call.tool, call.args)
		if !res.IsError || !strings.Contains(resultText(res), reserved) {
			t.Fatalf("%s %v: %+v", call.tool, call.args, res)
		}
	}
	if after, ok := n.FSM().CacheGet(key, time.Now().UnixNano()); !ok || after.Version != entry.Version {
		t.Fatalf("cached result changed by the cache tools: %+v", after)
	}
	if res := callTool(t, c, "count", map[string]any{"text": "a"}); resultText(res) != "ran a" || runs.Load() != 1 {
		t.Fatalf("third call: %q, %d runs", resultText(res), runs.Load())
	}

	// Other keys work as before.
	if res := callTool(t, c, "cache_set", map[string]any{"key": "notes/a", "value": "v1"}); res.IsError {
		t.Fatalf("cache_set: %s", resultText(res))
	}
	if res := callTool(t, c, "cache_get", map[string]any{"key": "notes/a"}); res.IsError || resultText(res) != "v1" {
		t.Fatalf("cache_get: %+v", res)
	}
	if res := callTool(t, c, "cache_delete", map[string]any{"key": "notes/a"}); res.IsError {
		t.Fatalf("cache_delete: %s", resultText(res))
	}
}

// connectAs is connect with a bearer token.
func connectAs(t *testing.T, url, token string) *client.Client {
	t.Helper()
	tr, err := transport.NewStreamableHTTP(url, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + token}))
	if err != nil {
		t.Fatal(err)
	}
	c := client.NewClient(tr, client.WithProtocolVersion(mcplib.ProtocolVersion20251125))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	init := mcplib.InitializeRequest{}
	init.Params.ProtocolVersion = mcplib.ProtocolVersion20251125
	if _, err := c.Initialize(ctx, init); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestResultCachePerPrincipal: a cached result answers only the principal
// whose call produced it, unless the provider or the tool shares it.
func TestResultCachePerPrincipal(t *testing.T) {
	var runs atomic.Int64
	counter := func(name string) server.ServerTool {
		return server.ServerTool{
			Tool: mcplib.NewTool(name, mcplib.WithString("text"), readOnlyTool),
			Handler: func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
				runs.Add(1)
				return mcplib.NewToolResultText("for " + principalFrom(ctx)), nil
			},
		}
	}
	_, s := newSoloNodeConfig(t, func(n *cluster.Node) []ProviderSpec {
		return []ProviderSpec{
			{Provider: NewStatic("private", counter("private")), Placement: Placement{CacheTTL: time.Minute}},
			{Provider: NewStatic("public", counter("public")), Placement: Placement{CacheTTL: time.Minute, SharedCache: true}},
			{Provider: NewStatic("mixed", counter("mixed_shared"), counter("mixed_own")),
				Placement: Placement{CacheTTL: time.Minute, ToolSharedCache: map[string]bool{"mixed_shared": true}}},
		}
	}, func(c *Config) {
		c.Tokens = map[string]string{"alice-token-0123456789": "alice", "bob-token-0123456789ab": "bob"}
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	url := serve(t, mux)
	alice, bob := connectAs(t, url, "alice-token-0123456789"), connectAs(t, url, "bob-token-0123456789ab")

	for _, c := range []struct {
		tool   string
		shared bool
	}{{"private", false}, {"public", true}, {"mixed_shared", true}, {"mixed_own", false}} {
		runs.Store(0)
		args := map[string]any{"text": "a"}
		if got := resultText(callTool(t, alice, c.tool, args)); got != "for alice" {
			t.Fatalf("%s: alice got %q", c.tool, got)
		}
		callTool(t, alice, c.tool, args)
		if runs.Load() != 1 {
			t.Fatalf("%s: alice's second call ran again", c.tool)
		}
		got := resultText(callTool(t, bob, c.tool, args))
		switch {
		case c.shared && (got != "for alice" || runs.Load() != 1):
			t.Fatalf("%s (shared): bob got %q after %d runs", c.tool, got, runs.Load())
		case !c.shared && (got != "for bob" || runs.Load() != 2):
			t.Fatalf("%s (per principal): bob got %q after %d runs", c.tool, got, runs.Load())
		}
	}
	// The shared mark stays inside the cluster.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := alice.ListTools(ctx, mcplib.ListToolsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tl := range list.Tools {
		if tl.Meta != nil && tl.Meta.AdditionalFields[sharedCacheMeta] != nil {
			t.Fatalf("tool %s shows the internal mark", tl.Name)
		}
	}
}
