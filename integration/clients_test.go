package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

// matrixHolders is how many holders each tool of TestClientMatrix's
// cluster has: the built-in tools run everywhere (3 nodes), pinned_* and
// demo_* on one node, forecast on two.
var matrixHolders = map[string]int{
	"echo": 3, "sleep": 3, "sha256": 3, "cluster_status": 3,
	"cache_get": 3, "cache_set": 3, "cache_delete": 3,
	"pinned_echo": 1, "pinned_sleep": 1, "pinned_sha256": 1, "pinned_cluster_status": 1,
	"demo_echo": 1, "demo_sleep": 1, "demo_sha256": 1, "demo_whoami": 1, "demo_env": 1, "demo_tick": 1, "demo_trace_context": 1,
	"forecast": 2,
}

// matrixHTTPClient is one HTTP client shared by every MCP client of a
// test: a pooled transport with room for many connections per node, and no
// overall timeout (SSE streams are long-lived; every call has a deadline).
func matrixHTTPClient(t testing.TB) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = 256
	tr.MaxIdleConnsPerHost = 64
	tr.IdleConnTimeout = 30 * time.Second
	tr.TLSHandshakeTimeout = 5 * time.Second
	t.Cleanup(tr.CloseIdleConnections) // registered first: runs after the clients close
	return &http.Client{Transport: tr}
}

// matrixResult is what one tools/call returned, whichever client made it.
type matrixResult struct {
	text    string
	ranOn   string // _meta["mcpcluster/node"]
	isError bool
}

// matrixSession is one connected MCP client of either library.
type matrixSession interface {
	protocolVersion() string
	listTools(ctx context.Context) ([]mcplib.Tool, error)
	call(ctx context.Context, name string, args map[string]any) (matrixResult, error)
}

// mcpgoSession is mark3labs/mcp-go's client.
type mcpgoSession struct{ c *client.Client }

func (s mcpgoSession) protocolVersion() string { return s.c.ProtocolVersion() }

func (s mcpgoSession) listTools(ctx context.Context) ([]mcplib.Tool, error) {
	res, err := s.c.ListTools(ctx, mcplib.ListToolsRequest{}) // follows nextCursor
	if err != nil {
		return nil, err
	}
	return res.Tools, nil
}

func (s mcpgoSession) call(ctx context.Context, name string, args map[string]any) (matrixResult, error) {
	req := mcplib.CallToolRequest{}
	req.Params.Name = name
	req.Params.Arguments = args
	res, err := s.c.CallTool(ctx, req)
	if err != nil {
		return matrixResult{}, err
	}
	var r matrixResult
	r.isError = res.IsError
	for _, c := range res.Content {
		if tc, ok := c.(mcplib.TextContent); ok {
			r.text += tc.Text
		}
	}
	if res.Meta != nil {
		r.ranOn, _ = res.Meta.AdditionalFields["mcpcluster/node"].(string)
	}
	return r, nil
}

// sdkSession is the official go-sdk's client.
type sdkSession struct{ cs *sdk.ClientSession }

func (s sdkSession) protocolVersion() string { return s.cs.InitializeResult().ProtocolVersion }

func (s sdkSession) listTools(ctx context.Context) ([]mcplib.Tool, error) {
	var out []mcplib.Tool
	params := &sdk.ListToolsParams{}
	seen := map[string]bool{}
	for range 100 { // pages
		res, err := s.cs.ListTools(ctx, params)
		if err != nil {
			return nil, err
		}
		for _, t := range res.Tools {
			schema, err := json.Marshal(t.InputSchema)
			if err != nil {
				return nil, fmt.Errorf("tool %s: input schema: %w", t.Name, err)
			}
			out = append(out, mcplib.Tool{Name: t.Name, RawInputSchema: schema})
		}
		if res.NextCursor == "" {
			return out, nil
		}
		if seen[res.NextCursor] {
			return nil, fmt.Errorf("tools/list cursor %q repeats", res.NextCursor)
		}
		seen[res.NextCursor] = true
		params = &sdk.ListToolsParams{Cursor: res.NextCursor}
	}
	return nil, fmt.Errorf("tools/list: more than 100 pages")
}

func (s sdkSession) call(ctx context.Context, name string, args map[string]any) (matrixResult, error) {
	res, err := s.cs.CallTool(ctx, &sdk.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		return matrixResult{}, err
	}
	r := matrixResult{isError: res.IsError}
	for _, c := range res.Content {
		if tc, ok := c.(*sdk.TextContent); ok {
			r.text += tc.Text
		}
	}
	// The result's _meta lands in the embedded sdk.Meta map (res.Meta),
	// keys as sent on the wire.
	r.ranOn, _ = res.Meta["mcpcluster/node"].(string)
	return r, nil
}

// sdkConnect connects the go-sdk client to url at protocol version.
func sdkConnect(t testing.TB, hc *http.Client, url, version string, opts *sdk.ClientOptions) *sdk.ClientSession {
	t.Helper()
	cl := sdk.NewClient(&sdk.Implementation{Name: "mcpcluster-test-gosdk", Version: "1"}, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cs, err := cl.Connect(ctx, &sdk.StreamableClientTransport{Endpoint: url, HTTPClient: hc},
		&sdk.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatalf("connect go-sdk client to %s at %s: %v", url, version, err)
	}
	t.Cleanup(func() { cs.Close() })
	if got := cs.InitializeResult().ProtocolVersion; got != version {
		t.Fatalf("go-sdk client at %s negotiated %s, want %s", url, got, version)
	}
	return cs
}

func toolNames(tools []mcplib.Tool) []string {
	names := make([]string, len(tools))
	for i, t := range tools {
		names[i] = t.Name
	}
	return names
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// TestClientMatrix points mcp-go's client and the official go-sdk client,
// each at protocol 2025-11-25 and 2026-07-28, at every node of a cluster
// with built-in, pinned built-in, stdio and HTTP providers, and checks that
// every node lists the same tools and runs every tool, on its holders.
func TestClientMatrix(t *testing.T) {
	up := startHTTPUpstream(t)
	providers := fmt.Sprintf(`  - name: pinned
    type: builtin
    prefix: pinned_
    replicas: 1
  - name: demo
    type: stdio
    command: [%q]
    prefix: demo_
    replicas: 1
  - name: weather
    type: http
    url: %q
    replicas: 2
`, stdioServer, up.url)
	c := newProviderCluster(t, 3, providers)

	// Every node's catalog holds every tool with its holders, and all
	// nodes agree on them.
	for _, nd := range c.nodes {
		for tool, want := range matrixHolders {
			nd.holders(t, tool, want)
		}
	}
	var holders map[string][]string // tool → sorted holders
	waitFor(t, 10*time.Second, func() error {
		holders = nil
		for _, nd := range c.nodes {
			tools, err := nd.catalog()
			if err != nil {
				return fmt.Errorf("%s: catalog: %w", nd.id, err)
			}
			got := map[string][]string{}
			for _, ct := range tools {
				got[ct.Name] = slices.Sorted(slices.Values(ct.Holders))
			}
			for tool, want := range matrixHolders {
				if len(got[tool]) != want {
					return fmt.Errorf("%s: %s has holders %v, want %d", nd.id, tool, got[tool], want)
				}
				if holders != nil && !slices.Equal(got[tool], holders[tool]) {
					return fmt.Errorf("%s: %s has holders %v, %s sees %v", nd.id, tool, got[tool], c.nodes[0].id, holders[tool])
				}
			}
			if holders == nil {
				holders = got
			}
		}
		return nil
	})
	t.Logf("holders: pinned=%v demo=%v weather=%v", holders["pinned_echo"], holders["demo_echo"], holders["forecast"])

	hc := matrixHTTPClient(t)
	clients := []struct {
		name    string
		connect func(t *testing.T, url, version string) matrixSession
	}{
		{"mcp-go", func(t *testing.T, url, version string) matrixSession {
			// mcpgoClient asserts InitializeResult.ProtocolVersion == version.
			return mcpgoSession{mcpgoClient(t, url, version, transport.WithHTTPBasicClient(hc))}
		}},
		{"go-sdk", func(t *testing.T, url, version string) matrixSession {
			return sdkSession{sdkConnect(t, hc, url, version, nil)}
		}},
	}

	var firstList []string // names in order, from the first subtest
	for _, cl := range clients {
		for _, version := range []string{legacy, modern} {
			t.Run(cl.name+"/"+version, func(t *testing.T) {
				start := time.Now()
				lists := make([][]string, len(c.nodes))
				sessions := make([]matrixSession, len(c.nodes))
				var tools []mcplib.Tool
				for i, nd := range c.nodes {
					s := cl.connect(t, nd.mcpURL(), version)
					if got := s.protocolVersion(); got != version {
						t.Fatalf("%s: client reports protocol %s, want %s", nd.id, got, version)
					}
					sessions[i] = s
					// The node's mcp-go server follows the catalog on its own
					// schedule: poll until it lists every expected tool.
					waitFor(t, 30*time.Second, func() error {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						defer cancel()
						ts, err := s.listTools(ctx)
						if err != nil {
							return fmt.Errorf("%s: tools/list: %w", nd.id, err)
						}
						names := toolNames(ts)
						for tool := range matrixHolders {
							if !slices.Contains(names, tool) {
								return fmt.Errorf("%s: tools/list lacks %s: %v", nd.id, tool, names)
							}
						}
						lists[i], tools = names, ts
						return nil
					})
				}
				if len(lists[0]) != len(matrixHolders) {
					t.Errorf("%s lists %d tools, want exactly the %d declared: %v", c.nodes[0].id, len(lists[0]), len(matrixHolders), lists[0])
				}
				for i, nd := range c.nodes {
					if !slices.Equal(lists[i], lists[0]) {
						t.Errorf("%s lists %v\n%s lists %v", nd.id, lists[i], c.nodes[0].id, lists[0])
					}
				}
				if firstList == nil {
					firstList = lists[0]
				} else if !slices.Equal(lists[0], firstList) {
					t.Errorf("this client lists %v, the first client listed %v", lists[0], firstList)
				}

				calls := 0
				for i, nd := range c.nodes {
					for _, tool := range tools {
						args := argsFor(tool)
						var want string
						switch tool.Name {
						case "echo", "pinned_echo", "demo_echo":
							want = fmt.Sprintf("%s %s via %s", cl.name, version, nd.id)
							args["text"] = want
						case "sha256", "pinned_sha256", "demo_sha256":
							want = sha256Hex(args["text"].(string))
						case "sleep", "pinned_sleep", "demo_sleep":
							want = "slept 1ms"
						case "forecast":
							want = "sunny in " + args["city"].(string)
						case "cache_get", "cache_delete", "cache_set":
							// Keys of this client, version and node: get and
							// delete find theirs written beforehand.
							key := fmt.Sprintf("matrix/%s/%s/%s/%s", cl.name, version, nd.id, tool.Name)
							args = map[string]any{"key": key}
							switch tool.Name {
							case "cache_set":
								args["value"], args["ttl"] = "set by "+cl.name, "1m"
							case "cache_get":
								nd.mustPut(key, "seeded")
								want = "seeded"
							case "cache_delete":
								nd.mustPut(key, "to delete")
							}
						}
						ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
						res, err := sessions[i].call(ctx, tool.Name, args)
						cancel()
						calls++
						switch {
						case err != nil:
							t.Errorf("%s: call %s %v: %v", nd.id, tool.Name, args, err)
							continue
						case res.isError:
							t.Errorf("%s: call %s %v: tool error: %s", nd.id, tool.Name, args, res.text)
							continue
						case want != "" && res.text != want:
							t.Errorf("%s: call %s %v returned %q, want %q", nd.id, tool.Name, args, res.text, want)
						}
						h, known := holders[tool.Name]
						if !known {
							continue // a tool this test did not declare
						}
						switch {
						case res.ranOn == "":
							t.Errorf("%s: call %s: no _meta[mcpcluster/node] in the result", nd.id, tool.Name)
						case !slices.Contains(h, res.ranOn):
							t.Errorf("%s: call %s ran on %s, not on a holder %v", nd.id, tool.Name, res.ranOn, h)
						case slices.Contains(h, nd.id) && res.ranOn != nd.id:
							t.Errorf("%s holds %s but the call ran on %s", nd.id, tool.Name, res.ranOn)
						}
						if tool.Name == "pinned_echo" && res.ranOn != h[0] {
							t.Errorf("%s: pinned_echo ran on %s, the pinned holder is %s", nd.id, res.ranOn, h[0])
						}
					}
				}
				t.Logf("%d tools on %d nodes, %d calls in %s", len(tools), len(c.nodes), calls, time.Since(start).Round(time.Millisecond))
			})
		}
	}
	// One forecast call per node per subtest, each run exactly once upstream.
	if want := int64(len(clients) * 2 * len(c.nodes)); up.calls.Load() != want {
		t.Errorf("the HTTP upstream ran forecast %d times, want %d", up.calls.Load(), want)
	}
}

// streamWatch counts the notification streams a server accepted through
// an http.Client: standalone SSE GETs (2025-11-25) and subscriptions/listen
// POSTs (2026-07-28) answered 200.
type streamWatch struct {
	base         http.RoundTripper
	gets, listen atomic.Int64
}

func (w *streamWatch) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := w.base.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusOK {
		switch {
		case r.Method == http.MethodGet:
			w.gets.Add(1)
		case r.Header.Get("Mcp-Method") == "subscriptions/listen":
			w.listen.Add(1)
		}
	}
	return resp, err
}

// TestToolsListChangedReachesClients checks that a tool appearing in the
// cluster (a fourth node with a new provider joins) reaches clients
// connected to node1 as notifications/tools/list_changed, after which their
// tools/list has it: the go-sdk client on 2025-11-25 (standalone SSE
// stream), mcp-go's client on 2026-07-28 (ListenAsync, subscriptions/listen)
// and the go-sdk client on 2026-07-28 (which subscribes by itself when
// ToolListChangedHandler is set).
func TestToolsListChangedReachesClients(t *testing.T) {
	c := newProviderCluster(t, 3, `  - name: pinned
    type: builtin
    prefix: pinned_
    replicas: 1
`)
	n1 := c.node("node1")
	n1.holders(t, "pinned_echo", 1)
	hc := matrixHTTPClient(t)
	watch := &streamWatch{base: hc.Transport}
	hc.Transport = watch

	type notifier struct {
		name    string
		changed chan struct{}
		errs    chan error
		list    func(context.Context) ([]mcplib.Tool, error)
		call    func(context.Context, string, map[string]any) (matrixResult, error)
	}
	newNotifier := func(name string) *notifier {
		return &notifier{name: name, changed: make(chan struct{}, 16), errs: make(chan error, 1)}
	}
	signal := func(ch chan struct{}) {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	var notifiers []*notifier

	// go-sdk on 2025-11-25 and 2026-07-28.
	for _, version := range []string{legacy, modern} {
		nt := newNotifier("go-sdk " + version)
		cs := sdkConnect(t, hc, n1.mcpURL(), version, &sdk.ClientOptions{
			ToolListChangedHandler: func(context.Context, *sdk.ToolListChangedRequest) { signal(nt.changed) },
		})
		nt.list, nt.call = sdkSession{cs}.listTools, sdkSession{cs}.call
		notifiers = append(notifiers, nt)
	}

	// mcp-go on 2026-07-28: opt in with subscriptions/listen and wait for
	// the server's acknowledgement.
	mc := mcpgoClient(t, n1.mcpURL(), modern, transport.WithHTTPBasicClient(hc))
	nt := newNotifier("mcp-go " + modern)
	nt.list, nt.call = mcpgoSession{mc}.listTools, mcpgoSession{mc}.call
	notifiers = append(notifiers, nt)
	acked := make(chan mcplib.JSONRPCNotification, 1)
	mc.OnNotification(func(n mcplib.JSONRPCNotification) {
		switch n.Method {
		case mcplib.MethodNotificationToolsListChanged:
			signal(nt.changed)
		case mcplib.MethodNotificationSubscriptionsAcknowledged:
			select {
			case acked <- n:
			default:
			}
		}
	})
	stop, err := mc.ListenAsync(context.Background(), mcplib.SubscriptionFilter{ToolsListChanged: true}, func(err error) {
		select {
		case nt.errs <- err:
		default:
		}
	})
	if err != nil {
		t.Fatalf("mcp-go ListenAsync: %v", err)
	}
	t.Cleanup(stop)
	select {
	case n := <-acked:
		t.Logf("mcp-go: subscriptions acknowledged: %+v", n.Params.AdditionalFields)
	case err := <-nt.errs:
		t.Fatalf("mcp-go subscriptions/listen failed: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("mcp-go: no notifications/subscriptions/acknowledged within 15s of subscriptions/listen")
	}
	// Every stream is open before the catalog changes: the legacy go-sdk
	// session's GET, and both subscriptions/listen POSTs.
	waitFor(t, 15*time.Second, func() error {
		if g, l := watch.gets.Load(), watch.listen.Load(); g < 1 || l < 2 {
			return fmt.Errorf("%d SSE GET and %d subscriptions/listen streams open, want 1 and 2", g, l)
		}
		return nil
	})

	// A fourth node declares provider "extra" and joins.
	cfg := filepath.Join(t.TempDir(), "extra.yaml")
	if err := os.WriteFile(cfg, []byte(`providers:
  - name: extra
    type: builtin
    prefix: extra_
    replicas: 1
`), 0o644); err != nil {
		t.Fatal(err)
	}
	n4 := newNode(t, "node4", append([]string{"--config", cfg, "--bootstrap-expect", "3"}, c.joinFlags()...)...)
	started := time.Now()
	n4.start()
	c.nodes = append(c.nodes, n4)
	c.waitSuffrage(30*time.Second, c.nodes, 3, 1)

	// Each client gets list_changed, after which a fresh tools/list on
	// node1 has extra_echo (a notification from before the tool was
	// registered does not count: wait for the next one). The leader may
	// place the new provider only after a gossip push/pull (see the
	// report), hence the generous deadline.
	deadline := time.After(60 * time.Second)
	for _, nt := range notifiers {
		notes, found := 0, false
		for !found {
			select {
			case <-nt.changed:
				notes++
			case err := <-nt.errs:
				t.Fatalf("%s: notification stream failed: %v", nt.name, err)
			case <-deadline:
				t.Fatalf("%s: no notifications/tools/list_changed announcing extra_echo within 60s of starting node4 (%d notifications)",
					nt.name, notes)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			tools, err := nt.list(ctx)
			cancel()
			if err != nil {
				t.Fatalf("%s: tools/list after list_changed: %v", nt.name, err)
			}
			found = slices.Contains(toolNames(tools), "extra_echo")
		}
		t.Logf("%s: list_changed #%d, then tools/list on node1 has extra_echo, %s after node4 started",
			nt.name, notes, time.Since(started).Round(time.Millisecond))
	}

	// The new tool runs through node1, forwarded to node4, its only holder.
	if h := n1.holders(t, "extra_echo", 1); h[0] != "node4" {
		t.Fatalf("extra_echo held by %v, want node4 (the only node declaring it)", h)
	}
	for _, nt := range notifiers {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := nt.call(ctx, "extra_echo", map[string]any{"text": "via node1"})
		cancel()
		if err != nil || res.isError || res.text != "via node1" || res.ranOn != "node4" {
			t.Errorf("%s: extra_echo via node1: %+v, %v; want text %q run on node4", nt.name, res, err, "via node1")
		}
	}
}
