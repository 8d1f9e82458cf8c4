// Package mcp is mcpcluster's MCP front door: an mcp-go streamable HTTP
// server on every node that lists the whole cluster's tools, runs a call on
// this node when it holds the tool's provider and forwards it to a holder
// otherwise, and keeps MCP sessions in the replicated state so that any node
// accepts them.
package mcp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
)

// Provider is a source of tools that a node can run: the built-in tools, an
// upstream MCP server started as a command, or one reached at a URL.
type Provider interface {
	// Name is the provider's cluster-wide name.
	Name() string
	// Start makes the provider ready (an upstream command is started).
	Start(ctx context.Context) error
	// Tools lists the provider's tools.
	Tools(ctx context.Context) ([]mcplib.Tool, error)
	// Call runs one tool call.
	Call(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error)
	// Close stops the provider (an upstream command is stopped).
	Close() error
}

// Placement says how many nodes run a provider.
type Placement struct {
	// Replicas is 0 for "everywhere" (every capable node serves it) or the
	// number of nodes the leader assigns it to.
	Replicas int
	// CacheTTL caches successful results of the provider's tools
	// cluster-wide for this long; 0 disables caching.
	CacheTTL time.Duration
	// ToolCacheTTL overrides CacheTTL per tool (by its cluster name).
	ToolCacheTTL map[string]time.Duration
	// SharedCache lets every principal be answered from one cached result
	// of a call; by default results are cached per principal.
	SharedCache bool
	// ToolSharedCache sets SharedCache per tool (by its cluster name).
	ToolSharedCache map[string]bool
}

// sharedCacheMeta marks, in a catalog tool's _meta, a tool whose cached
// results all principals share, so that every node (holder or not) keys
// the cache alike. It is removed before clients see the tool.
const sharedCacheMeta = "mcpcluster/sharedCache"

// sharedCache reports whether results of tool are cached for all principals.
func (p Placement) sharedCache(tool string) bool {
	if v, ok := p.ToolSharedCache[tool]; ok {
		return v
	}
	return p.SharedCache
}

// ProviderSpec is a provider with its placement, as a node declares it.
type ProviderSpec struct {
	Provider
	Placement
}

// ProgressFunc reports progress of a running call to whoever is waiting for
// it: the MCP client on this node, or the node that forwarded the call.
type ProgressFunc func(progress, total float64, message string)

type progressKey struct{}

// withProgress returns ctx carrying the progress sink fn.
func withProgress(ctx context.Context, fn ProgressFunc) context.Context {
	return context.WithValue(ctx, progressKey{}, fn)
}

// ReportProgress sends a progress update for the call running under ctx; it
// does nothing when the caller asked for no progress.
func ReportProgress(ctx context.Context, progress, total float64, message string) {
	if fn, ok := ctx.Value(progressKey{}).(ProgressFunc); ok && fn != nil {
		fn(progress, total, message)
	}
}

// toolJSON is a tool definition as stored in the catalog.
func toolJSON(t mcplib.Tool) (json.RawMessage, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encode tool %s: %w", t.Name, err)
	}
	return b, nil
}

// toolFromJSON rebuilds a tool definition from the catalog, keeping its
// input and output schemas byte for byte.
func toolFromJSON(b []byte) (mcplib.Tool, error) {
	var t mcplib.Tool
	if err := json.Unmarshal(b, &t); err != nil {
		return t, fmt.Errorf("decode tool: %w", err)
	}
	var raw struct {
		InputSchema  json.RawMessage `json:"inputSchema"`
		OutputSchema json.RawMessage `json:"outputSchema"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return t, fmt.Errorf("decode tool schemas: %w", err)
	}
	if len(raw.InputSchema) > 0 {
		t.RawInputSchema = raw.InputSchema
		t.InputSchema = mcplib.ToolInputSchema{}
	}
	if len(raw.OutputSchema) > 0 {
		t.RawOutputSchema = raw.OutputSchema
		t.OutputSchema = mcplib.ToolOutputSchema{}
	}
	if t.Name == "" {
		return t, errors.New("decode tool: missing name")
	}
	return t, nil
}

// safeToRepeat reports whether a call of t that may already have run can be
// sent again to another holder: the tool says it is read-only or idempotent.
func safeToRepeat(t mcplib.Tool) bool {
	a := t.Annotations
	return (a.ReadOnlyHint != nil && *a.ReadOnlyHint) || (a.IdempotentHint != nil && *a.IdempotentHint)
}
