package mcp

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
)

func TestCompilePolicy(t *testing.T) {
	if _, err := CompilePolicy([]string{`principal == "a"`, `jwt.sub == "x" && mcp.tool.name == "echo"`}); err != nil {
		t.Fatal(err)
	}
	for rule, want := range map[string]string{
		`principal ==`:                 "tool_policy[0]",
		`principal + 1`:                "no matching overload",
		`unknown_var == "x"`:           "undeclared reference to 'unknown_var'",
		`principal`:                    "want bool",
		`mcp.tool.name.startsWith(1)`:  "no matching overload",
		`jwt.sub == "x" &&& principal`: "Syntax error",
	} {
		_, err := CompilePolicy([]string{rule})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", rule, err, want)
		}
	}
}

// TestToolPolicy: calls are allowed when a rule is true, refused with 403
// before they run, and tools/list shows each principal only what it may call.
func TestToolPolicy(t *testing.T) {
	idp := newTestIdP(t)
	kid := idp.newKey("k", jose.EdDSA)
	var wiped int
	wipe := server.ServerTool{Tool: mcplib.NewTool("wipe", annotate(false, false, true)),
		Handler: func(context.Context, mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			wiped++
			return mcplib.NewToolResultText("wiped"), nil
		}}
	peek := server.ServerTool{Tool: mcplib.NewTool("peek", readOnlyTool),
		Handler: func(context.Context, mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			return mcplib.NewToolResultText("peeked"), nil
		}}
	_, s := newSoloNodeConfig(t, func(n *cluster.Node) []ProviderSpec {
		return []ProviderSpec{
			{Provider: NewBuiltin(BuiltinName, func() any { return n.Status() })},
			{Provider: NewStatic("admin", wipe, peek)},
		}
	}, func(c *Config) {
		c.OAuth = idp.oauthConfig()
		c.Tokens = map[string]string{"static-token-0123456789": "ops"}
		c.ToolPolicy = []string{
			`principal == "ops"`,
			`jwt.sub == "alice" && mcp.tool.name == "echo"`,
			`"readers" in jwt.groups && mcp.tool.annotations.readOnlyHint == true && mcp.method == "tools/call"`,
		}
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	url := serve(t, mux)
	bobClaims := claims("bob", "")
	bobClaims["groups"] = []string{"readers"}
	tokens := map[string]string{
		"ops":   "static-token-0123456789",
		"alice": idp.sign(kid, claims("alice", "")),
		"bob":   idp.sign(kid, bobClaims),
		"carol": idp.sign(kid, claims("carol", "")),
	}
	want := map[string][]string{
		"ops":   {"cluster_status", "echo", "peek", "sha256", "sleep", "wipe"},
		"alice": {"echo"},
		"bob":   {"cluster_status", "echo", "peek", "sha256", "sleep"},
		"carol": {},
	}
	for who, tok := range tokens {
		c := connectAs(t, url, tok)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		list, err := c.ListTools(ctx, mcplib.ListToolsRequest{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, tl := range list.Tools {
			names = append(names, tl.Name)
		}
		slices.Sort(names)
		if !slices.Equal(names, want[who]) && !(len(names) == 0 && len(want[who]) == 0) {
			t.Errorf("%s lists %v, want %v", who, names, want[who])
		}
		for _, tool := range []string{"echo", "peek", "wipe"} {
			body := `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"` + tool + `","arguments":{"text":"x"}}}`
			resp, out := post(t, url, map[string]string{"Authorization": "Bearer " + tok}, body)
			allowed := slices.Contains(want[who], tool)
			if allowed && resp.StatusCode != 200 {
				t.Errorf("%s calling %s: %d %s", who, tool, resp.StatusCode, out)
			}
			if !allowed {
				var msg struct {
					ID    int `json:"id"`
					Error struct {
						Code int `json:"code"`
					} `json:"error"`
				}
				json.Unmarshal([]byte(out), &msg)
				if resp.StatusCode != http.StatusForbidden || msg.Error.Code != policyDeniedCode || msg.ID != 3 {
					t.Errorf("%s calling %s: %d %s, want 403 %d", who, tool, resp.StatusCode, out, policyDeniedCode)
				}
			}
		}
	}
	if wiped != 1 {
		t.Fatalf("wipe ran %d times, want once (ops)", wiped)
	}
}
