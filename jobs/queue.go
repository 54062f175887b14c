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
package jobs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/tensor"
)

// Names in NATS.
const (
	RequestStream = "INFERQ_REQUESTS"
	ResultStream  = "INFERQ_RESULTS"
	RecordBucket  = "INFERQ_JOBS"
	// KeyBucket maps idempotency keys to the jobs they created.
	KeyBucket = "INFERQ_IDEMPOTENCY"

	requestPrefix = "inferq.requests."
	resultPrefix  = "inferq.results."
)

// Message headers of a queued job.
const (
	HeaderJobID   = "Inferq-Job-Id"
	HeaderModel   = "Inferq-Model"
	HeaderVersion = "Inferq-Model-Version"
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
)

// RequestSubject is the subject a model's jobs of a priority are
// published on: inferq.requests.<model> for normal jobs and
// inferq.requests.<model>.high for high-priority ones.
func RequestSubject(model string, p Priority) string {
	if p == High {
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
func ConsumerName(model string, p Priority) string {
	if p == High {
		return "inferq-" + Token(model) + "@high"
	}
	return "inferq-" + Token(model)
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
	// DeadLetterRetention is how long a failed job's dead letter is kept
	// for replay. Default 14 days.
	DeadLetterRetention time.Duration
	// ResultStreamBytes bounds the results stream, which carries small
	// responses inline; the oldest announcements go first. Default 1 GiB.
	ResultStreamBytes int64
}

// Queue is inferq's JetStream layout, set up. It is safe for concurrent
// use.
type Queue struct {
	js      jetstream.JetStream
	keys    jetstream.KeyValue
	workers jetstream.KeyValue
	Records *Records
	Batches *Batches

	// payloads keeps request bodies too large for a message (see
	// StorePayloads).
	payloads     PayloadStore
	maxInMessage int
}

// PayloadStore keeps request bodies too large to travel in a message; the
// storage package's stores are.
type PayloadStore interface {
	Put(ctx context.Context, key string, r io.Reader) error
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	Delete(ctx context.Context, key string) error
}

// StorePayloads makes Submit put request bodies larger than maxInMessage
// bytes in store, and send the message with a reference to them (a claim
// check) instead. Workers fetch them with LoadPayload.
func (q *Queue) StorePayloads(store PayloadStore, maxInMessage int) {
	q.payloads, q.maxInMessage = store, maxInMessage
}

// PayloadKey is where the body of a job too large for a message is kept.
func PayloadKey(id string) string { return "payloads/" + id + ".bin" }

// LoadPayload returns the body of a job message: its data, or the object
// its HeaderPayload names.
func (q *Queue) LoadPayload(ctx context.Context, header nats.Header, data []byte) ([]byte, error) {
	key := header.Get(HeaderPayload)
	if key == "" {
		return data, nil
	}
	if q.payloads == nil {
		return nil, fmt.Errorf("job payload %s is in storage, and this worker has none configured", key)
	}
	rc, err := q.payloads.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("fetch job payload: %w", err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("fetch job payload %s: %w", key, err)
	}
	return b, nil
}

// DropPayload deletes the stored body of a finished job, if it has one.
func (q *Queue) DropPayload(ctx context.Context, header nats.Header) error {
	key := header.Get(HeaderPayload)
	if key == "" || q.payloads == nil {
		return nil
	}
	return q.payloads.Delete(ctx, key)
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
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
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
		return nil, fmt.Errorf("set up stream %s: %w", RequestStream, err)
	}
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        ResultStream,
		Description: "inferq finished jobs, one subject per model",
		Subjects:    []string{resultPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
		Duplicates:  opts.DuplicateWindow,
		MaxAge:      opts.ResultRetention,
		MaxBytes:    opts.ResultStreamBytes,
	})
	if err != nil {
		return nil, fmt.Errorf("set up stream %s: %w", ResultStream, err)
	}
	if err := setupDeadLetters(ctx, js, opts); err != nil {
		return nil, err
	}
	if err := setupMonitoring(ctx, js, opts); err != nil {
		return nil, err
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      RecordBucket,
		Description: "inferq job records by job id",
		History:     1,
		TTL:         opts.RecordRetention,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("set up bucket %s: %w", RecordBucket, err)
	}
	keys, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      KeyBucket,
		Description: "inferq idempotency keys: the job each created",
		History:     1,
		TTL:         opts.KeyRetention,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("set up bucket %s: %w", KeyBucket, err)
	}
	batches, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      BatchBucket,
		Description: "inferq batch file records by batch id",
		History:     1,
		TTL:         opts.RecordRetention,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("set up bucket %s: %w", BatchBucket, err)
	}
	workers, err := setupWorkers(ctx, js, opts.Replicas)
	if err != nil {
		return nil, err
	}
	return &Queue{js: js, keys: keys, workers: workers, Records: &Records{kv: kv, js: js}, Batches: &Batches{kv: batches}}, nil
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
	q := &Queue{js: js, keys: kvs[1], Records: &Records{kv: kvs[0], js: js}, Batches: &Batches{kv: kvs[2]}}
	// Set up by releases from 2026-12-01 on; without it no worker
	// status is read.
	if w, err := js.KeyValue(ctx, WorkerBucket); err == nil {
		q.workers = w
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

// Job is a request on its way to a model.
type Job struct {
	ID    string
	Model string
	// Version pins a model version; 0 runs the default version.
	Version int64
	Request *tensor.Request
	// Priority picks the subject, and so the consumer, the job goes to.
	Priority Priority
	// Record and Revision are the job's record as it was queued, when the
	// message carries it: a hint that saves a read, checked by the
	// compare-and-set of the first update.
	Record   *Record
	Revision uint64
	// Trace carries the W3C trace context (traceparent, tracestate) the
	// job continues, as message headers; the worker reads it from there.
	Trace nats.Header
}

// Submit stores the job's record and publishes the job, returning once
// JetStream has acknowledged both: only then is the job safe to promise.
func (q *Queue) Submit(ctx context.Context, job *Job, rec *Record) error {
	msg, err := q.message(ctx, job)
	if err != nil {
		return err
	}
	return q.enqueue(ctx, msg, rec)
}

// message is job's message, its body stored apart when too large.
func (q *Queue) message(ctx context.Context, job *Job) (*nats.Msg, error) {
	msg, err := EncodeJob(job)
	if err != nil {
		return nil, err
	}
	if q.payloads != nil && q.maxInMessage > 0 && len(msg.Data) > q.maxInMessage {
		key := PayloadKey(job.ID)
		if err := q.payloads.Put(ctx, key, bytes.NewReader(msg.Data)); err != nil {
			return nil, fmt.Errorf("store the payload of job %s: %w", job.ID, err)
		}
		msg.Data = nil
		msg.Header.Set(HeaderPayload, key)
	}
	return msg, nil
}

// Resubmit publishes again the message of a job whose record is still
// queued: a client retrying a submission whose answer it never got (or
// got as a 503 while a cluster lost a node) completes it. JetStream drops
// the message if the first publish made it, within its duplicate window;
// past that, a second message of a queued job runs it once all the same
// (the record's compare-and-set lets one run finish it). A job no longer
// queued is left alone.
func (q *Queue) Resubmit(ctx context.Context, job *Job) error {
	rec, rev, err := q.Records.get(ctx, job.ID)
	if err != nil {
		return err
	}
	if rec.Status != Queued {
		return nil
	}
	msg, err := q.message(ctx, job)
	if err != nil {
		return err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record %s: %w", rec.ID, err)
	}
	msg.Header.Set(HeaderRecord, string(b))
	msg.Header.Set(HeaderRecordRevision, strconv.FormatUint(rev, 10))
	return retry(ctx, time.Now().Add(enqueueBudget), func(ctx context.Context, _ bool) error {
		_, err := q.js.PublishMsg(ctx, msg, jetstream.WithMsgID(rec.ID), jetstream.WithExpectStream(RequestStream))
		return err
	})
}

// enqueue stores the record of a new job and publishes its message, with
// the record's id as the message id, returning once JetStream has
// acknowledged both. A write whose outcome is unknown (a timeout while a
// node of a cluster goes, or a leader moves) is made again until
// enqueueBudget has passed: the record's id is new, so a record that
// exists on a retry is this one, and JetStream drops a repeated publish
// of the same message id. A job JetStream refused has its record failed
// (see notQueued).
func (q *Queue) enqueue(ctx context.Context, msg *nats.Msg, rec *Record) error {
	deadline := time.Now().Add(enqueueBudget)
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record %s: %w", rec.ID, err)
	}
	var rev uint64
	err = retry(ctx, deadline, func(ctx context.Context, again bool) error {
		var err error
		rev, err = q.Records.kv.Create(ctx, rec.ID, b)
		if again && errors.Is(err, jetstream.ErrKeyExists) {
			// Ours, stored by a try whose answer was lost (the id is
			// new). A replica that lags may not have it yet: try again.
			e, gerr := q.Records.kv.Get(ctx, rec.ID)
			if gerr != nil {
				return fmt.Errorf("read back record %s: %v", rec.ID, gerr) // not an API error: retried
			}
			rev, err = e.Revision(), nil
		}
		return err
	})
	if err != nil {
		q.notQueued(ctx, rec.ID, err)
		return fmt.Errorf("store record %s: %w", rec.ID, err)
	}
	// The record travels with the job, so that the worker can mark it
	// running with one compare-and-set instead of a read and a write.
	msg.Header.Set(HeaderRecord, string(b))
	msg.Header.Set(HeaderRecordRevision, strconv.FormatUint(rev, 10))
	err = retry(ctx, deadline, func(ctx context.Context, _ bool) error {
		_, err := q.js.PublishMsg(ctx, msg, jetstream.WithMsgID(rec.ID), jetstream.WithExpectStream(RequestStream))
		return err
	})
	if err != nil {
		q.notQueued(ctx, rec.ID, err)
		if isFull(err) {
			return fmt.Errorf("publish job %s: %w", rec.ID, ErrQueueFull)
		}
		return fmt.Errorf("publish job %s: %w", rec.ID, err)
	}
	return nil
}

// enqueueBudget is how long enqueue keeps trying a write whose outcome is
// unknown: past a JetStream leader election on a cluster (a few seconds).
const enqueueBudget = 10 * time.Second

// NotQueued begins the error of a job whose submission JetStream refused.
const NotQueued = "could not be queued: "

// notQueued fails the record of a job that JetStream refused (a full
// queue), so that it never runs. A write whose outcome is unknown (no
// answer in time) leaves the record as it is: failing it could land after
// a retry of the same submission (its Idempotency-Key) had queued the
// job, and fail a job accepted; a record left queued with no message is
// completed by such a retry (Resubmit), or stays queued, unseen by a
// client who was answered 503 and never told its id.
func (q *Queue) notQueued(ctx context.Context, id string, cause error) {
	var apiErr *jetstream.APIError
	if !isFull(cause) && (!errors.As(cause, &apiErr) || apiErr.Code == 503) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = q.Records.Update(ctx, id, func(r *Record) error {
		if r.Status != Queued {
			return ErrConflict
		}
		r.Status, r.Error = Failed, NotQueued+cause.Error()
		return nil
	})
}

// retry calls fn until it succeeds, fails for good (a full queue, or ctx
// ended) or deadline passes, each try within two seconds; again says a
// try before this one failed.
func retry(ctx context.Context, deadline time.Time, fn func(ctx context.Context, again bool) error) error {
	wait := 50 * time.Millisecond
	for again := false; ; again = true {
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := fn(tctx, again)
		cancel()
		if err == nil || isFull(err) || ctx.Err() != nil || time.Now().Add(wait).After(deadline) {
			return err
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code != 503 {
			return err // a definite refusal, not a lost answer
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// ErrQueueFull is returned by Submit when the model's queue holds as many
// jobs as it may.
var ErrQueueFull = errors.New("queue full")

// isFull reports JetStream refusing a publish for a full stream.
func isFull(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "maximum messages") || strings.Contains(msg, "maximum bytes")
}

// EncodeJob encodes a job as a NATS message on its model's subject.
func EncodeJob(job *Job) (*nats.Msg, error) {
	data, n, err := job.Request.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encode job %s: %w", job.ID, err)
	}
	msg := nats.NewMsg(RequestSubject(job.Model, job.Priority))
	msg.Data = data
	msg.Header.Set(HeaderJobID, job.ID)
	msg.Header.Set(HeaderModel, job.Model)
	if job.Version != 0 {
		msg.Header.Set(HeaderVersion, strconv.FormatInt(job.Version, 10))
	}
	msg.Header.Set(HeaderHeaderLength, strconv.Itoa(n))
	for k, v := range job.Trace {
		msg.Header[k] = v
	}
	return msg, nil
}

// DecodeJob decodes a queued job. An error means the message can never
// be run and should be terminated.
func DecodeJob(header nats.Header, data []byte, lim tensor.Limits) (*Job, error) {
	job := &Job{ID: header.Get(HeaderJobID), Model: header.Get(HeaderModel)}
	if job.ID == "" {
		return nil, errors.New("job message has no " + HeaderJobID + " header")
	}
	if v := header.Get(HeaderVersion); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return job, fmt.Errorf("job %s: %s %q is not a positive integer", job.ID, HeaderVersion, v)
		}
		job.Version = n
	}
	if v := header.Get(HeaderRecord); v != "" {
		var rec Record
		rev, err := strconv.ParseUint(header.Get(HeaderRecordRevision), 10, 64)
		if err == nil && json.Unmarshal([]byte(v), &rec) == nil && rec.ID == job.ID {
			job.Record, job.Revision = &rec, rev
		}
	}
	var err error
	if hl := header.Get(HeaderHeaderLength); hl != "" {
		n, perr := strconv.Atoi(hl)
		if perr != nil {
			return job, fmt.Errorf("job %s: %s %q is not a number", job.ID, HeaderHeaderLength, hl)
		}
		job.Request, err = tensor.DecodeBinaryRequest(data, n, lim)
	} else {
		job.Request, err = tensor.DecodeRequest(data, lim)
	}
	if err != nil {
		return job, fmt.Errorf("job %s: %w", job.ID, err)
	}
	return job, nil
}

// ConsumerOptions configure a model's durable consumer.
type ConsumerOptions struct {
	// AckWait is how long a delivered job may go unacknowledged before it
	// is delivered again. Default 60s; workers report progress on long
	// batches so that slow models are not redelivered while running.
	AckWait time.Duration
	// MaxAckPending bounds the jobs delivered and not yet acknowledged,
	// across all workers of the model. Default 1024.
	MaxAckPending int
}

// Consumer creates or updates the durable consumer of a model's jobs of
// priority p.
func (q *Queue) Consumer(ctx context.Context, model string, p Priority, opts ConsumerOptions) (jetstream.Consumer, error) {
	if opts.AckWait <= 0 {
		opts.AckWait = 60 * time.Second
	}
	if opts.MaxAckPending <= 0 {
		opts.MaxAckPending = 1024
	}
	if err := q.retireOldConsumer(ctx, model, p); err != nil {
		return nil, fmt.Errorf("set up consumer for model %s: %w", model, err)
	}
	c, err := q.js.CreateOrUpdateConsumer(ctx, RequestStream, jetstream.ConsumerConfig{
		Durable:       ConsumerName(model, p),
		Description:   "inferq workers of model " + model + " (" + string(p) + " priority)",
		FilterSubject: RequestSubject(model, p),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       opts.AckWait,
		MaxDeliver:    -1, // attempts are counted by the worker, which ends the job failed
		MaxAckPending: opts.MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("set up consumer for model %s: %w", model, err)
	}
	return c, nil
}

// retireOldConsumer deletes a consumer of an earlier release that stands
// in the way of model's consumer of priority p: for a high-priority one,
// the model's own under its old name (see oldHighConsumerName), which
// holds its subject, and which a work-queue stream would not let a second
// consumer share; for a normal one, another model's old high-priority
// consumer holding this one's name. Jobs the deleted consumer delivered
// and nobody acknowledged stay in the stream, and come again to the
// model's new consumer.
func (q *Queue) retireOldConsumer(ctx context.Context, model string, p Priority) error {
	subject := RequestSubject(model, p)
	old := ConsumerName(model, p)
	if p == High {
		old = oldHighConsumerName(model)
	}
	c, err := q.js.Consumer(ctx, RequestStream, old)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up consumer %s: %w", old, err)
	}
	filter := c.CachedInfo().Config.FilterSubject
	stale := filter != subject // this model's name, another model's jobs
	if p == High {
		stale = filter == subject // this model's jobs, its old name
	}
	if !stale {
		return nil
	}
	if err := q.js.DeleteConsumer(ctx, RequestStream, old); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("delete consumer %s of an earlier release: %w", old, err)
	}
	return nil
}

// Depth is a model's queue: jobs waiting and jobs delivered but not yet
// acknowledged.
type Depth struct {
	Pending  uint64
	InFlight int
}

// Depth reads the depth of a model's queue from its consumers, both
// priorities together. A consumer not created yet (no worker has run)
// counts the stream's messages on its subject as pending.
func (q *Queue) Depth(ctx context.Context, model string) (Depth, error) {
	var d Depth
	for _, p := range []Priority{Normal, High} {
		c, err := q.js.Consumer(ctx, RequestStream, ConsumerName(model, p))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			n, err := q.waiting(ctx, RequestSubject(model, p))
			if err != nil {
				return Depth{}, fmt.Errorf("queue depth of %s: %w", model, err)
			}
			d.Pending += n
			continue
		}
		if err != nil {
			return Depth{}, fmt.Errorf("queue depth of %s: %w", model, err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			return Depth{}, fmt.Errorf("queue depth of %s: %w", model, err)
		}
		d.Pending += info.NumPending
		d.InFlight += info.NumAckPending
	}
	return d, nil
}

// waiting counts the messages in the request stream on subject.
func (q *Queue) waiting(ctx context.Context, subject string) (uint64, error) {
	s, err := q.js.Stream(ctx, RequestStream)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, err
	}
	return info.State.Subjects[subject], nil
}

// MaxInlineResponse is the largest V2 response an announcement carries;
// a larger one is read through the record's result_url.
const MaxInlineResponse = 256 << 10

// Announce publishes a finished job's record on its model's results
// subject, with its V2 response inline as "response" when it is given and
// no larger than MaxInlineResponse. The job id is the message id, so a
// repeat is dropped. It waits for JetStream to have stored it, so that a
// worker that then acknowledges the job (and dies) cannot leave it
// unannounced: an announcement published without waiting was lost, now
// and then, to a kill.
func (q *Queue) Announce(rec *Record, response []byte) error {
	msg, err := announcement(rec, response)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := q.js.PublishMsg(ctx, msg, jetstream.WithMsgID(rec.ID)); err != nil {
		return fmt.Errorf("announce job %s: %w", rec.ID, err)
	}
	return nil
}

// announcement is the message announcing a finished job.
func announcement(rec *Record, response []byte) (*nats.Msg, error) {
	b, err := json.Marshal(rec.Public())
	if err != nil {
		return nil, fmt.Errorf("encode record %s: %w", rec.ID, err)
	}
	if len(response) > 0 && len(response) <= MaxInlineResponse {
		b = append(b[:len(b)-1], `,"response":`...)
		b = append(append(b, response...), '}')
	}
	msg := nats.NewMsg(ResultSubject(rec.Model))
	msg.Data = b
	msg.Header.Set(HeaderJobID, rec.ID)
	if rec.Webhook != "" {
		msg.Header.Set(HeaderWebhook, rec.Webhook)
	}
	if rec.Batch != "" {
		msg.Header.Set(HeaderBatch, rec.Batch)
	}
	return msg, nil
}

// Announcement is what inferq.results.<model> carries: a finished job's
// record and, for a succeeded job whose response is small enough, the
// response.
type Announcement struct {
	Record
	Response json.RawMessage `json:"response,omitempty"`
}

// ErrKeyReused is a claim of an idempotency key already tied to a job
// whose request differs.
var ErrKeyReused = errors.New("idempotency key reused with a different request")

// ClaimKey ties an idempotency key of a caller to job id and the digest
// of its request, unless the key is already tied to a job: then it
// returns that job's id, with ErrKeyReused when the digests differ. The
// caller (owner) is whoever the API knows the request by, such as a hash
// of its token: keys of different callers never meet. Keys are hashed,
// so any string the client sends is a valid key.
func (q *Queue) ClaimKey(ctx context.Context, owner, key, id, digest string) (existing string, err error) {
	k := keyName(owner, key)
	if _, err := q.keys.Create(ctx, k, []byte(id+" "+digest)); err == nil {
		return "", nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return "", fmt.Errorf("idempotency key: %w", err)
	}
	e, err := q.keys.Get(ctx, k)
	if err != nil {
		return "", fmt.Errorf("idempotency key: %w", err)
	}
	existing, was, _ := strings.Cut(string(e.Value()), " ")
	if was != digest {
		return existing, ErrKeyReused
	}
	return existing, nil
}

// ReclaimKey ties an idempotency key already tied to job old, which was
// never queued, to job id instead: a client retrying a submission that
// failed (and whose key could not be released then) gets a new job, not
// the one that failed. It returns ErrConflict when the key has been tied
// to another job meanwhile.
func (q *Queue) ReclaimKey(ctx context.Context, owner, key, old, id, digest string) error {
	k := keyName(owner, key)
	e, err := q.keys.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		_, err = q.keys.Create(ctx, k, []byte(id+" "+digest))
	} else if err == nil {
		if cur, _, _ := strings.Cut(string(e.Value()), " "); cur != old {
			return ErrConflict
		}
		_, err = q.keys.Update(ctx, k, []byte(id+" "+digest), e.Revision())
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return ErrConflict
	}
	if err != nil {
		return fmt.Errorf("idempotency key: %w", err)
	}
	return nil
}

// ReleaseKey unties an idempotency key, when its job could not be queued.
func (q *Queue) ReleaseKey(ctx context.Context, owner, key string) error {
	return q.keys.Purge(ctx, keyName(owner, key))
}

func keyName(owner, key string) string {
	sum := sha256.Sum256([]byte(owner + "\x00" + key))
	return hex.EncodeToString(sum[:])
}

// FollowResults calls fn with each announcement of model's finished jobs,
// in order, with its sequence in the results stream, until ctx ends or fn
// returns an error. It starts after sequence after; with after 0, all
// retained announcements when fromStart, else only new ones. An ordered
// consumer carries it, so nothing is skipped or repeated.
func (q *Queue) FollowResults(ctx context.Context, model string, after uint64, fromStart bool, fn func(seq uint64, data []byte) error) error {
	return q.follow(ctx, ResultSubject(model), after, fromStart, nil, fn)
}

// FollowAllResults calls fn with each announcement of every model's
// finished jobs from now on, in order, until ctx ends or fn returns an
// error. ready, when set, is called once the consumer exists: every job
// finished after that is followed.
func (q *Queue) FollowAllResults(ctx context.Context, ready func(), fn func(data []byte) error) error {
	return q.follow(ctx, resultPrefix+">", 0, false, ready, func(_ uint64, data []byte) error { return fn(data) })
}

func (q *Queue) follow(ctx context.Context, subject string, after uint64, fromStart bool, ready func(), fn func(seq uint64, data []byte) error) error {
	model := subject
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}, DeliverPolicy: jetstream.DeliverNewPolicy}
	switch {
	case after > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	case fromStart:
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	cons, err := q.js.OrderedConsumer(ctx, ResultStream, cfg)
	if err != nil {
		return fmt.Errorf("follow results of %s: %w", model, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("follow results of %s: %w", model, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	if ready != nil {
		ready()
	}
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return ctx.Err()
			}
			return fmt.Errorf("follow results of %s: %w", model, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("follow results of %s: %w", model, err)
		}
		if err := fn(meta.Sequence.Stream, m.Data()); err != nil {
			return err
		}
	}
}

// WebhookConsumer creates or updates the durable consumer that webhook
// dispatchers share: every announcement of every model, each delivered
// to one dispatcher, at most maxDeliver times.
func (q *Queue) WebhookConsumer(ctx context.Context, maxDeliver int) (jetstream.Consumer, error) {
	c, err := q.js.CreateOrUpdateConsumer(ctx, ResultStream, jetstream.ConsumerConfig{
		Durable:       "inferq-webhooks",
		Description:   "inferq webhook dispatchers",
		FilterSubject: resultPrefix + ">",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxDeliver:    maxDeliver,
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("set up webhook consumer: %w", err)
	}
	return c, nil
}

// ResultsPosition is the sequence of the last announcement in the results
// stream: following from it gets only what is announced after this call.
func (q *Queue) ResultsPosition(ctx context.Context) (uint64, error) {
	s, err := q.js.Stream(ctx, ResultStream)
	if err != nil {
		return 0, fmt.Errorf("results stream: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("results stream: %w", err)
	}
	return info.State.LastSeq, nil
}

// Backlog is a model's jobs waiting and in flight, for scaling.
func (q *Queue) Backlog(ctx context.Context, model string) (pending, inFlight int64, err error) {
	d, err := q.Depth(ctx, model)
	return int64(d.Pending), int64(d.InFlight), err
}

// Models lists the models with a durable consumer in the request stream:
// those whose workers have run at least once.
func (q *Queue) Models(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	stream, err := q.js.Stream(ctx, RequestStream)
	if err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	names := stream.ConsumerNames(ctx)
	for n := range names.Name() {
		if m, ok := strings.CutPrefix(n, "inferq-"); ok {
			seen[modelOfToken(strings.TrimSuffix(m, "-high"))] = true
		}
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	return slices.Sorted(maps.Keys(seen)), nil
}
