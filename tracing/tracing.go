// Package tracing follows a job across processes with OpenTelemetry: the
// W3C trace context a request brings (or one started at the API) travels
// in the job's NATS headers, and the worker continues it. Spans are
// exported over OTLP/HTTP where an endpoint is configured; elsewhere the
// tracer is a no-op and costs nothing.
package tracing

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Options configure New. The zero value traces nothing.
type Options struct {
	// Endpoint is the OTLP/HTTP collector's base URL, such as
	// http://otel-collector:4318; spans go to Endpoint/v1/traces. Empty
	// turns tracing off.
	Endpoint string
	// Service names the process in its spans: inferq-api, inferq-worker.
	Service string
}

// New returns a tracer provider and a function that flushes and stops
// it. Without an endpoint the provider is a no-op.
func New(ctx context.Context, opts Options) (trace.TracerProvider, func(context.Context) error, error) {
	if opts.Endpoint == "" {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	u, err := url.Parse(opts.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, nil, fmt.Errorf("OTLP endpoint %q: want an http(s) URL such as http://otel-collector:4318", opts.Endpoint)
	}
	eopts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(u.JoinPath("v1", "traces").String())}
	exp, err := otlptracehttp.New(ctx, eopts...)
	if err != nil {
		return nil, nil, fmt.Errorf("OTLP exporter: %w", err)
	}
	res := resource.NewSchemaless(attribute.String("service.name", opts.Service))
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(time.Second)), sdktrace.WithResource(res))
	return tp, tp.Shutdown, nil
}

// Tracer is the tracer of inferq's spans from tp (a no-op when nil).
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	return tp.Tracer("github.com/inferq/inferq")
}

var w3c = propagation.TraceContext{}

// FromHTTP is ctx with the W3C trace context of an HTTP request's headers
// (traceparent, tracestate), where it has one.
func FromHTTP(ctx context.Context, h http.Header) context.Context {
	return w3c.Extract(ctx, propagation.HeaderCarrier(h))
}

// Inject writes ctx's trace context into headers (an http.Header or a
// nats.Header, both map[string][]string), where ctx has one.
func Inject(ctx context.Context, headers map[string][]string) {
	w3c.Inject(ctx, propagation.HeaderCarrier(headers))
}

// Extract is ctx with the trace context headers carry.
func Extract(ctx context.Context, headers map[string][]string) context.Context {
	return w3c.Extract(ctx, propagation.HeaderCarrier(headers))
}
