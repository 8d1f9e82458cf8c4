// Command stdio-server is a small MCP server on stdio, the kind of upstream
// an mcpcluster provider of type "stdio" runs. It serves the built-in demo
// tools (echo, sleep, sha256) and "whoami", which tells the process id, so
// you can see which process answered and that a restarted one is new.
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
	"fmt"
	"os"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/mcp"
)

func main() {
	s := server.NewMCPServer("mcpcluster-stdio-example", mcp.Version, server.WithToolCapabilities(false))
	s.AddTools(mcp.BuiltinTools(nil)...)
	s.AddTool(mcplib.NewTool("whoami",
		mcplib.WithDescription("The process id of this server."),
		mcplib.WithReadOnlyHintAnnotation(true),
		mcplib.WithIdempotentHintAnnotation(true),
	), func(context.Context, mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
		host, _ := os.Hostname()
		return mcplib.NewToolResultText(fmt.Sprintf("pid %d on %s", os.Getpid(), host)), nil
	})
	if err := server.ServeStdio(s); err != nil {
		fmt.Fprintln(os.Stderr, "stdio-server:", err)
		os.Exit(1)
	}
}
