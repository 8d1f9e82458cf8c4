// Command embed is a program that runs an mcpcluster node in-process and
// adds a tool of its own, written with mcp-go. Start three copies with
// different ports and the same -join list; every node then serves
// "inventory_lookup" at /mcp, run on the two nodes the leader picks.
//
//	go run ./examples/embed -id a -http 127.0.0.1:8800 -rpc 127.0.0.1:8801 -gossip 127.0.0.1:8802 -join 127.0.0.1:8802,127.0.0.1:8812,127.0.0.1:8822 &
//	go run ./examples/embed -id b -http 127.0.0.1:8810 -rpc 127.0.0.1:8811 -gossip 127.0.0.1:8812 -join 127.0.0.1:8802,127.0.0.1:8812,127.0.0.1:8822 &
//	go run ./examples/embed -id c -http 127.0.0.1:8820 -rpc 127.0.0.1:8821 -gossip 127.0.0.1:8822 -join 127.0.0.1:8802,127.0.0.1:8812,127.0.0.1:8822 &
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
	"github.com/mcpcluster/mcpcluster/mcp"
	"github.com/mcpcluster/mcpcluster/membership"
)

func main() {
	id := flag.String("id", "a", "node id")
	httpAddr := flag.String("http", "127.0.0.1:8800", "MCP and admin HTTP address")
	rpcAddr := flag.String("rpc", "127.0.0.1:8801", "cluster address")
	gossipAddr := flag.String("gossip", "127.0.0.1:8802", "gossip address")
	join := flag.String("join", "127.0.0.1:8802", "comma-separated gossip addresses")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := run(*id, *httpAddr, *rpcAddr, *gossipAddr, strings.Split(*join, ","), logger); err != nil {
		logger.Error("embed", "error", err)
		os.Exit(1)
	}
}

func run(id, httpAddr, rpcAddr, gossipAddr string, join []string, logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	cfg := cluster.DefaultConfig()
	cfg.NodeID = id
	cfg.DataDir = filepath.Join(os.TempDir(), "mcpcluster-embed", id)
	cfg.RPCBindAddr, cfg.GossipBindAddr, cfg.HTTPAdvertiseAddr = rpcAddr, gossipAddr, httpAddr
	cfg.Join, cfg.BootstrapExpect = join, len(join)
	cfg.Logger = logger
	node, err := cluster.New(cfg)
	if err != nil {
		return err
	}
	defer node.Shutdown()

	lookup := server.ServerTool{
		Tool: mcplib.NewTool("inventory_lookup",
			mcplib.WithDescription("How many of an item are in stock."),
			mcplib.WithString("sku", mcplib.Required()),
			mcplib.WithReadOnlyHintAnnotation(true),
		),
		Handler: func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			sku, err := req.RequireString("sku")
			if err != nil {
				return mcplib.NewToolResultError(err.Error()), nil
			}
			return mcplib.NewToolResultText(fmt.Sprintf("%s: %d in stock (answered by %s)", sku, len(sku)*7, id)), nil
		},
	}
	mc := mcp.DefaultConfig()
	mc.Cluster = node
	mc.Logger = logger
	mc.Providers = []mcp.ProviderSpec{
		{Provider: mcp.NewBuiltin(mcp.BuiltinName, func() any { return node.Status() })},
		{Provider: mcp.NewStatic("inventory", lookup), Placement: mcp.Placement{Replicas: 2}},
	}
	front, err := mcp.New(mc)
	if err != nil {
		return err
	}
	defer front.Close()
	node.ServeInternal(front.InternalHandler())

	mux := http.NewServeMux()
	mux.Handle("/mcp", front.Handler())
	mux.Handle("/", cluster.NewAPI(node, cluster.DefaultAPIConfig()))
	srv := &http.Server{Addr: httpAddr, Handler: mux}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		<-front.Ready()
		_ = node.SetStatus(membership.StatusRunning)
	}()
	logger.Info("serving MCP", "url", "http://"+httpAddr+"/mcp")
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		return err
	}
	return nil
}
