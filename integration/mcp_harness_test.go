package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// Protocol versions the tests pin clients to.
const (
	legacy = "2025-11-25"
	modern = "2026-07-28"
)

// newProviderCluster starts n nodes whose config file declares providers
// (YAML list items under "providers:"), plus any extra flags.
func newProviderCluster(t testing.TB, n int, providers string, extra ...string) *testCluster {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "providers.yaml")
	if err := os.WriteFile(cfg, []byte("providers:\n"+providers), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, n, append([]string{"--config", cfg}, extra...)...)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	return c
}

// catalogTool is one row of GET /v1/catalog.
type catalogTool struct {
	Name     string   `json:"name"`
	Provider string   `json:"provider"`
	Replicas int      `json:"replicas"`
	Holders  []string `json:"holders"`
}

func (n *node) catalog() ([]catalogTool, error) {
	resp, err := httpClient.Get("http://" + n.http + "/v1/catalog")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var c struct{ Tools []catalogTool }
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		return nil, err
	}
	return c.Tools, nil
}

// holders waits until tool has want holders on n's view and returns them.
func (n *node) holders(t testing.TB, tool string, want int) []string {
	t.Helper()
	var got []string
	waitFor(t, 30*time.Second, func() error {
		tools, err := n.catalog()
		if err != nil {
			return err
		}
		for _, ct := range tools {
			if ct.Name == tool {
				if got = ct.Holders; len(got) == want {
					return nil
				}
				return fmt.Errorf("%s has holders %v, want %d", tool, got, want)
			}
		}
		return fmt.Errorf("%s not in the catalog", tool)
	})
	return got
}

func (n *node) mcpURL() string { return "http://" + n.http + "/mcp" }

// mcpgoClient connects mcp-go's client to url at protocol version, or
// with the library's default (2026-07-28) when version is modern.
func mcpgoClient(t testing.TB, url, version string, opts ...transport.StreamableHTTPCOption) *client.Client {
	t.Helper()
	tr, err := transport.NewStreamableHTTP(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	var copts []client.ClientOption
	if version == legacy {
		copts = append(copts, client.WithProtocolVersion(legacy))
	}
	c := client.NewClient(tr, copts...)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("start mcp-go client: %v", err)
	}
	init := mcplib.InitializeRequest{}
	init.Params.ProtocolVersion = version
	init.Params.ClientInfo = mcplib.Implementation{Name: "mcpcluster-test", Version: "1"}
	res, err := c.Initialize(ctx, init)
	if err != nil {
		t.Fatalf("initialize mcp-go client at %s: %v", url, err)
	}
	if res.ProtocolVersion != version {
		t.Fatalf("negotiated %s, want %s", res.ProtocolVersion, version)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// callTool calls name through c and returns the text and the node that ran it.
func callTool(ctx context.Context, c *client.Client, name string, args map[string]any) (string, string, error) {
	req := mcplib.CallToolRequest{}
	req.Params.Name = name
	req.Params.Arguments = args
	res, err := c.CallTool(ctx, req)
	if err != nil {
		return "", "", err
	}
	if res.IsError {
		return "", "", fmt.Errorf("tool error: %v", res.Content)
	}
	var text string
	if len(res.Content) > 0 {
		if tc, ok := res.Content[0].(mcplib.TextContent); ok {
			text = tc.Text
		}
	}
	ranOn := ""
	if res.Meta != nil {
		ranOn, _ = res.Meta.AdditionalFields["mcpcluster/node"].(string)
	}
	return text, ranOn, nil
}

// httpUpstream is an MCP server at an HTTP URL, run by the test on
// loopback, with one tool "forecast" whose executions it counts.
type httpUpstream struct {
	url   string
	calls atomic.Int64
}

func startHTTPUpstream(t testing.TB) *httpUpstream {
	t.Helper()
	u := &httpUpstream{}
	s := server.NewMCPServer("test-upstream", "1")
	s.AddTool(mcplib.NewTool("forecast",
		mcplib.WithDescription("A made-up forecast for a city."),
		mcplib.WithString("city", mcplib.Required()),
		mcplib.WithReadOnlyHintAnnotation(true),
	), func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
		u.calls.Add(1)
		return mcplib.NewToolResultText("sunny in " + req.GetString("city", "?")), nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: server.NewStreamableHTTPServer(s), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	u.url = "http://" + ln.Addr().String() + "/mcp"
	return u
}

// argsFor builds arguments that satisfy a tool's required parameters.
func argsFor(tool mcplib.Tool) map[string]any {
	args := map[string]any{}
	props := tool.InputSchema.Properties
	var schema struct {
		Properties map[string]struct {
			Type string `json:"type"`
		} `json:"properties"`
	}
	if len(tool.RawInputSchema) > 0 && json.Unmarshal(tool.RawInputSchema, &schema) == nil {
		props = map[string]any{}
		for k, v := range schema.Properties {
			props[k] = map[string]any{"type": v.Type}
		}
	}
	for name, p := range props {
		typ, _ := p.(map[string]any)["type"].(string)
		switch {
		case typ == "number" || typ == "integer":
			args[name] = 1
		case strings.Contains(name, "city"):
			args[name] = "Lisbon"
		default:
			args[name] = "hello"
		}
	}
	return args
}
