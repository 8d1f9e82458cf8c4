package mcp

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// serve serves h on a loopback port until the test ends.
func serve(tb testing.TB, h http.Handler) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	tb.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/mcp"
}

// newSoloNode starts a one-node cluster with the MCP front door, in process,
// serving the built-in tools.
func newSoloNode(tb testing.TB) (*cluster.Node, *Server) {
	return newSoloNodeWith(tb, func(n *cluster.Node) []ProviderSpec {
		return []ProviderSpec{{Provider: NewBuiltin(BuiltinName, func() any { return n.Status() })}}
	})
}

// newSoloNodeWith is newSoloNode with the providers made by providers.
func newSoloNodeWith(tb testing.TB, providers func(*cluster.Node) []ProviderSpec) (*cluster.Node, *Server) {
	return newSoloNodeConfig(tb, providers, nil)
}

// newSoloNodeConfig is newSoloNodeWith with the front door's config
// changed by edit (when not nil) before it starts.
func newSoloNodeConfig(tb testing.TB, providers func(*cluster.Node) []ProviderSpec, edit func(*Config)) (*cluster.Node, *Server) {
	cfg := cluster.DefaultConfig()
	cfg.NodeID = "solo"
	cfg.DataDir = tb.TempDir()
	cfg.RPCBindAddr, cfg.GossipBindAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.GossipProfile = "local"
	cfg.BootstrapExpect = 1
	cfg.LogLevel = slog.LevelError
	n, err := cluster.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { n.Shutdown() })
	mc := DefaultConfig()
	mc.Cluster = n
	mc.SyncInterval = 100 * time.Millisecond
	mc.Providers = providers(n)
	if edit != nil {
		edit(&mc)
	}
	s, err := New(mc)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	n.ServeInternal(s.InternalHandler())
	select {
	case <-s.Ready():
	case <-time.After(20 * time.Second):
		tb.Fatal("mcp front door not ready")
	}
	return n, s
}

func connect(tb testing.TB, url, version string) *client.Client {
	tr, err := transport.NewStreamableHTTP(url)
	if err != nil {
		tb.Fatal(err)
	}
	c := client.NewClient(tr, client.WithProtocolVersion(version))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		tb.Fatal(err)
	}
	init := mcplib.InitializeRequest{}
	init.Params.ProtocolVersion = version
	if _, err := c.Initialize(ctx, init); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func runCalls(b *testing.B, url, version string) {
	const workers = 16
	clients := make([]*client.Client, workers)
	for i := range clients {
		clients[i] = connect(b, url, version)
	}
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := mcplib.CallToolRequest{}
			req.Params.Name = "echo"
			req.Params.Arguments = map[string]any{"text": "hello"}
			for next.Add(1) <= int64(b.N) {
				if _, err := clients[w].CallTool(context.Background(), req); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d calls failed", f)
	}
}

// BenchmarkEcho compares the same echo call over a bare mcp-go server and
// through an mcpcluster node (one-node cluster, all in this process), so the
// ratio shows what the front door itself costs.
//
//	go test -run '^$' -bench Echo -benchtime 20000x ./mcp/
func BenchmarkEcho(b *testing.B) {
	bare := server.NewMCPServer("bare", "1", server.WithToolCapabilities(true))
	bare.AddTools(BuiltinTools(nil)...)
	bareURL := serve(b, server.NewStreamableHTTPServer(bare))
	_, s := newSoloNode(b)
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	nodeURL := serve(b, mux)
	for _, v := range []string{mcplib.ProtocolVersion20251125, mcplib.ProtocolVersion20260728} {
		b.Run(v+"/bare", func(b *testing.B) { runCalls(b, bareURL, v) })
		b.Run(v+"/node", func(b *testing.B) { runCalls(b, nodeURL, v) })
	}
}

// BenchmarkTracing measures what tracing costs a call: the same echo calls
// through a one-node cluster with tracing off, and on with every call
// sampled and its spans exported over OTLP/HTTP to a receiver in this
// process (which reads and drops them).
//
//	go test -run '^$' -bench Tracing -benchtime 20000x -count 3 ./mcp/
func BenchmarkTracing(b *testing.B) {
	var received atomic.Int64
	collector := serve(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		received.Add(n)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(collector+"/v1/traces"))
	if err != nil {
		b.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { tp.Shutdown(context.Background()) })
	for _, tc := range []struct {
		name string
		tp   trace.TracerProvider
	}{{"off", nil}, {"always_on", tp}} {
		_, s := newSoloNodeConfig(b, func(*cluster.Node) []ProviderSpec {
			return []ProviderSpec{{Provider: NewBuiltin(BuiltinName, nil)}}
		}, func(c *Config) { c.TracerProvider = tc.tp })
		mux := http.NewServeMux()
		mux.Handle("/mcp", s.Handler())
		url := serve(b, mux)
		b.Run(tc.name, func(b *testing.B) { runCalls(b, url, mcplib.ProtocolVersion20251125) })
	}
	if err := tp.ForceFlush(context.Background()); err != nil {
		b.Fatal(err)
	}
	if received.Load() == 0 {
		b.Fatal("no spans reached the collector")
	}
}

// BenchmarkSessionSetup opens and closes sessions (initialize, then
// DELETE), 8 at a time, on a bare mcp-go server and through a one-node
// cluster, so the ratio shows what a session costs the front door.
//
//	go test -run '^$' -bench SessionSetup -benchtime 5000x ./mcp/
func BenchmarkSessionSetup(b *testing.B) {
	bare := server.NewMCPServer("bare", "1", server.WithToolCapabilities(true))
	bare.AddTools(BuiltinTools(nil)...)
	bareURL := serve(b, server.NewStreamableHTTPServer(bare))
	n, s := newSoloNode(b)
	deadline := time.Now().Add(10 * time.Second)
	for n.FSM().SessionKey() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	nodeURL := serve(b, mux)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for name, url := range map[string]string{"bare": bareURL, "node": nodeURL} {
		b.Run(name, func(b *testing.B) {
			var next, failed atomic.Int64
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						tr, err := transport.NewStreamableHTTP(url, transport.WithHTTPBasicClient(hc))
						if err != nil {
							failed.Add(1)
							continue
						}
						c := client.NewClient(tr, client.WithProtocolVersion(mcplib.ProtocolVersion20251125))
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						init := mcplib.InitializeRequest{}
						init.Params.ProtocolVersion = mcplib.ProtocolVersion20251125
						if err := c.Start(ctx); err != nil {
							failed.Add(1)
						} else if _, err := c.Initialize(ctx, init); err != nil {
							failed.Add(1)
						}
						c.Close()
						cancel()
					}
				}()
			}
			wg.Wait()
			if f := failed.Load(); f > 0 {
				b.Fatalf("%d sessions failed", f)
			}
		})
	}
}
