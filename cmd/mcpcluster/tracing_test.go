package main

import (
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// otelEnv lists the variables setupTracing and the exporters read; each
// test starts from none of them set.
var otelEnv = []string{
	"OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_INSECURE",
	"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER",
}

func clearOtelEnv(t *testing.T) {
	for _, k := range otelEnv {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

func TestTracingOffUnlessAsked(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{"nothing set", nil},
		{"only a service name", map[string]string{"OTEL_SERVICE_NAME": "x"}},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}},
		{"sdk disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clearOtelEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			tr, err := setupTracing(context.Background(), os.Getenv, "n1")
			if err != nil || tr != nil {
				t.Fatalf("setupTracing = %v, %v; want off", tr, err)
			}
		})
	}
}

func TestTracingRefusesWhatItCannotExport(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, `OTEL_TRACES_EXPORTER="zipkin"`},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, `OTEL_EXPORTER_OTLP_PROTOCOL="http/json"`},
	} {
		clearOtelEnv(t)
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		tr, err := setupTracing(context.Background(), os.Getenv, "n1")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("env %v: setupTracing = %v, %v; want an error naming %s", tc.env, tr, err, tc.want)
		}
	}
}

// grpcCollector is an OTLP/gRPC trace receiver on loopback.
type grpcCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu   sync.Mutex
	reqs []*collectortrace.ExportTraceServiceRequest
}

func (c *grpcCollector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	c.reqs = append(c.reqs, req)
	c.mu.Unlock()
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// TestTracingOverGRPC: OTEL_EXPORTER_OTLP_PROTOCOL=grpc sends spans to a
// gRPC collector, under a resource that names the node, where
// OTEL_RESOURCE_ATTRIBUTES adds to it and OTEL_SERVICE_NAME wins.
func TestTracingOverGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &grpcCollector{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, col)
	go srv.Serve(ln)
	defer srv.Stop()

	clearOtelEnv(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+ln.Addr().String())
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
	t.Setenv("OTEL_SERVICE_NAME", "mcp-east")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := setupTracing(ctx, os.Getenv, "node7")
	if err != nil || tr == nil {
		t.Fatalf("setupTracing = %v, %v", tr, err)
	}
	if tr.exporter != "otlp/grpc" {
		t.Fatalf("exporter %q", tr.exporter)
	}
	_, span := tr.provider.Tracer("test").Start(ctx, "tools/call echo")
	span.End()
	if err := tr.shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.reqs) == 0 || len(col.reqs[0].ResourceSpans) == 0 {
		t.Fatal("the collector received no spans")
	}
	rs := col.reqs[0].ResourceSpans[0]
	res := map[string]string{}
	for _, kv := range rs.GetResource().GetAttributes() {
		res[kv.Key] = kv.GetValue().GetStringValue()
	}
	for k, want := range map[string]string{
		"service.name": "mcp-east", "service.instance.id": "node7", "deployment.environment.name": "test",
	} {
		if res[k] != want {
			t.Errorf("resource %s = %q, want %q (%v)", k, res[k], want, res)
		}
	}
	if res["service.version"] == "" {
		t.Errorf("no service.version in %v", res)
	}
	if got := rs.ScopeSpans[0].Spans[0].Name; got != "tools/call echo" {
		t.Errorf("span %q", got)
	}
}
