package mcp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Tracing follows the OpenTelemetry semantic conventions for MCP: a span
// named "{mcp.method.name} {target}" on every hop of a request. The front
// door opens the server span of a client's request; a forwarded call gets
// a client span on the node that forwards it and a server span on the
// holder; a call to an upstream MCP server gets a client span whose
// context travels in the upstream request's _meta. With no tracer
// provider configured none of this runs.

// instrumentation names the tracer of this package.
const instrumentation = "github.com/mcpcluster/mcpcluster/mcp"

// Attribute keys of the MCP, gen-ai, JSON-RPC and network conventions, and
// mcpcluster's own.
const (
	attrMethod        = "mcp.method.name"
	attrSession       = "mcp.session.id"
	attrProtocol      = "mcp.protocol.version"
	attrResourceURI   = "mcp.resource.uri"
	attrToolName      = "gen_ai.tool.name"
	attrPromptName    = "gen_ai.prompt.name"
	attrOperation     = "gen_ai.operation.name"
	attrRequestID     = "jsonrpc.request.id"
	attrErrorType     = "error.type"
	attrClientAddr    = "client.address"
	attrClientPort    = "client.port"
	attrServerAddr    = "server.address"
	attrServerPort    = "server.port"
	attrTransport     = "network.transport"
	attrProtoName     = "network.protocol.name"
	attrProtoVersion  = "network.protocol.version"
	attrNode          = "mcpcluster.node.id"
	attrHolder        = "mcpcluster.holder"
	attrForwardedFrom = "mcpcluster.forwarded_from"
	attrProvider      = "mcpcluster.provider"
	attrRoute         = "mcpcluster.route"

	opExecuteTool = "execute_tool"
	errToolError  = "tool_error"
)

// propagator carries W3C trace context and baggage, in HTTP headers
// between nodes and in params._meta to and from MCP peers (MCP reserves
// the traceparent, tracestate and baggage keys there).
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// traceMeta is the trace context a client may send in params._meta.
type traceMeta struct {
	Traceparent string `json:"traceparent"`
	Tracestate  string `json:"tracestate"`
	Baggage     string `json:"baggage"`
}

// UnmarshalJSON reads the string members it knows and ignores the rest,
// and any value that is not an object: the trace context never makes a
// request unreadable to the front door.
func (m *traceMeta) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if json.Unmarshal(b, &raw) != nil {
		return nil
	}
	for _, k := range m.Keys() {
		var v string
		if json.Unmarshal(raw[k], &v) == nil {
			m.Set(k, v)
		}
	}
	return nil
}

// looseString is a JSON string, or "" for a value of another type.
type looseString string

func (s *looseString) UnmarshalJSON(b []byte) error {
	var v string
	if json.Unmarshal(b, &v) == nil {
		*s = looseString(v)
	}
	return nil
}

// Get, Set and Keys make traceMeta a propagation.TextMapCarrier.
func (m *traceMeta) Get(key string) string {
	switch key {
	case "traceparent":
		return m.Traceparent
	case "tracestate":
		return m.Tracestate
	case "baggage":
		return m.Baggage
	}
	return ""
}

func (m *traceMeta) Set(key, value string) {
	switch key {
	case "traceparent":
		m.Traceparent = value
	case "tracestate":
		m.Tracestate = value
	case "baggage":
		m.Baggage = value
	}
}

func (m *traceMeta) Keys() []string { return []string{"traceparent", "tracestate", "baggage"} }

// spanName is "{mcp.method.name} {target}", or the method alone.
func spanName(method, target string) string {
	if target == "" {
		return method
	}
	return method + " " + target
}

// startServerSpan opens the server span of a client's JSON-RPC request.
// Its parent is the trace context in params._meta when the client sent
// one, else the HTTP traceparent header; when both are there and differ,
// the header's is a link.
func (s *Server) startServerSpan(r *http.Request, msg message) (context.Context, trace.Span) {
	ctx := r.Context()
	fromHeader := propagator.Extract(ctx, propagation.HeaderCarrier(r.Header))
	parent := fromHeader
	var opts []trace.SpanStartOption
	if msg.Params.Meta.Traceparent != "" {
		fromMeta := propagator.Extract(ctx, &msg.Params.Meta)
		if sc := trace.SpanContextFromContext(fromMeta); sc.IsValid() {
			parent = fromMeta
			if hsc := trace.SpanContextFromContext(fromHeader); hsc.IsValid() && !hsc.Equal(sc) {
				opts = append(opts, trace.WithLinks(trace.Link{SpanContext: hsc}))
			}
		}
	}
	method := methodLabel(msg.Method)
	if method == "other" {
		method = "_OTHER"
	}
	attrs := make([]attribute.KeyValue, 0, 16)
	attrs = append(attrs, attribute.String(attrMethod, method), attribute.String(attrNode, s.node))
	target := ""
	switch msg.Method {
	case string(mcplib.MethodToolsCall):
		target = msg.Params.Name
		attrs = append(attrs, attribute.String(attrToolName, target), attribute.String(attrOperation, opExecuteTool))
	case string(mcplib.MethodPromptsGet):
		target = msg.Params.Name
		attrs = append(attrs, attribute.String(attrPromptName, target))
	case string(mcplib.MethodResourcesRead):
		attrs = append(attrs, attribute.String(attrResourceURI, string(msg.Params.URI)))
	}
	if id := jsonrpcID(msg.ID); id != "" {
		attrs = append(attrs, attribute.String(attrRequestID, id))
	}
	if v := r.Header.Get("Mcp-Session-Id"); v != "" {
		attrs = append(attrs, attribute.String(attrSession, v))
	}
	if v := r.Header.Get("Mcp-Protocol-Version"); v != "" {
		attrs = append(attrs, attribute.String(attrProtocol, v))
	} else if msg.Params.ProtocolVersion != "" {
		attrs = append(attrs, attribute.String(attrProtocol, string(msg.Params.ProtocolVersion)))
	}
	attrs = append(attrs, networkAttrs(r)...)
	opts = append(opts, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	return s.tracer.Start(parent, spanName(method, target), opts...)
}

// networkAttrs are the client's address and the protocol of request r.
func networkAttrs(r *http.Request) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		attribute.String(attrTransport, "tcp"),
		attribute.String(attrProtoName, "http"),
		attribute.String(attrProtoVersion, strconv.Itoa(r.ProtoMajor)+"."+strconv.Itoa(r.ProtoMinor)),
	}
	if host, port, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		attrs = append(attrs, attribute.String(attrClientAddr, host))
		if p, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, attribute.Int(attrClientPort, p))
		}
	}
	return attrs
}

// serverAttrs are server.address and server.port of addr (host:port).
func serverAttrs(addr string) []attribute.KeyValue {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return []attribute.KeyValue{attribute.String(attrServerAddr, addr)}
	}
	attrs := []attribute.KeyValue{attribute.String(attrServerAddr, host)}
	if p, err := strconv.Atoi(port); err == nil {
		attrs = append(attrs, attribute.Int(attrServerPort, p))
	}
	return attrs
}

// jsonrpcID is a JSON-RPC id as text: a string's contents, a number's digits.
func jsonrpcID(raw []byte) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	if raw[0] == '"' {
		if s, err := strconv.Unquote(string(raw)); err == nil {
			return s
		}
	}
	return string(raw)
}

// endSpan sets error.type and the error status when errType is set, and
// ends the span.
func endSpan(span trace.Span, errType, description string) {
	if errType != "" {
		span.SetAttributes(attribute.String(attrErrorType, errType))
		span.SetStatus(codes.Error, description)
	}
	span.End()
}

// callErrorType classifies how a call ended for error.type: "" when it
// succeeded, tool_error for an error result, else the kind of failure.
func callErrorType(res *mcplib.CallToolResult, err error) string {
	switch {
	case err == nil && res != nil && res.IsError:
		return errToolError
	case err == nil:
		return ""
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, ErrBusy):
		return "busy"
	case errors.Is(err, ErrNotHolder):
		return "not_holder"
	case errors.Is(err, ErrUnknownTool):
		return "unknown_tool"
	case errors.Is(err, ErrNoHolder):
		return "no_holder"
	}
	return "_OTHER"
}

// startCallSpan opens a client span for a tools/call this node sends to
// another server (a holder or an upstream), as a child of the span in
// ctx. It does nothing, at no cost, when ctx carries no recording span.
func startCallSpan(ctx context.Context, tool string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, nil
	}
	base := []attribute.KeyValue{
		attribute.String(attrMethod, string(mcplib.MethodToolsCall)),
		attribute.String(attrToolName, tool),
		attribute.String(attrOperation, opExecuteTool),
	}
	return parent.TracerProvider().Tracer(instrumentation).Start(ctx, spanName(string(mcplib.MethodToolsCall), tool),
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(append(base, attrs...)...))
}

// endCallSpan ends a span from startCallSpan, if one was started.
func endCallSpan(span trace.Span, res *mcplib.CallToolResult, err error) {
	if span == nil {
		return
	}
	desc := ""
	if err != nil {
		desc = err.Error()
	}
	endSpan(span, callErrorType(res, err), desc)
}

// injectMeta returns meta with the trace context of ctx added, for a
// request to an upstream MCP server; meta unchanged without a span.
func injectMeta(ctx context.Context, meta *mcplib.Meta) *mcplib.Meta {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return meta
	}
	var tm traceMeta
	propagator.Inject(ctx, &tm)
	if meta == nil {
		meta = &mcplib.Meta{}
	}
	if meta.AdditionalFields == nil {
		meta.AdditionalFields = map[string]any{}
	}
	for _, k := range tm.Keys() {
		if v := tm.Get(k); v != "" {
			meta.AdditionalFields[k] = v
		}
	}
	return meta
}

// responseErrorCode finds the JSON-RPC error code at the start of a
// response body (plain JSON or an SSE event): "" when it is a result.
func responseErrorCode(head []byte) string {
	e := bytes.Index(head, []byte(`"error":{"code":`))
	if e < 0 {
		return ""
	}
	if r := bytes.Index(head, []byte(`"result":`)); r >= 0 && r < e {
		return ""
	}
	rest := head[e+len(`"error":{"code":`):]
	end := bytes.IndexAny(rest, ",}")
	if end <= 0 {
		return ""
	}
	code := strings.TrimSpace(string(rest[:end]))
	if _, err := strconv.Atoi(code); err != nil {
		return ""
	}
	return code
}

// LogHandler adds the trace_id and span_id of the span in a record's
// context to every record logged with one (the *Context methods of
// slog.Logger), so the lines about a call can be found from its trace.
func LogHandler(h slog.Handler) slog.Handler { return traceLogHandler{h} }

type traceLogHandler struct{ slog.Handler }

func (h traceLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceLogHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceLogHandler) WithGroup(name string) slog.Handler {
	return traceLogHandler{h.Handler.WithGroup(name)}
}

// operation is one JSON-RPC request through the front door: timed for
// mcp.server.operation.duration, and traced when tracing is on.
type operation struct {
	s      *Server
	ctx    context.Context
	span   trace.Span // nil without tracing
	method string
	tool   string
	start  time.Time
	call   *callTrace // a tools/call: how routing ended it
}

// startOperation begins the operation of request r with body msg.
func (s *Server) startOperation(r *http.Request, msg message) *operation {
	op := &operation{s: s, ctx: r.Context(), method: methodLabel(msg.Method), start: time.Now()}
	if msg.Method == string(mcplib.MethodToolsCall) && s.isRegistered(msg.Params.Name) {
		op.tool = msg.Params.Name // only catalog tools: clients cannot grow the series
	}
	if s.tracer != nil {
		op.ctx, op.span = s.startServerSpan(r, msg)
	}
	return op
}

// end records the operation once its response is written: error.type is
// the HTTP status of a refused request, the JSON-RPC error code of an
// error response, or tool_error for a call whose result is an error.
func (op *operation) end(sw *statusWriter) {
	errType, desc := "", ""
	var route traceView
	if op.call != nil {
		route = op.call.snapshot()
	}
	code := ""
	if sw.status < 400 {
		code = responseErrorCode(sw.head)
	}
	switch {
	case sw.status >= 400:
		errType, desc = strconv.Itoa(sw.status), http.StatusText(sw.status)
	case code != "":
		errType, desc = code, "JSON-RPC error "+code
		if route.err != "" {
			desc = route.err
		}
	case route.failed:
		errType, desc = errToolError, route.err
	}
	if op.s.ops != nil {
		op.s.ops.Operation(op.method, op.tool, errType, time.Since(op.start))
	}
	if op.span == nil {
		return
	}
	if route.where != "" {
		op.span.SetAttributes(attribute.String(attrRoute, route.where))
	}
	if route.ranOn != "" {
		op.span.SetAttributes(attribute.String(attrHolder, route.ranOn))
	}
	endSpan(op.span, errType, desc)
}
