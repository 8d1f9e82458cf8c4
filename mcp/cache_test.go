package mcp

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
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
	key, err := resultKey("count", map[string]any{"text": "a"})
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
