package mcp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// operations is an Observer that keeps every timed operation.
type operations struct {
	nopObserver
	mu  sync.Mutex
	ops []string // method|tool|error.type
}

func (o *operations) Operation(method, tool, errorType string, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.ops = append(o.ops, method+"|"+tool+"|"+errorType)
}

func (o *operations) list() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.ops...)
}

func spanAttr(sp sdktrace.ReadOnlySpan, key string) (string, bool) {
	for _, kv := range sp.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit(), true
		}
	}
	return "", false
}

// TestOperationErrorTypes: every request's server span and operation carry
// error.type as the conventions say: nothing on success, tool_error for an
// error result, the JSON-RPC code of an error response, the HTTP status of
// a refusal. A cache write is a child raft span.
func TestOperationErrorTypes(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ops := &operations{}
	failing := server.ServerTool{
		Tool: mcplib.NewTool("fails", mcplib.WithReadOnlyHintAnnotation(true)),
		Handler: func(context.Context, mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			return mcplib.NewToolResultError("no"), nil
		},
	}
	_, s := newSoloNodeConfig(t, func(n *cluster.Node) []ProviderSpec {
		return []ProviderSpec{{Provider: NewStatic(BuiltinName, append(append(BuiltinTools(nil), CacheTools(n)...), failing)...)}}
	}, func(c *Config) {
		c.TracerProvider = tp
		c.Observer = ops
		c.Tokens = map[string]string{"alice-token-0123456789": "alice", "bob-token-0123456789ab": "bob"}
		c.ToolPolicy = []string{`principal == "alice"`}
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	url := serve(t, mux)
	alice := connectAs(t, url, "alice-token-0123456789")
	if got := resultText(callTool(t, alice, "echo", map[string]any{"text": "hi"})); got != "hi" {
		t.Fatalf("echo: %q", got)
	}
	if res := callTool(t, alice, "fails", nil); !res.IsError {
		t.Fatalf("fails: %+v", res)
	}
	if res := callTool(t, alice, "cache_set", map[string]any{"key": "k", "value": "v"}); res.IsError {
		t.Fatalf("cache_set: %+v", res)
	}
	auth := map[string]string{"Authorization": "Bearer alice-token-0123456789"}
	_, body := post(t, url, auth, `{"jsonrpc":"2.0","id":"u1","method":"tools/call","params":{"name":"nosuch","arguments":{}}}`)
	var unknown struct {
		Error struct{ Code int } `json:"error"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(strings.TrimSpace(body), "data: ")), &unknown); err != nil || unknown.Error.Code == 0 {
		t.Fatalf("unknown tool answered %q (%v)", body, err)
	}
	resp, _ := post(t, url, map[string]string{"Authorization": "Bearer bob-token-0123456789ab"},
		`{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}`)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("bob's call: %d", resp.StatusCode)
	}

	want := map[string]string{"echo": "", "fails": "tool_error", "nosuch": "", "echo-bob": "403"}
	want["nosuch"] = strconv.Itoa(unknown.Error.Code)
	got := map[string]string{}
	var cacheWrite, setSpan sdktrace.ReadOnlySpan
	for _, sp := range rec.Ended() {
		switch {
		case sp.Name() == "tools/call cache_set":
			setSpan = sp
		case sp.Name() == "raft apply cache_set":
			cacheWrite = sp
		case strings.HasPrefix(sp.Name(), "tools/call "):
			tool, _ := spanAttr(sp, attrToolName)
			id, _ := spanAttr(sp, attrRequestID)
			if id == "7" {
				tool += "-bob"
			}
			et, _ := spanAttr(sp, attrErrorType)
			got[tool] = et
			if m, _ := spanAttr(sp, attrMethod); m != "tools/call" || sp.SpanKind() != trace.SpanKindServer {
				t.Errorf("span %s: method %q kind %v", sp.Name(), m, sp.SpanKind())
			}
		}
	}
	for tool, et := range want {
		if g, ok := got[tool]; !ok || g != et {
			t.Errorf("span of %s: error.type %q (seen %v), want %q", tool, g, ok, et)
		}
	}
	if setSpan == nil || cacheWrite == nil || cacheWrite.Parent().SpanID() != setSpan.SpanContext().SpanID() {
		t.Errorf("the cache write is not a child of its call: %v %v", setSpan, cacheWrite)
	}
	// Operations: tool names only for catalog tools.
	seen := strings.Join(ops.list(), "\n")
	for _, line := range []string{"tools/call|echo|", "tools/call|fails|tool_error", "tools/call||" + want["nosuch"], "tools/call|echo|403", "initialize||"} {
		if !strings.Contains(seen+"\n", line+"\n") {
			t.Errorf("no operation %q in:\n%s", line, seen)
		}
	}
}

func TestResponseErrorCode(t *testing.T) {
	for body, want := range map[string]string{
		`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}`:                                    "-32602",
		"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"error\":{\"code\":-32603,\"message\":\"\"}}": "-32603",
		`{"jsonrpc":"2.0","id":1,"result":{"structuredContent":{"error":{"code":5}}}}`:                      "",
		`{"jsonrpc":"2.0","id":1,"result":{}}`:                                                              "",
		`{"error":{"code":"nan"}}`:                                                                          "",
		``:                                                                                                  "",
	} {
		if got := responseErrorCode([]byte(body)); got != want {
			t.Errorf("responseErrorCode(%q) = %q, want %q", body, got, want)
		}
	}
}

// TestLogHandlerAddsTraceIDs: a line logged with a span's context names
// the span; one without does not.
func TestLogHandlerAddsTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(LogHandler(slog.NewJSONHandler(&buf, nil))).With("component", "mcp")
	tp := sdktrace.NewTracerProvider()
	ctx, span := tp.Tracer("t").Start(context.Background(), "x")
	defer span.End()
	logger.InfoContext(ctx, "with")
	logger.Info("without")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var with, without map[string]any
	if len(lines) != 2 || json.Unmarshal([]byte(lines[0]), &with) != nil || json.Unmarshal([]byte(lines[1]), &without) != nil {
		t.Fatalf("log: %s", buf.String())
	}
	sc := span.SpanContext()
	if with["trace_id"] != sc.TraceID().String() || with["span_id"] != sc.SpanID().String() || with["component"] != "mcp" {
		t.Fatalf("traced line: %v", with)
	}
	if _, ok := without["trace_id"]; ok {
		t.Fatalf("untraced line has a trace id: %v", without)
	}
}

// TestUpstreamSpanInjectsMeta: the client span of an upstream call is the
// parent the upstream gets in _meta, and no span is made (nor context
// injected) when the call is not traced.
func TestUpstreamSpanInjectsMeta(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	ctx, parent := tp.Tracer("t").Start(context.Background(), "tools/call x", trace.WithSpanKind(trace.SpanKindServer))
	cctx, span := startCallSpan(ctx, "x", attribute.String(attrProvider, "p"))
	meta := injectMeta(cctx, &mcplib.Meta{ProgressToken: "tok"})
	endCallSpan(span, nil, errors.New("boom"))
	parent.End()
	tp2, _ := meta.AdditionalFields["traceparent"].(string)
	if !strings.Contains(tp2, span.SpanContext().SpanID().String()) || meta.ProgressToken != "tok" {
		t.Fatalf("meta %+v does not carry the client span %s", meta, span.SpanContext().SpanID())
	}
	ended := rec.Ended()
	if len(ended) != 2 || ended[0].SpanKind() != trace.SpanKindClient || ended[0].Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Fatalf("spans: %v", ended)
	}
	if et, _ := spanAttr(ended[0], attrErrorType); et != "_OTHER" {
		t.Fatalf("error.type of a failed call: %q", et)
	}
	if c, sp := startCallSpan(context.Background(), "x"); sp != nil || injectMeta(c, nil) != nil {
		t.Fatal("an untraced call made a span or injected a context")
	}
}

// TestTraceFieldsOfAnyTypeStillLimited: a tools/call whose _meta or uri
// holds values of another type is read for admission like any other
// (mcp-go runs such a call), so it cannot slip past the rate limits.
func TestTraceFieldsOfAnyTypeStillLimited(t *testing.T) {
	_, s := newSoloNodeConfig(t, func(n *cluster.Node) []ProviderSpec {
		return []ProviderSpec{{Provider: NewBuiltin(BuiltinName, nil)}}
	}, func(c *Config) {
		c.Tokens = map[string]string{"alice-token-0123456789": "alice"}
		c.RateLimits = &RateLimits{Tools: map[string]Limit{"echo": {Rate: 1.0 / 3600, Burst: 1}}}
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	url := serve(t, mux)
	auth := map[string]string{"Authorization": "Bearer alice-token-0123456789"}
	call := func(params string) int {
		resp, _ := post(t, url, auth, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}`+params+`}}`)
		return resp.StatusCode
	}
	if code := call(""); code != http.StatusOK {
		t.Fatalf("first call: %d", code)
	}
	for _, odd := range []string{`,"_meta":{"traceparent":1}`, `,"_meta":"x"`, `,"uri":1`, `,"protocolVersion":{}`} {
		if code := call(odd); code != http.StatusTooManyRequests {
			t.Errorf("call with %s: %d, want 429 (rate limited like any call)", odd, code)
		}
	}
	var m message
	if err := json.Unmarshal([]byte(`{"method":"tools/call","params":{"name":"echo","_meta":{"traceparent":"00-a-b-01","tracestate":2}}}`), &m); err != nil ||
		m.Method != "tools/call" || m.Params.Meta.Traceparent != "00-a-b-01" || m.Params.Meta.Tracestate != "" {
		t.Fatalf("lenient parse: %+v %v", m, err)
	}
}
