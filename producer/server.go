// Package producer is inferq's HTTP API: it validates V2 inference
// requests against each model's own inputs, queues them as jobs in
// JetStream, and serves job records, results, model metadata, health and
// metrics.
package producer

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
	"github.com/inferq/inferq/tracing"
)

// Catalog is the set of models the API accepts jobs for;
// *model.Repository is one.
type Catalog interface {
	Lookup(name string, version int64) (*model.Model, error)
	Family(name string) (*model.Family, error)
	Families() []*model.Family
}

// Queue stores jobs; *jobs.Queue is one.
type Queue interface {
	Submit(ctx context.Context, job *jobs.Job, rec *record.Record) error
	Announce(rec *record.Record, response []byte) error
	End(ctx context.Context, id string, ev record.Event, reason string) (*record.Record, error)
	ClaimKey(ctx context.Context, owner, key, id, digest string) (existing string, err error)
	ReleaseKey(ctx context.Context, owner, key string) error
	ReclaimKey(ctx context.Context, owner, key, old, id, digest string) error
	Resubmit(ctx context.Context, job *jobs.Job) error
}

// Records reads and updates job records; *jobs.Records is one.
type Records interface {
	Get(ctx context.Context, id string) (*record.Record, error)
	Update(ctx context.Context, id string, fn func(*record.Record) error) (*record.Record, error)
}

// Results reads stored results; the storage package's stores are.
type Results interface {
	GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
}

// WorkerStatuses reads what each worker process serves; *jobs.Queue is
// one.
type WorkerStatuses interface {
	WorkerStatuses(ctx context.Context) ([]jobs.WorkerStatus, error)
}

// Watcher signals changes of a job's record; *jobs.Watcher is one.
type Watcher interface {
	Wait(id string) (<-chan *record.Record, func())
}

// Options configure a Server. Catalog, Queue, Records, Results and Watcher
// are required.
type Options struct {
	Catalog Catalog
	Queue   Queue
	Records Records
	Results Results
	Watcher Watcher
	// Batches and Objects keep batch files' records and indexes; without
	// them batch files are not served.
	Batches BatchStore
	Objects ObjectWriter
	// UploadHeartbeat is how often the record of a batch whose file is
	// being read says so. Default 10s.
	UploadHeartbeat time.Duration
	// MaxBatchBytes bounds a batch file, which is read as it arrives, not
	// held in memory. Default 16 GiB.
	MaxBatchBytes int64
	// MetricsToken, when set, is the token /metrics needs, as
	// Authorization: Bearer <token>: the metrics show every model's
	// traffic and prediction distribution, whatever a tenant's token.
	MetricsToken string
	// Tokens, when not empty, are the API tokens: every request but health
	// and metrics must carry one as Authorization: Bearer <token>, and
	// may use only the models its token grants. SetTokens replaces them.
	Tokens []Token
	// Presign, when set, turns the key of a result stored alone (the job
	// layout) into a URL clients can GET directly: a presigned S3 URL.
	Presign func(ctx context.Context, key string) (string, error)
	// DeadLetters keeps failed jobs for inspection and replay; without it
	// the dead-letter routes answer 404.
	DeadLetters DeadLetters
	// Leases hands pipeline steps run by user code to it; without it the
	// lease routes answer 404.
	Leases Leases
	// Stream follows models' finished jobs, for GET
	// /v1/models/{model}/results; *jobs.Queue is one.
	Stream ResultStream
	// Connected reports whether the queue (NATS) is reachable now; while
	// it is not, submissions are refused at once with 503 rather than
	// wait for a store that cannot answer. Nil means always.
	Connected func() bool
	// Ready reports whether the API can take jobs (NATS and storage
	// reachable); nil means always.
	Ready func(ctx context.Context) error
	// MaxImagePixels bounds a picture sent as a job's body, by the size
	// its header declares, before anything decodes it. Default 40
	// megapixels; negative, no bound.
	MaxImagePixels int64
	// MaxBodyBytes bounds a request body. Default 64 MiB.
	MaxBodyBytes int64
	// Limits bound what a request's tensors may hold.
	Limits tensor.Limits
	// MaxWait caps ?wait= on GET /v1/jobs/{id}, and how long a
	// synchronous POST /v2/models/{model}/infer waits for its job before
	// answering 504 (the job stays queued). Default 60s.
	MaxWait time.Duration
	// RecordRetention is how long job records are kept, for the message
	// about a job that is not found.
	RecordRetention time.Duration
	// Registerer receives the API's metrics; Gatherer serves /metrics.
	// Nil disables each.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	Logger     *slog.Logger
	// Version is the server's version, which GET /v2 reports.
	Version string
	// Live, when set, feeds the console's live figures and recent jobs;
	// Console, when set, serves the console's pages at / and /ui/,
	// without a token (they hold no data: they read the API with the
	// operator's).
	Live    Live
	Console http.Handler
	// Monitoring, when set, reads the workers' statistics of what models
	// are asked and answer, for GET /v1/models/{model}/monitoring and
	// inferq_drift_psi; *jobs.Queue is one. Baselines are kept in
	// Objects.
	Monitoring MonitoringReader
	// Workers, when set, says which worker process serves which model
	// where, for GET /v1/models; *jobs.Queue is one.
	Workers WorkerStatuses
	// CheckWebhook, when set, refuses an Inferq-Webhook URL at
	// submission that the webhook dispatcher would not call (such as
	// webhook.Policy.CheckURL); it is checked to be an absolute http(s)
	// URL in any case.
	CheckWebhook func(url string) error
	// Tracer starts the API's spans (tracing.Tracer); nil traces
	// nothing, though a request's W3C trace context still travels on with
	// its job.
	Tracer trace.Tracer
	// BodyTimeout bounds the wait for each next part of a request body,
	// so that a client that stops sending mid-body does not hold its
	// connection and handler. Default 30s.
	BodyTimeout time.Duration
	// Sources, with Feeds, serves batches over stored objects
	// (?source=): where a source is listed and read. Nil: not served.
	Sources Sources
	Feeds   Feeds
	// MaxBatchLines bounds the lines of a batch over stored objects.
	// Default 10,000,000.
	MaxBatchLines int64
	// FeedHeartbeat is how often the feeder of a batch over stored
	// objects says it still is; one silent for five of them is taken
	// over by another API process (RunFeeds). Default 2s.
	FeedHeartbeat time.Duration
	// Traffic keeps the traffic splits set at run time (GET and PUT
	// /v1/models/{model}/traffic); nil serves only config.yaml's.
	Traffic TrafficStore
	// FeedAhead is how many lines of a batch over stored objects are
	// queued at most beyond those with an outcome. Default 10,000.
	FeedAhead int64
}

// Server serves the HTTP API. It is safe for concurrent use.
type Server struct {
	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	metrics *metrics
	// patterns are the routes served, "METHOD /path/{param}".
	patterns []string
	// closing is closed by Shutdown, to end long-lived streams.
	closing   chan struct{}
	closeOnce sync.Once
	drift     *driftCollector
	tokens    atomic.Pointer[[]Token]
	// tokensSet is closed, and replaced, when the tokens change.
	tokensSet atomic.Pointer[chan struct{}]
	// feeding is the feeders of batches over stored objects.
	feeding sync.WaitGroup
	// splits are the traffic splits set at run time, as followed.
	splits splits
}

// Shutdown ends the event streams being served, so that an http.Server
// shutting down does not wait on them. Register it with
// http.Server.RegisterOnShutdown.
func (s *Server) Shutdown() { s.closeOnce.Do(func() { close(s.closing) }) }

// New returns a Server.
func New(opts Options) (*Server, error) {
	if opts.Catalog == nil || opts.Queue == nil || opts.Records == nil || opts.Results == nil || opts.Watcher == nil {
		return nil, errors.New("producer: Catalog, Queue, Records, Results and Watcher are required")
	}
	if opts.MaxImagePixels == 0 {
		opts.MaxImagePixels = pipeline.MaxImagePixels
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 64 << 20
	}
	if opts.MaxBatchBytes <= 0 {
		opts.MaxBatchBytes = 16 << 30
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = 60 * time.Second
	}
	if opts.UploadHeartbeat <= 0 {
		opts.UploadHeartbeat = 10 * time.Second
	}
	if opts.MaxBatchLines <= 0 {
		opts.MaxBatchLines = 10_000_000
	}
	if opts.FeedHeartbeat <= 0 {
		opts.FeedHeartbeat = 2 * time.Second
	}
	if opts.FeedAhead <= 0 {
		opts.FeedAhead = 10_000
	}
	if opts.BodyTimeout <= 0 {
		opts.BodyTimeout = 30 * time.Second
	}
	if opts.Tracer == nil {
		opts.Tracer = tracing.Tracer(nil)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, log: opts.Logger, mux: http.NewServeMux(), closing: make(chan struct{})}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	s.metrics = m
	s.drift = newDriftCollector(s)
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(s.drift); err != nil {
			return nil, fmt.Errorf("register drift metric: %w", err)
		}
	}
	s.SetTokens(opts.Tokens)
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	handle := func(pattern string, h func(http.ResponseWriter, *http.Request) error) {
		s.mux.Handle(pattern, s.wrap(pattern, h))
		s.patterns = append(s.patterns, pattern)
	}
	handle("POST /v1/models/{model}/jobs", s.submit)
	handle("POST /v1/models/{model}/versions/{version}/jobs", s.submit)
	handle("POST /v2/models/{model}/infer", s.infer)
	handle("POST /v2/models/{model}/versions/{version}/infer", s.infer)
	handle("GET /v1/jobs/{id}", s.getJob)
	handle("DELETE /v1/jobs/{id}", s.cancel)
	handle("GET /v1/jobs/{id}/events", s.jobEvents)
	handle("GET /v1/models/{model}/results", s.modelResults)
	handle("POST /v1/models/{model}/batches", s.createBatch)
	handle("GET /v1/models/{model}/traffic", s.getTraffic)
	handle("PUT /v1/models/{model}/traffic", s.putTraffic)
	handle("DELETE /v1/models/{model}/traffic", s.deleteTraffic)
	handle("GET /v1/batches/{id}", s.getBatch)
	handle("GET /v1/batches/{id}/output", s.batchOutput)
	handle("DELETE /v1/batches/{id}", s.cancelBatch)
	handle("GET /v1/jobs/{id}/result", s.getResult)
	handle("GET /v1/console/figures", s.consoleFigures)
	handle("GET /v1/console/models/{model}/jobs", s.consoleJobs)
	handle("GET /v1/batches", s.listBatches)
	pages := func(w http.ResponseWriter, r *http.Request) error {
		if s.opts.Console == nil {
			return errorf(http.StatusNotFound, "the console is not served here (--console=false); the API is described at /openapi.json")
		}
		s.opts.Console.ServeHTTP(w, r)
		return nil
	}
	s.mux.Handle("GET /{$}", s.wrap("GET /", pages))
	s.patterns = append(s.patterns, "GET /")
	handle("GET /ui/{file}", pages)
	handle("GET /v1/models/{model}/monitoring", s.modelMonitoring)
	handle("POST /v1/models/{model}/monitoring/baseline", s.setBaseline)
	handle("GET /v1/models/{model}/dead-letters", s.listDeadLetters)
	handle("POST /v1/models/{model}/dead-letters/{id}/replay", s.replayDeadLetter)
	handle("POST /v1/pipelines/{pipeline}/steps/{step}/leases", s.takeLease)
	handle("POST /v1/leases/{lease}", s.answerLease)
	handle("GET /v1/models", s.listModels)
	handle("GET /v2/models/{model}", s.modelMetadata)
	handle("GET /v2/models/{model}/versions/{version}", s.modelMetadata)
	handle("GET /v2/models/{model}/ready", s.modelReady)
	handle("GET /v2/models/{model}/versions/{version}/ready", s.modelReady)
	handle("GET /openapi.json", s.openapi)
	handle("GET /v2", s.serverMetadata)
	handle("GET /v2/health/live", s.live)
	handle("GET /v2/health/ready", s.ready)
	if s.opts.Gatherer != nil {
		s.mux.Handle("GET /metrics", MetricsHandler(s.opts.Gatherer, s.opts.MetricsToken))
		s.patterns = append(s.patterns, "GET /metrics")
	}
	s.mux.Handle("/", s.wrap("other", func(w http.ResponseWriter, r *http.Request) error {
		if allowed := s.allowedMethods(r); len(allowed) > 0 {
			w.Header().Set("Allow", strings.Join(allowed, ", "))
			return errorf(http.StatusMethodNotAllowed, "%s is not served on %s; it takes %s", r.Method, r.URL.Path, strings.Join(allowed, ", "))
		}
		return errorf(http.StatusNotFound, "no route for %s %s; see /openapi.json", r.Method, r.URL.Path)
	}))
}

// allowedMethods are the methods served on r's path, for a request whose
// method is not: the catch-all route would otherwise answer it 404.
func (s *Server) allowedMethods(r *http.Request) []string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete} {
		if m == r.Method {
			continue
		}
		probe := *r
		probe.Method = m
		if _, pattern := s.mux.Handler(&probe); pattern != "" && pattern != "/" {
			out = append(out, m)
		}
	}
	return out
}

// Routes returns the routes served, as "METHOD /path/{param}".
func (s *Server) Routes() []string { return slices.Clone(s.patterns) }

// ServeHTTP serves the API. With tokens configured, every path but health
// and metrics needs one.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !open(r.URL.Path) {
		// Taken before the token is checked, so that a change of tokens
		// after the check is seen by the streams that watch for one.
		r = r.WithContext(context.WithValue(r.Context(), tokensKey{}, s.tokensChanged()))
		t, ok := s.authenticate(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="inferq"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong API token: send Authorization: Bearer <token>"})
			s.metrics.observeRequest("unauthorized", http.StatusUnauthorized, 0)
			return
		}
		if t != nil {
			r = withGrant(r, t)
		}
	}
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = &idleBody{ReadCloser: r.Body, rc: http.NewResponseController(w), timeout: s.opts.BodyTimeout}
	}
	s.mux.ServeHTTP(w, r)
}

// open reports the paths served without a token: health, metrics, and
// the console's pages (which hold no data).
func open(path string) bool {
	return strings.HasPrefix(path, "/v2/health/") || path == "/metrics" || path == "/" || strings.HasPrefix(path, "/ui/")
}

// httpError is an error with the status code it answers with.
type httpError struct {
	code       int
	msg        string
	retryAfter int
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

// wrap turns a handler that returns an error into an http.Handler that
// answers the error as JSON, counts the request, and turns a panic into a
// 500 that is logged as the bug it is.
func (s *Server) wrap(route string, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rw := &statusWriter{ResponseWriter: w}
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("panic serving request", "route", route, "panic", p)
				if rw.status == 0 {
					writeJSON(rw, http.StatusInternalServerError, map[string]string{"error": "internal error (a bug in inferq; it has been logged)"})
				}
			}
			s.metrics.observeRequest(route, rw.status, time.Since(start))
		}()
		err := h(rw, r)
		if err == nil {
			return
		}
		if rw.status != 0 {
			// The answer has begun (a result or an output streaming when
			// storage failed): too late for an error status; the client
			// sees the body cut short.
			s.log.Warn("request failed after its answer began", "route", route, "err", err)
			return
		}
		var he *httpError
		if !errors.As(err, &he) {
			s.log.Error("request failed", "route", route, "err", err)
			he = &httpError{code: http.StatusInternalServerError, msg: "internal error: " + err.Error()}
		}
		if he.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(he.retryAfter))
		}
		writeJSON(rw, he.code, map[string]string{"error": he.msg})
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"internal error: encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// queueReachable answers 503 while the queue is known to be unreachable.
func (s *Server) queueReachable() error {
	if s.opts.Connected == nil || s.opts.Connected() {
		return nil
	}
	return &httpError{code: http.StatusServiceUnavailable, retryAfter: 2, msg: "the queue (NATS) is unreachable; nothing was accepted, retry later"}
}

// lookup resolves the {model} and optional {version} of a path.
func (s *Server) lookup(r *http.Request) (*model.Model, error) {
	name := r.PathValue("model")
	if err := allow(r, name); err != nil {
		return nil, err
	}
	var version int64
	if v := r.PathValue("version"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return nil, errorf(http.StatusBadRequest, "model version %q is not a positive integer", v)
		}
		version = n
	}
	m, err := s.opts.Catalog.Lookup(name, version)
	switch {
	case errors.Is(err, model.ErrNotFound):
		return nil, errorf(http.StatusNotFound, "%v", err)
	case errors.Is(err, model.ErrUnavailable):
		return nil, &httpError{code: http.StatusServiceUnavailable, msg: err.Error(), retryAfter: 30}
	case err != nil:
		return nil, err
	}
	return m, nil
}

// public is the record as a client sees it. Where results are an object
// per job in S3 (the job layout), result_url is a presigned URL of it,
// unless the result is binary: its header length travels in a header
// that only the API sends.
func (s *Server) public(ctx context.Context, rec *record.Record) *record.Record {
	p := rec.Public()
	if s.opts.Presign != nil && rec.Status == record.Succeeded && rec.Result != nil && rec.Result.Whole && rec.Result.HeaderLength == 0 {
		if u, err := s.opts.Presign(ctx, rec.Result.Key); err == nil {
			p.ResultURL = u
		} else {
			s.log.Warn("presigning a result URL", "job", rec.ID, "err", err)
		}
	}
	return p
}

// expire shows a succeeded job whose result is past its model's
// result_retention as expired: its result has been, or is about to be,
// deleted.
func (s *Server) expire(rec *record.Record) *record.Record {
	if rec.Status != record.Succeeded || rec.FinishedAt == nil {
		return rec
	}
	f, err := s.opts.Catalog.Family(rec.Model)
	if err != nil || f.Default() == nil {
		return rec
	}
	return rec.AsRead(time.Now(), f.Default().Config.ResultRetention)
}

func checkID(id string) error {
	if _, err := ulid.ParseStrict(id); err != nil {
		return errorf(http.StatusNotFound, "job %q not found: job ids are 26-character ULIDs", id)
	}
	return nil
}

// record reads job id's record, for a request whose token may use the
// job's model.
func (s *Server) record(r *http.Request, id string) (*record.Record, error) {
	rec, err := s.opts.Records.Get(r.Context(), id)
	if err == nil && !mayUse(r.Context(), rec.Model) {
		// Another tenant's job reads as no job at all: a refusal would
		// confirm that the id exists.
		err = jobs.ErrJobNotFound
	}
	if errors.Is(err, jobs.ErrJobNotFound) {
		if s.opts.RecordRetention > 0 {
			return nil, errorf(http.StatusNotFound, "job %s not found (records are kept for %s)", id, s.opts.RecordRetention)
		}
		return nil, errorf(http.StatusNotFound, "job %s not found", id)
	}
	if err != nil {
		return nil, &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "job records are unavailable: " + err.Error()}
	}
	return s.expire(rec), nil
}

func (s *Server) getJob(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		return err
	}
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := parseWait(v)
		if err != nil {
			return errorf(http.StatusBadRequest, "wait=%q: %v", v, err)
		}
		wait = min(d, s.opts.MaxWait)
	}
	var changed <-chan *record.Record
	if wait > 0 {
		ch, stop := s.opts.Watcher.Wait(id)
		defer stop()
		changed = ch
	}
	rec, err := s.record(r, id)
	if err != nil {
		return err
	}
	if wait > 0 && !rec.Status.Final() {
		timer := time.NewTimer(wait)
		defer timer.Stop()
	loop:
		for {
			select {
			case rec = <-changed:
				if s.expire(rec).Status.Final() {
					break loop
				}
			case <-timer.C:
				break loop
			case <-r.Context().Done():
				return nil
			}
		}
	}
	writeJSON(w, http.StatusOK, s.public(r.Context(), rec))
	return nil
}

// parseWait reads a wait as a Go duration ("10s", "1m") or whole seconds.
func parseWait(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0, errors.New("must not be negative")
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New(`want a duration such as "10s" or a number of seconds`)
	}
	if d < 0 {
		return 0, errors.New("must not be negative")
	}
	return d, nil
}

func (s *Server) getResult(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		return err
	}
	rec, err := s.record(r, id)
	if err != nil {
		return err
	}
	if rec.Status != record.Succeeded {
		if rec.Error == "" {
			rec.Error = fmt.Sprintf("job %s is %s; it has no result yet", id, rec.Status)
		}
		writeJSON(w, http.StatusConflict, rec.Public())
		return nil
	}
	return s.sendResult(w, r, rec)
}

// sendResult answers the stored result of a succeeded job: as it is
// stored, JSON, or in the binary tensor extension when the job asked for
// binary outputs (with its Inference-Header-Content-Length). A client
// that accepts only JSON gets a binary result converted to JSON.
func (s *Server) sendResult(w http.ResponseWriter, r *http.Request, rec *record.Record) error {
	id := rec.ID
	ref := rec.Result
	if ref == nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 5, msg: fmt.Sprintf("job %s succeeded but its record has no result location", id)}
	}
	rc, err := s.opts.Results.GetRange(r.Context(), ref.Key, ref.Offset, ref.Length)
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 5, msg: "result storage is unavailable: " + err.Error()}
	}
	defer rc.Close()
	if ref.HeaderLength > 0 && jsonOnly(r.Header.Get("Accept")) {
		b, err := io.ReadAll(rc)
		if err != nil {
			return &httpError{code: http.StatusServiceUnavailable, retryAfter: 5, msg: "result storage is unavailable: " + err.Error()}
		}
		resp, err := tensor.DecodeBinaryResponse(b, int(ref.HeaderLength))
		if err != nil {
			return fmt.Errorf("job %s: stored result: %w", id, err)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		w.Write(resp.AppendJSON(nil))
		return nil
	}
	if ref.HeaderLength > 0 {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set(jobs.HeaderHeaderLength, strconv.FormatInt(ref.HeaderLength, 10))
	} else {
		w.Header().Set("Content-Type", "application/json")
	}
	w.Header().Set("Content-Length", strconv.FormatInt(ref.Length, 10))
	w.WriteHeader(http.StatusOK)
	_, err = io.Copy(w, rc)
	if err != nil {
		s.log.Warn("sending result", "job", id, "err", err)
	}
	return nil
}

// jsonOnly reports an Accept header that names JSON and not the binary
// extension's application/octet-stream (nor anything at all).
func jsonOnly(accept string) bool {
	return strings.Contains(accept, "application/json") && !strings.Contains(accept, "application/octet-stream") && !strings.Contains(accept, "*/*")
}

// serverMetadata answers the V2 protocol's server metadata request, as
// V2 clients ask it (tritonclient's get_server_metadata): the server's
// name, version and the protocol extensions it takes.
func (s *Server) serverMetadata(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]any{
		"name":       "inferq",
		"version":    cmp.Or(s.opts.Version, "unknown"),
		"extensions": []string{"binary_tensor_data"},
	})
	return nil
}

func (s *Server) live(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]bool{"live": true})
	return nil
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) error {
	if s.opts.Ready != nil {
		if err := s.opts.Ready(r.Context()); err != nil {
			return &httpError{code: http.StatusServiceUnavailable, retryAfter: 5, msg: "not ready: " + err.Error()}
		}
	}
	writeJSON(w, http.StatusOK, map[string]bool{"ready": true})
	return nil
}
