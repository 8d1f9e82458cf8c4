package integration

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// otlpReceiver is an OTLP/HTTP trace receiver on loopback: it keeps every
// span it is sent, with its resource's attributes.
type otlpReceiver struct {
	url string

	mu    sync.Mutex
	spans []recvSpan
}

// recvSpan is one received span, ids in hex.
type recvSpan struct {
	node     string // the resource's service.instance.id
	resource map[string]string
	traceID  string
	spanID   string
	parentID string
	name     string
	kind     tracepb.Span_SpanKind
	attrs    map[string]string
	links    []string // linked span ids
	status   tracepb.Status_StatusCode
}

func startOTLPReceiver(t testing.TB) *otlpReceiver {
	t.Helper()
	rcv := &otlpReceiver{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(rcv.serve), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	rcv.url = "http://" + ln.Addr().String()
	return rcv
}

func (rcv *otlpReceiver) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req collectortrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rcv.mu.Lock()
	for _, rs := range req.ResourceSpans {
		res := attrMap(rs.GetResource().GetAttributes())
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				rec := recvSpan{
					node: res["service.instance.id"], resource: res,
					traceID: hex.EncodeToString(sp.TraceId), spanID: hex.EncodeToString(sp.SpanId),
					parentID: hex.EncodeToString(sp.ParentSpanId), name: sp.Name, kind: sp.Kind,
					attrs: attrMap(sp.Attributes), status: sp.GetStatus().GetCode(),
				}
				for _, l := range sp.Links {
					rec.links = append(rec.links, hex.EncodeToString(l.SpanId))
				}
				rcv.spans = append(rcv.spans, rec)
			}
		}
	}
	rcv.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
	w.Write(out)
}

// attrMap renders OTLP attributes as text.
func attrMap(kvs []*commonpb.KeyValue) map[string]string {
	m := map[string]string{}
	for _, kv := range kvs {
		v := kv.GetValue()
		switch {
		case v.GetStringValue() != "":
			m[kv.Key] = v.GetStringValue()
		default:
			m[kv.Key] = fmt.Sprint(v.GetIntValue())
		}
	}
	return m
}

// trace returns the spans received of trace id.
func (rcv *otlpReceiver) trace(id string) []recvSpan {
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	var out []recvSpan
	for _, sp := range rcv.spans {
		if sp.traceID == id {
			out = append(out, sp)
		}
	}
	return out
}

// find returns the span of spans with the name and kind on node, or nil.
func find(spans []recvSpan, node, name string, kind tracepb.Span_SpanKind) *recvSpan {
	for i := range spans {
		if spans[i].node == node && spans[i].name == name && spans[i].kind == kind {
			return &spans[i]
		}
	}
	return nil
}

// descends reports whether span id descends from ancestor within spans.
func descends(spans []recvSpan, id, ancestor string) bool {
	byID := map[string]recvSpan{}
	for _, sp := range spans {
		byID[sp.spanID] = sp
	}
	for range len(spans) + 1 {
		sp, ok := byID[id]
		if !ok {
			return false
		}
		if sp.parentID == ancestor {
			return true
		}
		id = sp.parentID
	}
	return false
}

// newTracedCluster starts n secured nodes whose spans go to rcv, always
// sampled, with the demo stdio upstream held by one node.
func newTracedCluster(t *testing.T, n int, rcv *otlpReceiver) *testCluster {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "providers.yaml")
	providers := fmt.Sprintf("providers:\n  - name: demo\n    type: stdio\n    command: [%q]\n    prefix: demo_\n    replicas: 1\n", stdioServer)
	if err := os.WriteFile(cfg, []byte(providers), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t}
	for i := range n {
		nd := newNode(t, fmt.Sprintf("node%d", i+1), "--config", cfg, "--bootstrap-expect", fmt.Sprint(n))
		nd.env = []string{
			"OTEL_EXPORTER_OTLP_ENDPOINT=" + rcv.url,
			"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
			"OTEL_TRACES_SAMPLER=always_on",
			"OTEL_BSP_SCHEDULE_DELAY=100",
		}
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		nd.extra = append(nd.extra, c.joinFlags()...)
	}
	c.startAll()
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	return c
}

// Issue 14, acceptance 1 and 2: a call made through a node that does not
// hold the tool yields one trace across both nodes, its context from the
// client's _meta; the holder's span descends from the caller's; the stdio
// upstream receives the context of the holder's client span in _meta. Also:
// the HTTP traceparent parents a request without _meta, a cache write is a
// raft span under its call, the audit line carries the trace,
// and the mcp.server.operation.duration histogram counts the calls.
func TestTraceAcrossNodes(t *testing.T) {
	rcv := startOTLPReceiver(t)
	c := newTracedCluster(t, 3, rcv)
	const tool = "demo_trace_context"
	holder := c.nodes[0].holders(t, tool, 1)[0]
	via := c.except(holder)[0]

	const (
		headerTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
		headerParent = "00f067aa0ba902b7"
		metaTrace    = "0af7651916cd43dd8448eb211c80319c"
		metaParent   = "b7ad6b7169203331"
	)
	cl := mcpgoClient(t, via.mcpURL(), legacy,
		transport.WithHTTPHeaders(map[string]string{"traceparent": "00-" + headerTrace + "-" + headerParent + "-01"}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The catalog reaches each node's MCP server with its next sync.
	waitFor(t, 20*time.Second, func() error {
		list, err := cl.ListTools(ctx, mcplib.ListToolsRequest{})
		if err != nil {
			return err
		}
		for _, tl := range list.Tools {
			if tl.Name == tool {
				return nil
			}
		}
		return fmt.Errorf("%s does not list %s yet", via.id, tool)
	})

	// A call with the trace context in _meta.
	req := mcplib.CallToolRequest{}
	req.Params.Name = tool
	req.Params.Meta = &mcplib.Meta{AdditionalFields: map[string]any{
		"traceparent": "00-" + metaTrace + "-" + metaParent + "-01", "tracestate": "vendor=mcpcluster-test",
	}}
	res, err := cl.CallTool(ctx, req)
	if err != nil || res.IsError || len(res.Content) == 0 {
		t.Fatalf("call %s through %s: %+v %v", tool, via.id, res, err)
	}
	var upstream map[string]string
	if err := json.Unmarshal([]byte(res.Content[0].(mcplib.TextContent).Text), &upstream); err != nil {
		t.Fatalf("trace context the upstream got: %v", err)
	}
	// traceparent: 00-<trace id>-<parent span id>-<flags>
	parts := strings.Split(upstream["traceparent"], "-")
	if len(parts) != 4 || parts[1] != metaTrace || parts[3] != "01" {
		t.Fatalf("the stdio upstream got traceparent %q, want one of trace %s, sampled", upstream["traceparent"], metaTrace)
	}
	if upstream["tracestate"] != "vendor=mcpcluster-test" {
		t.Fatalf("the stdio upstream got tracestate %q", upstream["tracestate"])
	}

	// Calls without _meta: their parent is the HTTP header's.
	if _, _, err := callTool(ctx, cl, tool, nil); err != nil {
		t.Fatalf("second call: %v", err)
	}
	if _, _, err := callTool(ctx, cl, "cache_set", map[string]any{"key": "traced", "value": "v"}); err != nil {
		t.Fatalf("cache_set: %v", err)
	}

	name := "tools/call " + tool
	var spans []recvSpan
	var front, hop, served, up *recvSpan
	waitFor(t, 20*time.Second, func() error {
		spans = rcv.trace(metaTrace)
		front = find(spans, via.id, name, tracepb.Span_SPAN_KIND_SERVER)
		hop = find(spans, via.id, name, tracepb.Span_SPAN_KIND_CLIENT)
		served = find(spans, holder, name, tracepb.Span_SPAN_KIND_SERVER)
		up = find(spans, holder, "tools/call trace_context", tracepb.Span_SPAN_KIND_CLIENT)
		if front == nil || hop == nil || served == nil || up == nil {
			return fmt.Errorf("spans of trace %s so far: %+v", metaTrace, spans)
		}
		return nil
	})
	if front.parentID != metaParent {
		t.Errorf("front door span's parent is %s, want the _meta's %s", front.parentID, metaParent)
	}
	if len(front.links) != 1 || front.links[0] != headerParent {
		t.Errorf("front door span links %v, want the HTTP header's span %s", front.links, headerParent)
	}
	for k, want := range map[string]string{
		"mcp.method.name": "tools/call", "gen_ai.tool.name": tool, "gen_ai.operation.name": "execute_tool",
		"mcp.protocol.version": legacy, "network.transport": "tcp", "network.protocol.name": "http",
		"client.address": "127.0.0.1", "mcpcluster.route": "forwarded", "mcpcluster.holder": holder,
	} {
		if got := front.attrs[k]; got != want {
			t.Errorf("front door span %s = %q, want %q (attributes %v)", k, got, want, front.attrs)
		}
	}
	for _, k := range []string{"jsonrpc.request.id", "mcp.session.id"} {
		if front.attrs[k] == "" {
			t.Errorf("front door span has no %s: %v", k, front.attrs)
		}
	}
	if _, failed := front.attrs["error.type"]; failed {
		t.Errorf("front door span of a call that succeeded has error.type %q", front.attrs["error.type"])
	}
	for k, want := range map[string]string{"service.name": "mcpcluster", "service.instance.id": via.id} {
		if front.resource[k] != want {
			t.Errorf("resource %s = %q, want %q", k, front.resource[k], want)
		}
	}
	if front.resource["service.version"] == "" {
		t.Errorf("resource has no service.version: %v", front.resource)
	}
	if hop.parentID != front.spanID || hop.attrs["mcpcluster.holder"] != holder || hop.attrs["server.address"] != "127.0.0.1" {
		t.Errorf("forwarding span %+v is not the front door's child toward %s", hop, holder)
	}
	if !descends(spans, served.spanID, front.spanID) || served.parentID != hop.spanID {
		t.Errorf("holder's span (parent %s) does not descend from the caller's %s through the hop %s", served.parentID, front.spanID, hop.spanID)
	}
	if served.attrs["mcpcluster.forwarded_from"] != via.id || served.attrs["gen_ai.tool.name"] != tool {
		t.Errorf("holder's span attributes %v", served.attrs)
	}
	if up.parentID != served.spanID || up.attrs["network.transport"] != "pipe" || up.attrs["mcpcluster.provider"] != "demo" {
		t.Errorf("upstream span %+v is not the holder span's child over a pipe", up)
	}
	if parts[2] != up.spanID {
		t.Errorf("the upstream got parent span %s, want the upstream client span %s", parts[2], up.spanID)
	}

	// The header's trace: initialize, the second call, and the cache write
	// with its raft span.
	waitFor(t, 20*time.Second, func() error {
		spans = rcv.trace(headerTrace)
		init := find(spans, via.id, "initialize", tracepb.Span_SPAN_KIND_SERVER)
		call := find(spans, via.id, name, tracepb.Span_SPAN_KIND_SERVER)
		set := find(spans, via.id, "tools/call cache_set", tracepb.Span_SPAN_KIND_SERVER)
		write := find(spans, via.id, "raft apply cache_set", tracepb.Span_SPAN_KIND_INTERNAL)
		if init == nil || call == nil || set == nil || write == nil {
			return fmt.Errorf("spans of trace %s so far: %+v", headerTrace, spans)
		}
		if init.parentID != headerParent || call.parentID != headerParent {
			return fmt.Errorf("initialize's parent %s, the call's %s, want %s", init.parentID, call.parentID, headerParent)
		}
		if !descends(spans, write.spanID, set.spanID) {
			return fmt.Errorf("cache write %+v is not under its call %s", write, set.spanID)
		}
		return nil
	})

	// The audit line of the first call names its trace and span.
	if log := via.log(); !strings.Contains(log, "trace_id="+metaTrace+" span_id="+front.spanID) {
		t.Errorf("no audit line of trace %s span %s in %s's log", metaTrace, front.spanID, via.id)
	}
	// mcp.server.operation.duration counted both calls.
	waitFor(t, 10*time.Second, func() error {
		_, body, err := via.do(ctx, http.MethodGet, "/metrics", "")
		if err != nil {
			return err
		}
		want := `mcp_server_operation_duration_seconds_count{error_type="",gen_ai_tool_name="` + tool + `",mcp_method_name="tools/call"} 2`
		if !strings.Contains(body, want) {
			return fmt.Errorf("no %s in /metrics", want)
		}
		return nil
	})
}
