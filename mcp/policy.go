package mcp

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/cel-go/cel"
	mcplib "github.com/mark3labs/mcp-go/mcp"
)

// Policy decides which principal may call which tool: a list of CEL rules,
// any of which allows the call when it evaluates to true. A rule sees
//
//	jwt                  the access token's claims (empty for a static token)
//	principal            the caller
//	mcp.method           "tools/call"
//	mcp.tool.name        the tool's cluster name
//	mcp.tool.annotations the tool's annotations (readOnlyHint, ...)
//
// A rule that fails to evaluate (a claim the token lacks) counts as false.
type Policy struct {
	rules []string
	progs []cel.Program
}

// CompilePolicy compiles rules; the error carries CEL's message and the
// rule's index.
func CompilePolicy(rules []string) (*Policy, error) {
	env, err := cel.NewEnv(
		cel.Variable("jwt", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("principal", cel.StringType),
		cel.Variable("mcp", cel.MapType(cel.StringType, cel.DynType)),
	)
	if err != nil {
		return nil, fmt.Errorf("tool policy environment: %w", err)
	}
	p := &Policy{rules: rules}
	for i, rule := range rules {
		ast, iss := env.Compile(rule)
		if iss.Err() != nil {
			return nil, fmt.Errorf("tool_policy[%d] %q: %s", i, rule, iss.Err())
		}
		if t := ast.OutputType(); t != cel.BoolType && t != cel.DynType {
			return nil, fmt.Errorf("tool_policy[%d] %q: evaluates to %s, want bool", i, rule, t)
		}
		prg, err := env.Program(ast)
		if err != nil {
			return nil, fmt.Errorf("tool_policy[%d] %q: %w", i, rule, err)
		}
		p.progs = append(p.progs, prg)
	}
	return p, nil
}

// allows reports whether the caller under ctx may call tool.
func (p *Policy) allows(ctx context.Context, tool string, annotations map[string]any) bool {
	if p == nil {
		return true
	}
	claims := map[string]any{}
	principal := principalFrom(ctx)
	if id := identityFrom(ctx); id != nil && id.Claims != nil {
		claims = id.Claims
	}
	if annotations == nil {
		annotations = map[string]any{}
	}
	vars := map[string]any{
		"jwt":       claims,
		"principal": principal,
		"mcp": map[string]any{
			"method": string(mcplib.MethodToolsCall),
			"tool":   map[string]any{"name": tool, "annotations": annotations},
		},
	}
	for _, prg := range p.progs {
		out, _, err := prg.Eval(vars)
		if err != nil {
			continue
		}
		if b, ok := out.Value().(bool); ok && b {
			return true
		}
	}
	return false
}

// annotationMap is a tool's annotations as the policy sees them.
func annotationMap(t mcplib.Tool) map[string]any {
	b, err := json.Marshal(t.Annotations)
	if err != nil {
		return map[string]any{}
	}
	m := map[string]any{}
	_ = json.Unmarshal(b, &m)
	return m
}

// policyDeniedCode is the JSON-RPC error code of a call the tool policy
// refuses (HTTP 403).
const policyDeniedCode = -32003

// filterTools keeps the tools the caller under ctx may call (tools/list).
func (s *Server) filterTools(ctx context.Context, tools []mcplib.Tool) []mcplib.Tool {
	if s.policy == nil {
		return tools
	}
	out := make([]mcplib.Tool, 0, len(tools))
	for _, t := range tools {
		if s.policy.allows(ctx, t.Name, annotationMap(t)) {
			out = append(out, t)
		}
	}
	return out
}

// toolAnnotations returns a catalog tool's annotations for the policy.
func (s *Server) toolAnnotations(name string) map[string]any {
	ct, ok := s.cfg.Cluster.FSM().Tool(name)
	if !ok {
		return map[string]any{}
	}
	t, err := toolFromJSON(ct.Spec)
	if err != nil {
		return map[string]any{}
	}
	return annotationMap(t)
}
