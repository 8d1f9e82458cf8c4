package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/mcpcluster/mcpcluster/mcp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Tracing is configured only through the standard OpenTelemetry
// environment, like any instrumented program:
//
//	OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  where spans go (turns tracing on)
//	OTEL_EXPORTER_OTLP_PROTOCOL / OTEL_EXPORTER_OTLP_TRACES_PROTOCOL  http/protobuf (default) or grpc
//	OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _CERTIFICATE, _INSECURE, ...  read by the exporters
//	OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG                       read by the SDK (default parentbased_always_on)
//	OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES                         override the resource below
//	OTEL_BSP_*                                                          the batch span processor
//	OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true                 off, whatever else is set
//
// With none of them set tracing is off and costs nothing: no provider is
// made and the front door starts no span.

// tracing is the node's tracer provider; nil when tracing is off.
type tracing struct {
	provider *sdktrace.TracerProvider
	exporter string // "otlp/http" or "otlp/grpc", for the log
}

// setupTracing reads the environment through getenv and, when it asks for
// traces, builds an OTLP exporter and a provider whose resource names the
// node: service.name=mcpcluster, service.instance.id, service.version.
func setupTracing(ctx context.Context, getenv func(string) string, nodeID string) (*tracing, error) {
	if strings.EqualFold(strings.TrimSpace(getenv("OTEL_SDK_DISABLED")), "true") {
		return nil, nil
	}
	endpoint := getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") + getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return nil, nil
	case "":
		if endpoint == "" {
			return nil, nil
		}
	case "otlp":
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: mcpcluster exports traces with otlp (or none)", exp)
	}
	protocol := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var (
		exporter sdktrace.SpanExporter
		err      error
		name     string
	)
	switch strings.TrimSpace(protocol) {
	case "", "http/protobuf":
		exporter, err = otlptracehttp.New(ctx)
		name = "otlp/http"
	case "grpc":
		exporter, err = otlptracegrpc.New(ctx)
		name = "otlp/grpc"
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%q: mcpcluster exports traces with http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("trace exporter %s: %w", name, err)
	}
	// Later options win: the environment overrides mcpcluster's own names.
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(
			attribute.String("service.name", "mcpcluster"),
			attribute.String("service.instance.id", nodeID),
			attribute.String("service.version", mcp.Version),
		),
		resource.WithFromEnv(),
	)
	if err != nil {
		_ = exporter.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	return &tracing{provider: tp, exporter: name}, nil
}

// shutdown sends the spans still buffered and stops the exporter.
func (t *tracing) shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if err := t.provider.Shutdown(ctx); err != nil {
		return fmt.Errorf("stop tracing: %w", err)
	}
	return nil
}
