// Package jobs is inferq's queue as it lives in NATS JetStream: the stream
// of requests with a subject per model, the wire form of a queued job, the
// job records in a key-value bucket, the stream of results, and the
// durable pull consumer each model's workers share.
//
// Subjects (a public surface; see docs/nats.md):
//
//	inferq.requests.<model>   one message per job, V2 binary request
//	inferq.results.<model>    one message per finished job, its record JSON
//	inferq.dead.<model>.<id>  a copy of each failed job, for replay
//	$KV.INFERQ_JOBS.<job id>  every change of a job's record
//
// where <model> is the model's Token: its name with '.' written '~'.
//
// A job's record, its states and every change between them are package
// record's (lifecycle.go: a transition table of status, event → status
// and what else is written, in order), applied by Record.Apply wherever a
// job changes: the API (cancel), the workers (start, requeue, the end of
// a run), batch files and the queue itself (a refused submission). This
// package stores them.
//
// queue.go sets the streams and buckets up; submit.go queues a job and
// encodes its message; new.go makes a job and its record; record.go and
// sets.go keep and change records; consumers.go holds the workers'
// durable consumers and the queue's depth; results.go the announcements
// of finished jobs; keys.go the idempotency keys.
package jobs

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/record"
)

// Names in NATS.
const (
	RequestStream = "INFERQ_REQUESTS"
	// ShadowStream holds the shadow runs of traffic splits' shadow
	// versions, a subject per model and version: apart from the jobs,
	// so that a shadow that falls behind never fills the jobs' stream.
	ShadowStream = "INFERQ_SHADOWS"
	ResultStream = "INFERQ_RESULTS"
	RecordBucket = "INFERQ_JOBS"
	// KeyBucket maps idempotency keys to the jobs they created.
	KeyBucket = "INFERQ_IDEMPOTENCY"

	requestPrefix = "inferq.requests."
	shadowPrefix  = "inferq.shadows."
	resultPrefix  = "inferq.results."
)

// Message headers of a queued job.
const (
	HeaderJobID   = "Inferq-Job-Id"
	HeaderModel   = "Inferq-Model"
	HeaderVersion = "Inferq-Model-Version"
	// HeaderRouted marks a version picked by the model's traffic split,
	// not by the client: should the version be gone when the job runs,
	// the default version answers it.
	HeaderRouted = "Inferq-Routed"
	// HeaderShadow lists the versions the job also runs on, off the
	// answer's path, once it has succeeded: "4,5".
	HeaderShadow = "Inferq-Shadow"
	// HeaderPayload names the storage object holding the body of a job too
	// large to travel in its message (a claim check).
	HeaderPayload = "Inferq-Payload"
	// HeaderWebhook, on an announcement, is the webhook its job names.
	HeaderWebhook = "Inferq-Webhook"
	// HeaderRecord and HeaderRecordRevision carry the job's record as it
	// was created, and its revision in the bucket. Optional: a worker
	// without them reads the record.
	HeaderRecord         = "Inferq-Record"
	HeaderRecordRevision = "Inferq-Record-Revision"
	// HeaderHeaderLength is the length of the JSON header of a request in
	// the V2 binary tensor extension; absent, the body is plain V2 JSON.
	HeaderHeaderLength = "Inference-Header-Content-Length"
	// HeaderLines, on a job a batch file packed from several lines, is
	// how they were packed (batching.Lines, as JSON): the worker needs it
	// to run them a line at a time and fail only the lines at fault.
	HeaderLines = "Inferq-Lines"
	// A step of a pipeline job (see Step): the pipeline, the step, the
	// steps done (names joined by ","), and the length of the state at
	// the end of the message's data, with its JSON header's length.
	HeaderPipeline          = "Inferq-Pipeline"
	HeaderStep              = "Inferq-Step"
	HeaderStepsDone         = "Inferq-Steps-Done"
	HeaderStateLength       = "Inferq-State-Length"
	HeaderStateHeaderLength = "Inferq-State-Header-Length"
	HeaderPipelineOutputs   = "Inferq-Pipeline-Outputs"
	HeaderStepPrepare       = "Inferq-Step-Prepare"
)

// RequestSubject is the subject a model's jobs of a priority are
// published on: inferq.requests.<model> for normal jobs and
// inferq.requests.<model>.high for high-priority ones.
func RequestSubject(model string, p record.Priority) string {
	if p == record.High {
		return requestPrefix + Token(model) + ".high"
	}
	return requestPrefix + Token(model)
}

// ResultSubject is the subject a model's finished jobs are announced on.
func ResultSubject(model string) string { return resultPrefix + Token(model) }

// ConsumerName is the durable consumer a model's workers share for jobs
// of a priority: inferq-<token> for normal jobs, inferq-<token>@high for
// high-priority ones. No token holds '@', so no two models share a
// consumer (see retireOldConsumer for the names of earlier releases).
func ConsumerName(model string, p record.Priority) string {
	if p == record.High {
		return "inferq-" + Token(model) + "@high"
	}
	return "inferq-" + Token(model)
}

// ModelOfConsumer is the model and priority whose jobs the durable
// consumer called name takes, the inverse of ConsumerName; ok is false
// for a name ConsumerName never gives.
func ModelOfConsumer(name string) (model string, p record.Priority, ok bool) {
	token, ok := strings.CutPrefix(name, "inferq-")
	if !ok || token == "" {
		return "", record.Normal, false
	}
	if t, high := strings.CutSuffix(token, "@high"); high {
		token, p = t, record.High
	}
	if token == "" || strings.Contains(token, "@") {
		return "", record.Normal, false
	}
	return modelOfToken(token), p, true
}

// oldHighConsumerName is what releases before 2026-11-26 named a model's
// high-priority consumer: the name of model "<model>-high"'s normal one,
// so that each of those models' workers set the consumer's filter to its
// own subject in turn, and one model's jobs went to the other's workers.
func oldHighConsumerName(model string) string { return "inferq-" + Token(model) + "-high" }

// Token is model as it appears in NATS subjects and consumer names, where
// '.' separates tokens or is not allowed: each '.' of the name (as in
// "resnet50-v1.5") becomes '~', which model names cannot hold.
func Token(model string) string { return strings.ReplaceAll(model, ".", "~") }

// modelOfToken is the model name a Token stands for.
func modelOfToken(token string) string { return strings.ReplaceAll(token, "~", ".") }

// Options configure the streams and bucket. The zero value is a sensible
// single-node setup.
type Options struct {
	// Replicas of each stream and of the bucket; 1 for a single server.
	Replicas int
	// ResultRetention is how long finished-job announcements stay in the
	// results stream for resuming streams. Default 24h.
	ResultRetention time.Duration
	// DuplicateWindow is how long a repeated publish of the same job id is
	// recognised and dropped. Default 2m.
	DuplicateWindow time.Duration
	// RecordRetention is how long a job's record is kept after its last
	// change. 0 keeps records for ever.
	RecordRetention time.Duration
	// KeyRetention is how long an idempotency key is remembered. Default
	// 24h.
	KeyRetention time.Duration
	// MaxQueued bounds the jobs waiting per model and priority; a job
	// past it is refused (ErrQueueFull, HTTP 429). Default 1,000,000.
	MaxQueued int64
	// MaxQueuedBytes bounds the bytes of all waiting jobs together (the
	// requests stream); past it jobs are refused (ErrQueueFull). Bodies
	// larger than a message travel by reference, so this counts what the
	// queue itself holds. Default 10 GiB.
	MaxQueuedBytes int64
	// MaxDeadLetters bounds each model's dead letters: past it, that
	// model's oldest go first, so that one model's failures never evict
	// another's letters. Default 1,000.
	MaxDeadLetters int64
	// DeadLetterRetention is how long a failed job's dead letter is kept
	// for replay. Default 14 days.
	DeadLetterRetention time.Duration
	// ResultStreamBytes bounds the results stream, which carries small
	// responses inline; the oldest announcements go first. Default 1 GiB.
	ResultStreamBytes int64
	// MaxShadowBytes bounds the shadow runs waiting, all models
	// together; past it the oldest are dropped. Default 1 GiB.
	MaxShadowBytes int64
}

// Queue is inferq's JetStream layout, set up. It is safe for concurrent
// use.
type Queue struct {
	js      jetstream.JetStream
	keys    jetstream.KeyValue
	workers jetstream.KeyValue
	Records *Records
	Batches *Batches
	// Traffic is nil on a queue set up by a release before traffic
	// splits (Open).
	Traffic *Traffic

	// payloads keeps request bodies too large for a message (see
	// StorePayloads).
	payloads     PayloadStore
	maxInMessage int
	// ackTimeout bounds how long a set of announcements waits for its
	// acknowledgements; zero is AckTimeout.
	ackTimeout time.Duration
	// dupWindow is how long the streams drop a repeated message id.
	dupWindow time.Duration
	// maxDeadLetters bounds each model's dead letters (Options).
	maxDeadLetters int64
	// eventKey, read at eventKeyAt, is EventKey's.
	eventKeyMu sync.Mutex
	eventKey   []byte
	eventKeyAt time.Time
}

// Setup creates or updates the streams and the bucket and returns the
// queue. Every process calls it at start; it is idempotent.
func Setup(ctx context.Context, js jetstream.JetStream, opts Options) (*Queue, error) {
	if opts.Replicas <= 0 {
		opts.Replicas = 1
	}
	if opts.ResultRetention <= 0 {
		opts.ResultRetention = 24 * time.Hour
	}
	if opts.MaxQueued <= 0 {
		opts.MaxQueued = 1_000_000
	}
	if opts.MaxQueuedBytes <= 0 {
		opts.MaxQueuedBytes = 10 << 30
	}
	if opts.MaxShadowBytes <= 0 {
		opts.MaxShadowBytes = 1 << 30
	}
	if opts.ResultStreamBytes <= 0 {
		opts.ResultStreamBytes = 1 << 30
	}
	if opts.KeyRetention <= 0 {
		opts.KeyRetention = 24 * time.Hour
	}
	if opts.DuplicateWindow <= 0 {
		opts.DuplicateWindow = 2 * time.Minute
	}
	if opts.DeadLetterRetention <= 0 {
		opts.DeadLetterRetention = 14 * 24 * time.Hour
	}
	if opts.MaxDeadLetters <= 0 {
		opts.MaxDeadLetters = 1000
	}
	err := ensureStream(ctx, js, jetstream.StreamConfig{
		Name:        RequestStream,
		Description: "inferq jobs waiting to run, one subject per model",
		Subjects:    []string{requestPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
		Duplicates:  opts.DuplicateWindow,
		Discard:     jetstream.DiscardNew,
		// A bound per model: a flood of one model cannot fill the stream
		// for the others.
		MaxMsgsPerSubject: opts.MaxQueued,
		// Past the bound new jobs are refused; old ones are never dropped.
		DiscardNewPerSubject: true,
		MaxBytes:             opts.MaxQueuedBytes,
	})
	if err != nil {
		return nil, err
	}
	err = ensureStream(ctx, js, jetstream.StreamConfig{
		Name:        ResultStream,
		Description: "inferq finished jobs, one subject per model",
		Subjects:    []string{resultPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
		Duplicates:  opts.DuplicateWindow,
		MaxAge:      opts.ResultRetention,
		MaxBytes:    opts.ResultStreamBytes,
		// The key that makes result streams' event ids opaque (see
		// EventKey); a stream that has one keeps it.
		Metadata: map[string]string{eventKeyMeta: newEventKey()},
	})
	if err != nil {
		return nil, err
	}
	err = ensureStream(ctx, js, jetstream.StreamConfig{
		Name:        ShadowStream,
		Description: "inferq shadow runs waiting, one subject per model and shadow version",
		Subjects:    []string{shadowPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
		Duplicates:  opts.DuplicateWindow,
		// A shadow that falls behind loses its oldest runs, never the
		// jobs' room.
		Discard:  jetstream.DiscardOld,
		MaxBytes: opts.MaxShadowBytes,
	})
	if err != nil {
		return nil, err
	}
	if err := setupDeadLetters(ctx, js, opts); err != nil {
		return nil, err
	}
	if err := setupMonitoring(ctx, js, opts); err != nil {
		return nil, err
	}
	kv, err := ensureKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      RecordBucket,
		Description: "inferq job records by job id",
		History:     1,
		TTL:         opts.RecordRetention,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
	})
	if err != nil {
		return nil, err
	}
	keys, err := ensureKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      KeyBucket,
		Description: "inferq idempotency keys: the job each created",
		History:     1,
		TTL:         opts.KeyRetention,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
	})
	if err != nil {
		return nil, err
	}
	batches, err := ensureKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      BatchBucket,
		Description: "inferq batch file records by batch id",
		History:     1,
		TTL:         opts.RecordRetention,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
	})
	if err != nil {
		return nil, err
	}
	splits, err := ensureKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      TrafficBucket,
		Description: "inferq traffic splits set at run time, by model",
		History:     10,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
	})
	if err != nil {
		return nil, err
	}
	workers, err := setupWorkers(ctx, js, opts.Replicas)
	if err != nil {
		return nil, err
	}
	return &Queue{js: js, keys: keys, workers: workers, Records: &Records{kv: kv, js: js}, Batches: &Batches{kv: batches, js: js}, Traffic: &Traffic{kv: splits}, dupWindow: opts.DuplicateWindow, maxDeadLetters: opts.MaxDeadLetters}, nil
}

// Open returns the queue as the streams and buckets already are, changing
// none of their settings: for processes such as the scaler that read the
// queue and must not undo the settings the API and workers were given.
// It fails if the queue has not been set up.
func Open(ctx context.Context, js jetstream.JetStream) (*Queue, error) {
	kvs := make([]jetstream.KeyValue, 3)
	for i, name := range []string{RecordBucket, KeyBucket, BatchBucket} {
		kv, err := js.KeyValue(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("open bucket %s (start the API or a worker first, which set the queue up): %w", name, err)
		}
		kvs[i] = kv
	}
	q := &Queue{js: js, keys: kvs[1], Records: &Records{kv: kvs[0], js: js}, Batches: &Batches{kv: kvs[2], js: js}, dupWindow: 2 * time.Minute}
	if s, err := js.Stream(ctx, ResultStream); err == nil && s.CachedInfo().Config.Duplicates > 0 {
		q.dupWindow = s.CachedInfo().Config.Duplicates
	}
	// Set up by releases from 2026-12-01 on; without it no worker
	// status is read.
	if w, err := js.KeyValue(ctx, WorkerBucket); err == nil {
		q.workers = w
	}
	if t, err := js.KeyValue(ctx, TrafficBucket); err == nil {
		q.Traffic = &Traffic{kv: t}
	}
	return q, nil
}

// Check reports whether JetStream can take jobs now: the request stream
// answers, which on a cluster needs its leader, and so a majority of its
// replicas. It waits at most two seconds.
func (q *Queue) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := q.js.Stream(ctx, RequestStream) // a STREAM.INFO request
	if err != nil {
		return fmt.Errorf("JetStream cannot serve stream %s (on a cluster: fewer than a majority of its replicas are up?): %w", RequestStream, err)
	}
	// On a cluster, a leader that lost its peers still answers for a
	// while; what it says of them tells.
	if c := s.CachedInfo().Cluster; c != nil && len(c.Replicas) > 0 {
		up := 0
		if c.Leader != "" {
			up++
		}
		for _, r := range c.Replicas {
			if r.Name != c.Leader && r.Current && !r.Offline && r.Active < 10*time.Second {
				up++
			}
		}
		if total := s.CachedInfo().Config.Replicas; up <= total/2 {
			return fmt.Errorf("JetStream cannot store jobs: %d of the %d replicas of stream %s are up, fewer than a majority", up, total, RequestStream)
		}
	}
	return nil
}
