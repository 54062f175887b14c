package main

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
)

// otlpReceiver is an OTLP/HTTP trace receiver, as a collector is: it
// decodes what it is sent and keeps every span with its service's name.
type otlpReceiver struct {
	*httptest.Server
	mu    sync.Mutex
	spans []receivedSpan
}

type receivedSpan struct {
	service string
	*tracepb.Span
}

func startOTLPReceiver(t *testing.T) *otlpReceiver {
	r := &otlpReceiver{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v1/traces" {
			http.NotFound(w, req)
			return
		}
		var body io.Reader = req.Body
		if req.Header.Get("Content-Encoding") == "gzip" {
			gz, err := gzip.NewReader(req.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = gz
		}
		b, _ := io.ReadAll(body)
		var msg coltracepb.ExportTraceServiceRequest
		if err := proto.Unmarshal(b, &msg); err != nil {
			t.Errorf("OTLP receiver: undecodable request: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range msg.ResourceSpans {
			service := ""
			for _, a := range rs.GetResource().GetAttributes() {
				if a.Key == "service.name" {
					service = a.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					r.spans = append(r.spans, receivedSpan{service, s})
				}
			}
		}
		r.mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Write(out)
	}))
	t.Cleanup(r.Close)
	return r
}

// span finds the span of name in trace, or nil.
func (r *otlpReceiver) span(trace []byte, name string) *receivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.spans {
		if s := &r.spans[i]; s.Name == name && bytes.Equal(s.TraceId, trace) {
			return s
		}
	}
	return nil
}

// A job's trace runs from the client's traceparent through the API and,
// in a separate worker process, through its queue wait, its batch (linked
// to the job), the ONNX Runtime run, the result write and its final
// record, every span exported over OTLP to a real receiver with the right
// parents.
func TestTraces(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a worker process; skipped with -short")
	}
	recv := startOTLPReceiver(t)
	ns := testenv.JetStream(t)
	common := []string{"--nats", ns.ClientURL(), "--models", irisRepo(t, "iris"), "--storage", t.TempDir(), "--log-level", "warn", "--otlp-endpoint", recv.URL}
	startWorkerProcess(t, common...)
	s := startAPI(t, common...)

	const traceHex, parentHex = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	trace, _ := hex.DecodeString(traceHex)
	parent, _ := hex.DecodeString(parentHex)
	id := acceptedID(t, do(t, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob), "traceparent", "00-"+traceHex+"-"+parentHex+"-01"))
	if rec := s.await(t, id, 60*time.Second); rec.Status != record.Succeeded {
		t.Fatalf("job: %+v", rec)
	}
	names := []string{"inferq.accept", "inferq.queue_wait", "inferq.batch", "inferq.run", "inferq.write", "inferq.finish"}
	got := map[string]*receivedSpan{}
	eventually(t, 30*time.Second, "every span of the job is exported", func() bool {
		for _, n := range names {
			if n == "inferq.batch" || n == "inferq.run" || n == "inferq.write" {
				continue // their own traces, linked to the job's
			}
			if got[n] = recv.span(trace, n); got[n] == nil {
				return false
			}
		}
		return true
	})
	accept := got["inferq.accept"]
	if accept.service != "inferq-api" || !bytes.Equal(accept.ParentSpanId, parent) {
		t.Errorf("accept: service %q parent %x, want inferq-api under the client's %x", accept.service, accept.ParentSpanId, parent)
	}
	for _, n := range []string{"inferq.queue_wait", "inferq.finish"} {
		if sp := got[n]; sp.service != "inferq-worker" || !bytes.Equal(sp.ParentSpanId, accept.SpanId) {
			t.Errorf("%s: service %q parent %x, want inferq-worker under the API's accept span %x", n, sp.service, sp.ParentSpanId, accept.SpanId)
		}
	}
	// The batch and the write are spans of their own, linked to each job
	// they served; the run is inside the batch.
	linked := func(name string) *receivedSpan {
		recv.mu.Lock()
		defer recv.mu.Unlock()
		for i := range recv.spans {
			sp := &recv.spans[i]
			if sp.Name != name {
				continue
			}
			for _, l := range sp.Links {
				if bytes.Equal(l.TraceId, trace) && bytes.Equal(l.SpanId, accept.SpanId) {
					return sp
				}
			}
		}
		return nil
	}
	var batch, write *receivedSpan
	eventually(t, 30*time.Second, "the batch and the write, linked to the job", func() bool {
		batch, write = linked("inferq.batch"), linked("inferq.write")
		return batch != nil && write != nil
	})
	var run *receivedSpan
	eventually(t, 30*time.Second, "the run inside the batch", func() bool {
		recv.mu.Lock()
		defer recv.mu.Unlock()
		for i := range recv.spans {
			if sp := &recv.spans[i]; sp.Name == "inferq.run" && bytes.Equal(sp.ParentSpanId, batch.SpanId) {
				run = sp
			}
		}
		return run != nil
	})
	if batch.service != "inferq-worker" || write.service != "inferq-worker" || run.StartTimeUnixNano < batch.StartTimeUnixNano || run.EndTimeUnixNano > batch.EndTimeUnixNano {
		t.Errorf("batch %v, run %v, write %v", batch.Span, run.Span, write.Span)
	}

	// A request without a trace starts one at the API, which the worker
	// continues.
	id = s.submit(t, "/v1/models/iris/jobs", []byte(irisJob))
	s.await(t, id, 60*time.Second)
	eventually(t, 30*time.Second, "a trace started at the API, continued by the worker", func() bool {
		recv.mu.Lock()
		defer recv.mu.Unlock()
		for _, a := range recv.spans {
			if a.Name != "inferq.accept" || len(a.ParentSpanId) != 0 {
				continue
			}
			for _, w := range recv.spans {
				if w.Name == "inferq.finish" && bytes.Equal(w.TraceId, a.TraceId) && bytes.Equal(w.ParentSpanId, a.SpanId) {
					return true
				}
			}
		}
		return false
	})
}
