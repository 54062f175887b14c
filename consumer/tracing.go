package consumer

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tracing"
)

// A job's spans in the worker continue the trace its message carries
// (tracing.Extract): inferq.queue_wait from its acceptance to its
// admission here, then inferq.finish (record and announcement). Its
// batch is a span of its own, inferq.batch, from the admission of its
// first job (the batch forming) to the end of its run, linked to every
// job it holds, with the ONNX Runtime run inside (inferq.run); the result
// write, shared by the jobs of one or more batches, is inferq.write,
// linked to each of them.

// traceAdmit starts following a job: its trace context, and the span of
// its wait in the queue.
func (w *Worker) traceAdmit(it *item, m jetstream.Msg) {
	it.admitted = time.Now()
	it.trace = tracing.Extract(context.Background(), m.Headers())
	queued := it.admitted
	attrs := []attribute.KeyValue{attribute.String("inferq.job", it.job.ID), attribute.String("inferq.model", w.name)}
	if p := it.job.Pipeline; p != nil {
		// A pipeline's later step waited since its message, not its job.
		attrs = append(attrs, attribute.String("inferq.pipeline", p.Pipeline), attribute.String("inferq.step", p.Name))
		if meta, err := m.Metadata(); err == nil {
			queued = meta.Timestamp
		}
	} else if it.job.Record != nil {
		queued = it.job.Record.CreatedAt
	} else if meta, err := m.Metadata(); err == nil {
		queued = meta.Timestamp
	}
	_, span := w.tracer.Start(it.trace, "inferq.queue_wait", trace.WithTimestamp(queued), trace.WithAttributes(attrs...))
	span.End(trace.WithTimestamp(it.admitted))
}

// links are the spans of items' jobs, for the spans they share.
func links(items []*item) []trace.Link {
	out := make([]trace.Link, 0, len(items))
	for _, it := range items {
		if sc := trace.SpanContextFromContext(it.trace); sc.IsValid() {
			out = append(out, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.String("inferq.job", it.job.ID)}})
		}
	}
	return out
}

// traceBatch starts the span of a batch about to run, from its first
// job's admission, and the span of its run inside it; the caller ends
// both (run first).
func (w *Worker) traceBatch(items []*item) (batch, run trace.Span) {
	first, rows := time.Now(), 0
	for _, it := range items {
		if !it.admitted.IsZero() && it.admitted.Before(first) {
			first = it.admitted
		}
		rows += it.rows
	}
	ctx, batch := w.tracer.Start(context.Background(), "inferq.batch", trace.WithTimestamp(first), trace.WithLinks(links(items)...),
		trace.WithAttributes(attribute.String("inferq.model", w.name), attribute.Int("inferq.jobs", len(items)), attribute.Int("inferq.rows", rows)))
	_, run = w.tracer.Start(ctx, "inferq.run")
	return batch, run
}

// traceWrite starts the span of a result write for items' jobs.
func (w *Worker) traceWrite(items []*item, key string) trace.Span {
	_, span := w.tracer.Start(context.Background(), "inferq.write", trace.WithLinks(links(items)...),
		trace.WithAttributes(attribute.String("inferq.model", w.name), attribute.String("inferq.key", key), attribute.Int("inferq.jobs", len(items))))
	return span
}

// traceFinish starts the span of a job's final record and announcement.
func (w *Worker) traceFinish(it *item, status record.Status) trace.Span {
	ctx := it.trace
	if ctx == nil {
		ctx = context.Background()
	}
	_, span := w.tracer.Start(ctx, "inferq.finish", trace.WithAttributes(attribute.String("inferq.job", it.job.ID), attribute.String("inferq.status", string(status))))
	return span
}
