package jobs

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/internal/retry"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

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

// Job is a request on its way to a model.
type Job struct {
	ID    string
	Model string
	// Version pins a model version; 0 runs the default version.
	Version int64
	// Routed says Version was picked by the model's traffic split: the
	// default version answers if it is gone when the job runs.
	Routed bool
	// Shadows are the versions the job also runs on once it has
	// succeeded (shadow versions of the traffic split), for their
	// agreement with the answer; never seen by the client.
	Shadows []int64
	// ShadowOf and Answer, on a shadow run (see PublishShadows), are the
	// version that answered the job and its answer (a V2 JSON response),
	// which the run's outputs are compared with.
	ShadowOf string
	Answer   []byte
	Request  *tensor.Request
	// Priority picks the subject, and so the consumer, the job goes to.
	Priority record.Priority
	// Record and Revision are the job's record as it was queued, when the
	// message carries it: a hint that saves a read, checked by the
	// compare-and-set of the first update.
	Record   *record.Record
	Revision uint64
	// Trace carries the W3C trace context (traceparent, tracestate) the
	// job continues, as message headers; the worker reads it from there.
	Trace nats.Header
	// Lines, on a job packed from a batch file's lines, says how they
	// were packed; nil for a job of one request.
	Lines *batching.Lines
	// Binary, when set, is Request in the binary tensor extension as the
	// client sent it (its JSON header the first BinaryHeaderLen bytes),
	// published as it is: encoding Request again would copy every tensor
	// byte once more, and the worker decodes either alike.
	Binary          []byte
	BinaryHeaderLen int
	// Pipeline, on a model step of a pipeline job, is the step: the job's
	// ID and record are the pipeline job's.
	Pipeline *Step
}

// Step is a model step of a pipeline job as its message carries it: the
// pipeline, the step, the steps done and the job's state (the values
// later steps read, a V2 binary request, laid after the step's request
// in the message's data).
type Step struct {
	Pipeline, Name string
	// Outputs are the pipeline outputs the client asked for (none: all).
	Outputs        []string
	Done           []string
	State          []byte
	StateHeaderLen int
	// Prepare: the operations before the step have not run; the job's
	// request is empty, and its worker makes it from the state.
	Prepare bool
}

// MsgID is the JetStream message id of a job's message: its id, and for
// a pipeline step the step's name, so that a step published twice is
// kept once.
func (j *Job) MsgID() string {
	if j.Pipeline != nil {
		return j.ID + "." + j.Pipeline.Name
	}
	return j.ID
}

// Submit stores the job's record and publishes the job, returning once
// JetStream has acknowledged both: only then is the job safe to promise.
func (q *Queue) Submit(ctx context.Context, job *Job, rec *record.Record) error {
	msg, err := q.message(ctx, job)
	if err != nil {
		return err
	}
	return q.enqueue(ctx, msg, rec)
}

// SubmitAgain submits a job whose id is not new but derived (a line of
// a batch over stored objects, queued again by a feeder that took over
// from one that stopped): a job never stored is submitted, one stored
// and still queued is published again (JetStream drops the repeat
// within its duplicate window), and one that has started or ended is
// left alone, so that it runs once.
func (q *Queue) SubmitAgain(ctx context.Context, job *Job, rec *record.Record) error {
	_, _, err := q.Records.get(ctx, job.ID)
	switch {
	case errors.Is(err, ErrJobNotFound):
		return q.Submit(ctx, job, rec)
	case err != nil:
		return err
	}
	return q.Resubmit(ctx, job)
}

// message is job's message, its body stored apart when too large.
func (q *Queue) message(ctx context.Context, job *Job) (*nats.Msg, error) {
	msg, err := EncodeJob(job)
	if err != nil {
		return nil, err
	}
	if q.payloads != nil && q.maxInMessage > 0 && len(msg.Data) > q.maxInMessage {
		key := PayloadKey(job.MsgID())
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
	if rec.Status != record.Queued {
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
	return tryUntil(ctx, time.Now().Add(enqueueBudget), func(ctx context.Context, _ bool) error {
		_, err := q.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID(msg, rec.ID)), jetstream.WithExpectStream(RequestStream))
		return err
	})
}

// msgID is the JetStream message id of job id's message msg (see
// Job.MsgID).
func msgID(msg *nats.Msg, id string) string {
	if step := msg.Header.Get(HeaderStep); step != "" {
		return id + "." + step
	}
	return id
}

// PublishSteps queues the next model step of pipeline jobs whose records,
// at revs, say they wait for it (record.Advance), all at once: each
// record travels with its message, as Submit's does. A step published
// twice within the duplicate window is kept once. It returns an error
// per job.
func (q *Queue) PublishSteps(ctx context.Context, steps []*Job, recs []*record.Record, revs []uint64) []error {
	errs := make([]error, len(steps))
	acks := make([]jetstream.PubAckFuture, len(steps))
	msgs := make([]*nats.Msg, len(steps))
	for i, job := range steps {
		msg, err := q.message(ctx, job)
		if err == nil {
			var b []byte
			if b, err = json.Marshal(recs[i]); err == nil {
				msg.Header.Set(HeaderRecord, string(b))
				msg.Header.Set(HeaderRecordRevision, strconv.FormatUint(revs[i], 10))
				msgs[i] = msg
				acks[i], err = q.js.PublishMsgAsync(msg, jetstream.WithMsgID(job.MsgID()), jetstream.WithExpectStream(RequestStream))
			}
		}
		errs[i] = err
	}
	wctx, cancel := context.WithTimeout(ctx, cmp.Or(q.ackTimeout, AckTimeout))
	defer cancel()
	for i, a := range acks {
		if a != nil {
			_, errs[i] = wait(wctx, a)
		}
		if errs[i] != nil && msgs[i] != nil {
			// One at a time, then, with the retries a lost answer needs.
			errs[i] = tryUntil(ctx, time.Now().Add(enqueueBudget), func(ctx context.Context, _ bool) error {
				_, err := q.js.PublishMsg(ctx, msgs[i], jetstream.WithMsgID(steps[i].MsgID()), jetstream.WithExpectStream(RequestStream))
				return err
			})
		}
		if errs[i] != nil {
			if isFull(errs[i]) {
				errs[i] = ErrQueueFull
			}
			errs[i] = fmt.Errorf("queue step %s of job %s: %w", steps[i].Pipeline.Name, steps[i].ID, errs[i])
		}
	}
	return errs
}

// enqueue stores the record of a new job and publishes its message, with
// the record's id as the message id, returning once JetStream has
// acknowledged both. A write whose outcome is unknown (a timeout while a
// node of a cluster goes, or a leader moves) is made again until
// enqueueBudget has passed: the record's id is new, so a record that
// exists on a retry is this one, and JetStream drops a repeated publish
// of the same message id. A job JetStream refused has its record failed
// (see notQueued).
func (q *Queue) enqueue(ctx context.Context, msg *nats.Msg, rec *record.Record) error {
	deadline := time.Now().Add(enqueueBudget)
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode record %s: %w", rec.ID, err)
	}
	var rev uint64
	err = tryUntil(ctx, deadline, func(ctx context.Context, again bool) error {
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
	err = tryUntil(ctx, deadline, func(ctx context.Context, _ bool) error {
		_, err := q.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID(msg, rec.ID)), jetstream.WithExpectStream(RequestStream))
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
	if !isFull(cause) && !definite(cause) {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = q.End(ctx, id, record.Refuse, NotQueued+cause.Error())
}

// tryUntil calls fn until it succeeds, fails for good (a full queue, or ctx
// ended) or deadline passes, each try within two seconds; again says a
// try before this one failed.
func tryUntil(ctx context.Context, deadline time.Time, fn func(ctx context.Context, again bool) error) error {
	wait := retry.New(50*time.Millisecond, time.Second)
	for again := false; ; again = true {
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := fn(tctx, again)
		cancel()
		d := wait.Next()
		if err == nil || isFull(err) || ctx.Err() != nil || time.Now().Add(d).After(deadline) {
			return err
		}
		if definite(err) {
			return err // a definite refusal, not a lost answer
		}
		if !retry.Sleep(ctx, d) {
			return err
		}
	}
}

// definite reports an error of JetStream's that refuses a write for
// good: an API error other than 503 (no quorum, a leader moving) and
// other than a publish of the same message id still in process (an
// earlier try whose answer was lost, whose outcome is not known yet:
// seen when a cluster loses its quorum mid-publish).
func definite(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code != 503 && apiErr.ErrorCode != errDuplicateInProcess
}

// errDuplicateInProcess is nats-server's JSStreamDuplicateMessageConflict.
const errDuplicateInProcess jetstream.ErrorCode = 10158

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
	data, n := job.Binary, job.BinaryHeaderLen
	prepare := job.Pipeline != nil && job.Pipeline.Prepare
	if data == nil && !prepare { // a step to prepare carries its state alone
		var err error
		if data, n, err = job.Request.MarshalBinary(); err != nil {
			return nil, fmt.Errorf("encode job %s: %w", job.ID, err)
		}
	}
	msg := nats.NewMsg(RequestSubject(job.Model, job.Priority))
	if p := job.Pipeline; p != nil {
		if job.Binary != nil {
			data = append(data[:len(data):len(data)], p.State...)
		} else {
			data = append(data, p.State...)
		}
		msg.Header.Set(HeaderPipeline, p.Pipeline)
		msg.Header.Set(HeaderStep, p.Name)
		if len(p.Done) > 0 {
			msg.Header.Set(HeaderStepsDone, strings.Join(p.Done, ","))
		}
		if len(p.Outputs) > 0 {
			msg.Header.Set(HeaderPipelineOutputs, strings.Join(p.Outputs, ","))
		}
		if p.Prepare {
			msg.Header.Set(HeaderStepPrepare, "1")
		}
		if len(p.State) > 0 {
			msg.Header.Set(HeaderStateLength, strconv.Itoa(len(p.State)))
			msg.Header.Set(HeaderStateHeaderLength, strconv.Itoa(p.StateHeaderLen))
		}
	}
	msg.Data = data
	msg.Header.Set(HeaderJobID, job.ID)
	msg.Header.Set(HeaderModel, job.Model)
	if job.Version != 0 {
		msg.Header.Set(HeaderVersion, strconv.FormatInt(job.Version, 10))
	}
	if job.Routed {
		msg.Header.Set(HeaderRouted, "1")
	}
	if len(job.Shadows) > 0 {
		vs := make([]string, len(job.Shadows))
		for i, v := range job.Shadows {
			vs[i] = strconv.FormatInt(v, 10)
		}
		msg.Header.Set(HeaderShadow, strings.Join(vs, ","))
	}
	if !prepare {
		msg.Header.Set(HeaderHeaderLength, strconv.Itoa(n))
	}
	if job.Lines != nil {
		msg.Header.Set(HeaderLines, string(job.Lines.Parameters()))
	}
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
	if job.ShadowOf = header.Get(HeaderShadowOf); job.ShadowOf != "" {
		var err error
		if data, job.Answer, err = splitAnswer(header, data); err != nil {
			return job, fmt.Errorf("job %s: %w", job.ID, err)
		}
	}
	if v := header.Get(HeaderVersion); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return job, fmt.Errorf("job %s: %s %q is not a positive integer", job.ID, HeaderVersion, v)
		}
		job.Version = n
	}
	job.Routed = header.Get(HeaderRouted) == "1"
	if v := header.Get(HeaderShadow); v != "" {
		for _, f := range strings.Split(v, ",") {
			if n, err := strconv.ParseInt(f, 10, 64); err == nil && n > 0 {
				job.Shadows = append(job.Shadows, n)
			}
		}
	}
	if v := header.Get(HeaderRecord); v != "" {
		var rec record.Record
		rev, err := strconv.ParseUint(header.Get(HeaderRecordRevision), 10, 64)
		if err == nil && json.Unmarshal([]byte(v), &rec) == nil && rec.ID == job.ID {
			job.Record, job.Revision = &rec, rev
		}
	}
	if name := header.Get(HeaderPipeline); name != "" {
		p := &Step{Pipeline: name, Name: header.Get(HeaderStep)}
		if h := header.Get(HeaderStepsDone); h != "" {
			p.Done = strings.Split(h, ",")
		}
		if h := header.Get(HeaderPipelineOutputs); h != "" {
			p.Outputs = strings.Split(h, ",")
		}
		p.Prepare = header.Get(HeaderStepPrepare) == "1"
		if v := header.Get(HeaderStateLength); v != "" {
			n, err := strconv.Atoi(v)
			hl, herr := strconv.Atoi(header.Get(HeaderStateHeaderLength))
			if err != nil || herr != nil || n < 0 || n > len(data) || hl < 0 || hl > n {
				return job, fmt.Errorf("job %s: %s %q does not fit its %d bytes", job.ID, HeaderStateLength, v, len(data))
			}
			data, p.State, p.StateHeaderLen = data[:len(data)-n], data[len(data)-n:], hl
		}
		if p.Name == "" {
			return job, fmt.Errorf("job %s of pipeline %s names no step (%s)", job.ID, name, HeaderStep)
		}
		job.Pipeline = p
	}
	if job.Pipeline != nil && job.Pipeline.Prepare {
		if len(data) > 0 {
			return job, fmt.Errorf("job %s: a step to prepare carries %d bytes beside its state", job.ID, len(data))
		}
		job.Request = &tensor.Request{} // made by the worker (see consumer's prepare)
		return job, nil
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
	lines := job.Request.Parameters // queued by a release before 2026-12-01
	if h := header.Get(HeaderLines); h != "" {
		lines = []byte(h)
	}
	if job.Lines, err = batching.ParseLines(lines); err != nil {
		return job, fmt.Errorf("job %s: %s: %w", job.ID, HeaderLines, err)
	}
	return job, nil
}
