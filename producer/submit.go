package producer

// Submitting jobs: POST /v1/models/{model}/jobs and the synchronous
// /v2/models/{model}/infer, the request's checks, its options and its
// idempotency key.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/storage"
	"github.com/inferq/inferq/tensor"
	"github.com/inferq/inferq/tracing"
)

func (s *Server) submit(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.accept(w, r)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/jobs/"+rec.ID)
	writeJSON(w, http.StatusAccepted, rec.Public())
	return nil
}

// infer is the V2 synchronous call: the job goes through the same queue
// and batcher as any other, and the answer waits for its result.
func (s *Server) infer(w http.ResponseWriter, r *http.Request) error {
	// Watch before submitting, so that no change falls in between.
	var changed <-chan *record.Record
	var stop func()
	rec, err := s.accept(w, r, func(id string) { changed, stop = s.opts.Watcher.Wait(id) })
	if stop != nil {
		defer stop()
	}
	if err != nil {
		return err
	}
	id := rec.ID
	w.Header().Set(jobIDHeader, id)
	timer := time.NewTimer(s.opts.MaxWait)
	defer timer.Stop()
	for !rec.Status.Final() {
		select {
		case rec = <-changed:
		case <-timer.C:
			w.Header().Set("Location", "/v1/jobs/"+id)
			return errorf(http.StatusGatewayTimeout, "job %s did not finish within %s; it stays queued and its result can be polled at /v1/jobs/%s", id, s.opts.MaxWait, id)
		case <-r.Context().Done():
			return nil // the client left; the job runs on, pollable by id
		}
	}
	if rec.Status != record.Succeeded {
		return errorf(http.StatusBadRequest, "job %s %s: %s", id, rec.Status, rec.Error)
	}
	return s.sendResult(w, r, rec)
}

// jobIDHeader names the job behind a synchronous inference.
const jobIDHeader = "Inferq-Job-Id"

// accept validates a job request and stores it in the queue, returning
// its record. before, when given, is called with the job id before the
// job is published.
func (s *Server) accept(w http.ResponseWriter, r *http.Request, before ...func(id string)) (_ *record.Record, err error) {
	ctx, span := s.opts.Tracer.Start(tracing.FromHTTP(r.Context(), r.Header), "inferq.accept",
		trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attribute.String("inferq.model", r.PathValue("model"))))
	defer func() {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	m, err := s.lookup(r)
	if err != nil {
		return nil, err
	}
	pinned := r.PathValue("version") != ""
	m, routed, shadows := s.route(m, pinned)
	if err := s.queueReachable(); err != nil {
		return nil, err
	}
	if r.ContentLength > s.opts.MaxBodyBytes {
		// Refused from its declared length, before waiting for a body that
		// would be refused anyway.
		s.metrics.rejected.WithLabelValues(m.Name, "too_large").Inc()
		return nil, errorf(http.StatusRequestEntityTooLarge, "request body of %d bytes exceeds the limit of %d bytes", r.ContentLength, s.opts.MaxBodyBytes)
	}
	body, err := readBody(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes), r.ContentLength)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.metrics.rejected.WithLabelValues(m.Name, "too_large").Inc()
			return nil, errorf(http.StatusRequestEntityTooLarge, "request body exceeds the limit of %d bytes", s.opts.MaxBodyBytes)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, s.bodyStalled()
		}
		return nil, errorf(http.StatusBadRequest, "read request body: %v", err)
	}
	var req *tensor.Request
	headerLen := -1 // of a binary body
	if mt := fileType(r.Header.Get("Content-Type")); mt != "" {
		if req, err = s.fileRequest(m, mt, body); err != nil {
			s.metrics.rejected.WithLabelValues(m.Name, "invalid").Inc()
			return nil, err
		}
	} else if hl := r.Header.Get(jobs.HeaderHeaderLength); hl != "" {
		n, perr := strconv.Atoi(hl)
		if perr != nil {
			s.metrics.rejected.WithLabelValues(m.Name, "invalid").Inc()
			return nil, errorf(http.StatusBadRequest, "%s %q is not a number", jobs.HeaderHeaderLength, hl)
		}
		req, err = tensor.DecodeBinaryRequest(body, n, s.opts.Limits)
		headerLen = n
	} else {
		req, err = tensor.DecodeRequest(body, s.opts.Limits)
	}
	if err != nil {
		s.metrics.rejected.WithLabelValues(m.Name, "invalid").Inc()
		return nil, errorf(http.StatusBadRequest, "%v", err)
	}
	rows, err := m.Check(req)
	if err == nil && len(req.ID) > MaxClientID {
		err = fmt.Errorf("the request's id is %d bytes long; at most %d are kept", len(req.ID), MaxClientID)
	}
	if err == nil {
		// The packing of a batch file's jobs travels in a header of its
		// own (jobs.HeaderLines); workers still read it from the
		// parameters of jobs queued by releases before 2026-12-01, so
		// these names stay reserved for a release.
		if l, perr := batching.ParseLines(req.Parameters); l != nil || perr != nil {
			err = fmt.Errorf("request parameters named %s... are inferq's own, for the jobs it packs from batch files; remove them", "inferq_line")
		}
	}
	if err == nil {
		err = s.checkObjects(m.Name, req)
	}
	if err != nil {
		s.metrics.rejected.WithLabelValues(m.Name, "invalid").Inc()
		return nil, errorf(http.StatusBadRequest, "%v", err)
	}
	spec := jobs.Spec{Model: m.Name, Rows: rows, Trace: nats.Header{}}
	if err := s.jobOptions(r.Header, &spec); err != nil {
		s.metrics.rejected.WithLabelValues(m.Name, "invalid").Inc()
		return nil, errorf(http.StatusBadRequest, "%v", err)
	}
	if pinned || routed {
		spec.Version, spec.Routed = m.Version, routed
	}
	spec.Shadows = shadows
	tracing.Inject(ctx, spec.Trace)
	job, rec := jobs.New(req, spec)
	if headerLen >= 0 && m.Pipeline == nil {
		job.Binary, job.BinaryHeaderLen = body, headerLen // published as sent
	}
	if job, err = s.pipelineJob(m, job); err != nil {
		s.metrics.rejected.WithLabelValues(m.Name, "invalid").Inc()
		return nil, err
	}
	id := job.ID
	span.SetAttributes(attribute.String("inferq.job", id))
	owner := caller(r.Context())
	if key := r.Header.Get("Idempotency-Key"); key != "" {
		existing, err := s.opts.Queue.ClaimKey(r.Context(), owner, key, id, requestDigest(r, body))
		switch {
		case errors.Is(err, jobs.ErrKeyReused):
			return nil, errorf(http.StatusUnprocessableEntity, "Idempotency-Key %q was used before with a different request (job %s); use a new key for a new request", key, existing)
		case err != nil:
			return nil, &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "the queue is unavailable, the job was not accepted; retry later"}
		case existing != "" && s.neverQueued(r.Context(), existing):
			// The job the key names failed to be queued (its key could
			// not be released then): this retry makes a new one.
			if err := s.opts.Queue.ReclaimKey(r.Context(), owner, key, existing, id, requestDigest(r, body)); err != nil {
				return nil, &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "the queue is unavailable, the job was not accepted; retry later"}
			}
		case existing != "":
			// A retry of a submission that may not have completed (its
			// answer lost, or a 503 while JetStream lost a node): its job
			// is published again if still queued; JetStream drops the
			// repeat of one that made it.
			spec.ID = existing
			again, _ := jobs.New(req, spec)
			if again, err = s.pipelineJob(m, again); err != nil {
				return nil, err
			}
			if err := s.opts.Queue.Resubmit(r.Context(), again); err != nil && !errors.Is(err, jobs.ErrJobNotFound) {
				return nil, &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "the queue is unavailable; retry later"}
			}
			w.Header().Set("Idempotent-Replayed", "true")
			return s.record(r, existing)
		}
	}
	for _, f := range before {
		f(id)
	}
	if err := s.opts.Queue.Submit(r.Context(), job, rec); err != nil {
		// Not accepted: a retry with the same key must be free to try.
		if key := r.Header.Get("Idempotency-Key"); key != "" {
			_ = s.opts.Queue.ReleaseKey(context.WithoutCancel(r.Context()), owner, key)
		}
		if errors.Is(err, jobs.ErrQueueFull) {
			s.metrics.rejected.WithLabelValues(m.Name, "queue_full").Inc()
			return nil, &httpError{code: http.StatusTooManyRequests, retryAfter: 5,
				msg: fmt.Sprintf("the queue of model %s is full; the job was not accepted, retry later", m.Name)}
		}
		s.log.Warn("could not queue job", "model", m.Name, "err", err)
		s.metrics.rejected.WithLabelValues(m.Name, "unavailable").Inc()
		return nil, &httpError{code: http.StatusServiceUnavailable, retryAfter: 1,
			msg: "the queue is unavailable, the job was not accepted; retry later"}
	}
	s.metrics.accepted.WithLabelValues(m.Name).Inc()
	return rec, nil
}

// checkObjects checks the inputs req gives by reference: each must be a
// valid key under the model's inputs folder (jobs.InputPrefix), or an
// s3:// URL under a source the operator allowed (--batch-sources).
func (s *Server) checkObjects(model string, req *tensor.Request) error {
	for _, in := range req.Inputs {
		if in.Object == "" {
			continue
		}
		var err error
		if storage.IsURL(in.Object) {
			// An object of a bucket the operator allowed for batches.
			err = fmt.Errorf("%w: this server reads no s3:// sources", storage.ErrSourceRefused)
			if s.opts.Sources != nil {
				_, _, err = s.opts.Sources.Resolve(in.Object)
			}
		} else if err = storage.CheckKey(in.Object); err == nil {
			err = jobs.CheckInputObject(model, in.Object)
		}
		if err != nil {
			return fmt.Errorf("input %q: %s: %v", in.Name, tensor.ObjectParameter, err)
		}
	}
	return nil
}

// requestDigest identifies what a job request asks: the path (model and
// version), the headers that set its options, and the body. A repeat
// under the same Idempotency-Key must match it.
func requestDigest(r *http.Request, body []byte) string {
	h := sha256.New()
	for _, v := range []string{r.URL.Path, r.Header.Get(jobs.HeaderHeaderLength), r.Header.Get(headerPriority),
		r.Header.Get(headerDeadline), r.Header.Get(headerTimeout), r.Header.Get(headerWebhook), fileType(r.Header.Get("Content-Type"))} {
		h.Write([]byte(v))
		h.Write([]byte{0})
	}
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// checkWebhook checks a job's webhook URL.
func (s *Server) checkWebhook(v string) error {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("want an absolute http or https URL")
	}
	if s.opts.CheckWebhook != nil {
		return s.opts.CheckWebhook(v)
	}
	return nil
}

// Request headers that set a job's options.
const (
	headerPriority = "Inferq-Priority" // high or normal
	headerDeadline = "Inferq-Deadline" // RFC 3339 time
	headerTimeout  = "Inferq-Timeout"  // duration from now, such as 30s
	headerWebhook  = "Inferq-Webhook"  // http(s) URL
)

// Bounds on what a client names a job by: they are kept in its record
// and message, and a value past them is a 400 that says so, not a store
// refusing it later.
const (
	MaxClientID       = 1024 // bytes of a request's "id"
	MaxWebhookURL     = 2048 // bytes of an Inferq-Webhook URL
	MaxIdempotencyKey = 255  // bytes of an Idempotency-Key
)

// jobOptions reads the optional job headers into rec.
func (s *Server) jobOptions(h http.Header, spec *jobs.Spec) error {
	if k := h.Get("Idempotency-Key"); len(k) > MaxIdempotencyKey {
		return fmt.Errorf("Idempotency-Key is %d bytes long; at most %d", len(k), MaxIdempotencyKey)
	}
	p, err := record.ParsePriority(h.Get(headerPriority))
	if err != nil {
		return fmt.Errorf("%s: %w", headerPriority, err)
	}
	spec.Priority = p
	if v := h.Get(headerDeadline); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return fmt.Errorf("%s %q: want an RFC 3339 time such as 2026-01-02T15:04:05Z", headerDeadline, v)
		}
		spec.Deadline = t.UTC()
	}
	if v := h.Get(headerTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("%s %q: want a positive duration such as 30s or 5m", headerTimeout, v)
		}
		t := time.Now().UTC().Add(d)
		if spec.Deadline.IsZero() || t.Before(spec.Deadline) {
			spec.Deadline = t
		}
	}
	if v := h.Get(headerWebhook); v != "" {
		if len(v) > MaxWebhookURL {
			return fmt.Errorf("%s is %d bytes long; at most %d", headerWebhook, len(v), MaxWebhookURL)
		}
		if err := s.checkWebhook(v); err != nil {
			return fmt.Errorf("%s %q: %w", headerWebhook, v, err)
		}
		spec.Webhook = v
	}
	return nil
}

// neverQueued reports a job whose submission failed: no record (it was
// never stored), or a record failed as not queued.
func (s *Server) neverQueued(ctx context.Context, id string) bool {
	rec, err := s.opts.Records.Get(ctx, id)
	if errors.Is(err, jobs.ErrJobNotFound) {
		return true
	}
	return err == nil && rec.Status == record.Failed && strings.HasPrefix(rec.Error, jobs.NotQueued)
}

// maxPrealloc is the most readBody sets aside for a body before its bytes
// arrive: a declared length alone commits no more memory than this.
const maxPrealloc = 16 << 20

// readBody reads a request body of the declared size (-1: unknown) to its
// end into one buffer of that size, not one grown by doubling, which for
// an image-sized tensor allocated and copied about twice its size.
func readBody(r io.Reader, size int64) ([]byte, error) {
	if size <= 0 {
		return io.ReadAll(r)
	}
	b := make([]byte, 0, min(size, maxPrealloc)+1) // +1: the read that finds the end needs no room
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // grows as append does
		}
	}
}
