// Command stdio-server is a small MCP server on stdio, the kind of upstream
// an mcpcluster provider of type "stdio" runs. It serves the built-in demo
// tools (echo, sleep, sha256), "whoami", which tells the process id, so
// you can see which process answered and that a restarted one is new;
// "env", which lists the names (never the values) of its environment
// variables, so you can see what a provider passes to its command; and
// "trace_context", which returns the trace context it got in _meta.
// STDIO_SERVER_DELAY (e.g. 200ms) delays every call, to play a slow upstream.
//
//	providers:
//	  - name: demo
//	    type: stdio
//	    command: ["./bin/stdio-server"]
//	    prefix: demo_
//	    replicas: 1
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/mcp"
)

func main() {
	var delay time.Duration
	if v := os.Getenv("STDIO_SERVER_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			fmt.Fprintln(os.Stderr, "stdio-server: STDIO_SERVER_DELAY:", err)
			os.Exit(2)
		}
		delay = d
	}
	var opts []server.ServerOption
	opts = append(opts, server.WithToolCapabilities(false))
	if delay > 0 {
		opts = append(opts, server.WithToolHandlerMiddleware(func(next server.ToolHandlerFunc) server.ToolHandlerFunc {
			return func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
				select {
				case <-time.After(delay):
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				return next(ctx, req)
			}
		}))
	}
	s := server.NewMCPServer("mcpcluster-stdio-example", mcp.Version, opts...)
	s.AddTools(mcp.BuiltinTools(nil)...)
	s.AddTool(mcplib.NewTool("whoami",
		mcplib.WithDescription("The process id of this server."),
		mcplib.WithReadOnlyHintAnnotation(true),
		mcplib.WithIdempotentHintAnnotation(true),
	), func(context.Context, mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
		host, _ := os.Hostname()
		return mcplib.NewToolResultText(fmt.Sprintf("pid %d on %s", os.Getpid(), host)), nil
	})
	s.AddTool(mcplib.NewTool("env",
		mcplib.WithDescription("The names of this server's environment variables, sorted, one a line (values are not shown)."),
		mcplib.WithReadOnlyHintAnnotation(true),
		mcplib.WithIdempotentHintAnnotation(true),
	), func(context.Context, mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
		names := []string{}
		for _, kv := range os.Environ() {
			name, _, _ := strings.Cut(kv, "=")
			names = append(names, name)
		}
		slices.Sort(names)
		names = slices.Compact(names)
		res := mcplib.NewToolResultText(strings.Join(names, "\n"))
		res.StructuredContent = map[string]any{"names": names}
		return res, nil
	})
	var ticks atomic.Int64
	s.AddTool(mcplib.NewTool("tick",
		mcplib.WithDescription("Counts its calls and returns the count: a tool with a side effect, not safe to repeat."),
		mcplib.WithReadOnlyHintAnnotation(false),
		mcplib.WithIdempotentHintAnnotation(false),
		mcplib.WithDestructiveHintAnnotation(false),
	), func(context.Context, mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
		return mcplib.NewToolResultText(fmt.Sprintf("tick %d of pid %d", ticks.Add(1), os.Getpid())), nil
	})
	s.AddTool(mcplib.NewTool("trace_context",
		mcplib.WithDescription("The W3C trace context (traceparent, tracestate, baggage) this server received in the call's _meta, as JSON: where a traced mcpcluster node puts it."),
		mcplib.WithReadOnlyHintAnnotation(true),
		mcplib.WithIdempotentHintAnnotation(true),
	), func(_ context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
		got := map[string]string{}
		if req.Params.Meta != nil {
			for _, k := range []string{"traceparent", "tracestate", "baggage"} {
				if v, ok := req.Params.Meta.AdditionalFields[k].(string); ok {
					got[k] = v
				}
			}
		}
		b, err := json.Marshal(got)
		if err != nil {
			return nil, fmt.Errorf("encode trace context: %w", err)
		}
		res := mcplib.NewToolResultText(string(b))
		res.StructuredContent = got
		return res, nil
	})
	if err := server.ServeStdio(s); err != nil {
		fmt.Fprintln(os.Stderr, "stdio-server:", err)
		os.Exit(1)
	}
}
