package mcp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// BuiltinName is the name of the built-in tools' provider.
const BuiltinName = "builtin"

// static is a provider of a fixed set of tools run in this process: the
// built-in tools, or tools a program embedding a node registers.
type static struct {
	name     string
	tools    []mcplib.Tool
	handlers map[string]server.ToolHandlerFunc
}

// StatusFunc returns the node's view of the cluster for cluster_status.
type StatusFunc func() any

// NewBuiltin returns a provider of the built-in tools under the given
// provider name. status feeds cluster_status; nil leaves that tool out.
func NewBuiltin(name string, status StatusFunc) Provider {
	return NewStatic(name, BuiltinTools(status)...)
}

// NewStatic returns a provider of the given mcp-go tools, run in this
// process: the way a program embedding a node adds its own tools. A tool's
// handler can report progress with ReportProgress.
func NewStatic(name string, tools ...server.ServerTool) Provider {
	p := &static{name: name, handlers: map[string]server.ToolHandlerFunc{}}
	for _, st := range tools {
		p.tools = append(p.tools, st.Tool)
		p.handlers[st.Tool.Name] = st.Handler
	}
	return p
}

// BuiltinTools returns the built-in tools with their handlers: echo, sleep
// (with progress), sha256 and, when status is set, cluster_status.
func BuiltinTools(status StatusFunc) []server.ServerTool {
	mks := []func() (mcplib.Tool, server.ToolHandlerFunc){echoTool(), sleepTool(), sha256Tool()}
	if status != nil {
		mks = append(mks, clusterStatusTool(status))
	}
	out := make([]server.ServerTool, 0, len(mks))
	for _, mk := range mks {
		t, h := mk()
		out = append(out, server.ServerTool{Tool: t, Handler: withClientProgress(h)})
	}
	return out
}

// withClientProgress lets a built-in tool served by a plain mcp-go server
// (no mcpcluster routing around it) report progress to its client.
func withClientProgress(h server.ToolHandlerFunc) server.ToolHandlerFunc {
	return func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
		if _, ok := ctx.Value(progressKey{}).(ProgressFunc); !ok && req.Params.Meta != nil && req.Params.Meta.ProgressToken != nil {
			ctx = withProgress(ctx, clientProgress(ctx, req.Params.Meta.ProgressToken))
		}
		return h(ctx, req)
	}
}

func (b *static) Name() string                                 { return b.name }
func (b *static) Start(context.Context) error                  { return nil }
func (b *static) Close() error                                 { return nil }
func (b *static) Tools(context.Context) ([]mcplib.Tool, error) { return b.tools, nil }

func (b *static) Call(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
	h, ok := b.handlers[req.Params.Name]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownTool, req.Params.Name)
	}
	return h(ctx, req)
}

// readOnlyTool annotates a tool that only reads or computes: no side
// effects, safe to send again to another holder after a failure.
var readOnlyTool = annotate(true, true, false)

// annotate returns the MCP annotations of a closed-world tool (it touches
// nothing outside the cluster).
func annotate(readOnly, idempotent, destructive bool) mcplib.ToolOption {
	return func(t *mcplib.Tool) {
		t.Annotations.ReadOnlyHint = &readOnly
		t.Annotations.IdempotentHint = &idempotent
		t.Annotations.DestructiveHint = &destructive
		openWorld := false
		t.Annotations.OpenWorldHint = &openWorld
	}
}

// ranOn marks a result with the node that ran it, in _meta
// ("mcpcluster/node"), so callers and tests see where a forwarded call ran.
func ranOn(res *mcplib.CallToolResult, node string) *mcplib.CallToolResult {
	if res.Meta == nil {
		res.Meta = &mcplib.Meta{}
	}
	if res.Meta.AdditionalFields == nil {
		res.Meta.AdditionalFields = map[string]any{}
	}
	res.Meta.AdditionalFields["mcpcluster/node"] = node
	return res
}

func echoTool() func() (mcplib.Tool, server.ToolHandlerFunc) {
	return func() (mcplib.Tool, server.ToolHandlerFunc) {
		t := mcplib.NewTool("echo",
			mcplib.WithDescription("Returns its text argument unchanged."),
			mcplib.WithString("text", mcplib.Required(), mcplib.Description("text to return")),
			readOnlyTool,
		)
		return t, func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			text, err := req.RequireString("text")
			if err != nil {
				return mcplib.NewToolResultError(err.Error()), nil
			}
			return mcplib.NewToolResultText(text), nil
		}
	}
}

// maxSleep bounds the sleep tool so a call cannot hold a slot for long.
const maxSleep = 10 * time.Minute

func sleepTool() func() (mcplib.Tool, server.ToolHandlerFunc) {
	return func() (mcplib.Tool, server.ToolHandlerFunc) {
		t := mcplib.NewTool("sleep",
			mcplib.WithDescription("Waits for ms milliseconds, reporting progress every tenth; stops early when cancelled."),
			mcplib.WithNumber("ms", mcplib.Required(), mcplib.Description("milliseconds to wait (at most 600000)")),
			readOnlyTool,
		)
		return t, func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			ms, err := req.RequireFloat("ms")
			if err != nil {
				return mcplib.NewToolResultError(err.Error()), nil
			}
			d := time.Duration(ms * float64(time.Millisecond))
			if d < 0 || d > maxSleep {
				return mcplib.NewToolResultErrorf("ms must be between 0 and %d", maxSleep.Milliseconds()), nil
			}
			step := d / 10
			timer := time.NewTimer(step)
			defer timer.Stop()
			for i := 1; i <= 10; i++ {
				select {
				case <-ctx.Done():
					return nil, fmt.Errorf("sleep cancelled after %d/10 steps: %w", i-1, ctx.Err())
				case <-timer.C:
				}
				ReportProgress(ctx, float64(i), 10, fmt.Sprintf("slept %d/10", i))
				timer.Reset(step)
			}
			return mcplib.NewToolResultText(fmt.Sprintf("slept %s", d)), nil
		}
	}
}

// maxRounds bounds the sha256 tool's work.
const maxRounds = 1_000_000

func sha256Tool() func() (mcplib.Tool, server.ToolHandlerFunc) {
	return func() (mcplib.Tool, server.ToolHandlerFunc) {
		t := mcplib.NewTool("sha256",
			mcplib.WithDescription("Hashes text with SHA-256, rounds times (the hex digest is hashed again); CPU work for benchmarks."),
			mcplib.WithString("text", mcplib.Required(), mcplib.Description("text to hash")),
			mcplib.WithNumber("rounds", mcplib.Description("rounds of hashing, 1 to 1000000 (default 1)")),
			readOnlyTool,
		)
		return t, func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			text, err := req.RequireString("text")
			if err != nil {
				return mcplib.NewToolResultError(err.Error()), nil
			}
			rounds := req.GetInt("rounds", 1)
			if rounds < 1 || rounds > maxRounds {
				return mcplib.NewToolResultErrorf("rounds must be between 1 and %d", maxRounds), nil
			}
			sum := sha256.Sum256([]byte(text))
			for i := 1; i < rounds; i++ {
				if i%4096 == 0 && ctx.Err() != nil {
					return nil, fmt.Errorf("sha256 cancelled: %w", ctx.Err())
				}
				var hx [64]byte
				hex.Encode(hx[:], sum[:])
				sum = sha256.Sum256(hx[:])
			}
			return mcplib.NewToolResultText(hex.EncodeToString(sum[:])), nil
		}
	}
}

func clusterStatusTool(status StatusFunc) func() (mcplib.Tool, server.ToolHandlerFunc) {
	return func() (mcplib.Tool, server.ToolHandlerFunc) {
		t := mcplib.NewTool("cluster_status",
			mcplib.WithDescription("The answering node's view of the cluster: leader, raft state, members with status and load."),
			readOnlyTool,
		)
		return t, func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			b, err := json.MarshalIndent(status(), "", "  ")
			if err != nil {
				return nil, fmt.Errorf("encode status: %w", err)
			}
			return mcplib.NewToolResultText(string(b)), nil
		}
	}
}
