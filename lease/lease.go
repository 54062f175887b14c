// Package lease hands the steps of pipeline jobs that user code runs
// (steps with `external:` in pipeline.yaml) to that code over HTTP, and
// takes its answers: POST /v1/pipelines/{p}/steps/{s}/leases and
// POST /v1/leases/{lease} (../shared/API.md, "Steps run by user code").
//
// Such a step is a job message on its own subject (flow.ExternalModel),
// read by a durable consumer whose ack wait is the step's lease timeout:
// a lease is a delivery, and a lease not answered in time is delivered
// again, to whoever asks next. The lease id seals (AES-GCM, under the
// deployment's event key) what answering needs: the delivery's reply
// subject, the message's place in the stream, the job and the attempt.
// Any API process can take an answer, which settles the delivery by its
// reply subject and moves the job on as a worker does after a model step.
package lease

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/flow"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// Catalog finds pipelines and the models of their steps; *model.Catalog
// is one.
type Catalog interface {
	Lookup(name string, version int64) (*model.Model, error)
}

// Results stores the result of a pipeline job that ends with a step run
// by user code; the storage package's stores do.
type Results interface {
	Put(ctx context.Context, key string, r io.Reader) error
}

// Options configure a Leaser. Queue, Catalog and Results are required.
type Options struct {
	Queue   *jobs.Queue
	Catalog Catalog
	Results Results
	Limits  tensor.Limits
	// Name is the worker name a leased job's record shows.
	Name string
}

// Leaser leases external steps and takes their answers. It is safe for
// concurrent use.
type Leaser struct {
	opts      Options
	consumers sync.Map // flow.ExternalModel name -> jetstream.Consumer
}

// New returns a Leaser.
func New(opts Options) (*Leaser, error) {
	if opts.Queue == nil || opts.Catalog == nil || opts.Results == nil {
		return nil, errors.New("lease: Queue, Catalog and Results are required")
	}
	if opts.Name == "" {
		opts.Name = "user code"
	}
	return &Leaser{opts: opts}, nil
}

// Errors the HTTP layer maps to status codes.
var (
	// ErrNotFound: no such pipeline or external step (404).
	ErrNotFound = errors.New("not found")
	// ErrUnknownLease: a lease id that is not one, or whose lease has
	// expired or been answered (404).
	ErrUnknownLease = errors.New("unknown or expired lease")
	// ErrBadAnswer: an answer that is not a V2 response of the step's
	// outputs, nor an error (400).
	ErrBadAnswer = errors.New("bad answer")
)

// Lease is a step leased to user code.
type Lease struct {
	ID  string `json:"lease"`
	Job string `json:"job"`
	// Request is the step's inputs, by the names the step gives them.
	Request *tensor.Request `json:"-"`
	Attempt int             `json:"attempt"`
	// Deadline is when the lease expires and the step is offered again.
	Deadline time.Time `json:"deadline"`
}

// token is what a lease id seals.
type token struct {
	Reply    string `json:"r"`
	Seq      uint64 `json:"q"`
	Job      string `json:"j"`
	Pipeline string `json:"p"`
	Step     string `json:"s"`
	Attempt  int    `json:"a"`
}

// step finds an external step of a pipeline.
func (l *Leaser) step(pipelineName, step string) (*pipeline.Plan, *pipeline.Step, error) {
	m, err := l.opts.Catalog.Lookup(pipelineName, 0)
	if err != nil || m.Pipeline == nil {
		return nil, nil, fmt.Errorf("%w: %s is not a pipeline served here", ErrNotFound, pipelineName)
	}
	st := m.Pipeline.Step(step)
	if st == nil || st.Kind() != "external" {
		return nil, nil, fmt.Errorf("%w: pipeline %s has no step %q run by user code", ErrNotFound, pipelineName, step)
	}
	return m.Pipeline, st, nil
}

// consumer is the durable consumer of an external step's subject.
func (l *Leaser) consumer(ctx context.Context, name string, ackWait time.Duration) (jetstream.Consumer, error) {
	if c, ok := l.consumers.Load(name); ok {
		return c.(jetstream.Consumer), nil
	}
	c, err := l.opts.Queue.Consumer(ctx, name, record.Normal, jobs.ConsumerOptions{AckWait: ackWait})
	if err != nil {
		return nil, err
	}
	l.consumers.Store(name, c)
	return c, nil
}

// Take leases the next waiting job of an external step, waiting up to
// wait for one; nil when none came. A job found final (cancelled) is
// dropped, one past its attempts failed, and the wait goes on.
func (l *Leaser) Take(ctx context.Context, pipelineName, stepName string, wait time.Duration) (*Lease, error) {
	_, st, err := l.step(pipelineName, stepName)
	if err != nil {
		return nil, err
	}
	timeout, attempts := st.Lease()
	c, err := l.consumer(ctx, flow.ExternalModel(pipelineName, stepName), timeout)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		left := time.Until(deadline)
		if left < 10*time.Millisecond {
			return nil, nil
		}
		batch, err := c.Fetch(1, jetstream.FetchMaxWait(left))
		if err != nil {
			return nil, fmt.Errorf("lease step %s of %s: %w", stepName, pipelineName, err)
		}
		var msg jetstream.Msg
		for m := range batch.Messages() {
			msg = m
		}
		if msg == nil {
			if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
				return nil, fmt.Errorf("lease step %s of %s: %w", stepName, pipelineName, err)
			}
			continue
		}
		lease, err := l.start(ctx, msg, attempts, timeout)
		if err != nil {
			return nil, err
		}
		if lease != nil {
			return lease, nil
		}
	}
}

// start marks a fetched step's job running for this attempt and returns
// its lease; nil when the job does not run (settled here).
func (l *Leaser) start(ctx context.Context, msg jetstream.Msg, attempts int, timeout time.Duration) (*Lease, error) {
	q := l.opts.Queue
	body, err := q.LoadPayload(ctx, msg.Headers(), msg.Data())
	if err != nil {
		_ = msg.NakWithDelay(time.Second)
		return nil, err
	}
	job, err := jobs.DecodeJob(msg.Headers(), body, l.opts.Limits)
	if err != nil || job.Pipeline == nil {
		_ = msg.Term()
		return nil, nil
	}
	now := time.Now().UTC()
	attempt := 0
	var gaveUp bool
	rec, rev, err := q.Records.UpdateFrom(ctx, job.ID, nil, 0, func(r *record.Record) error {
		if r.Status.Final() {
			return record.ErrConflict
		}
		attempt = r.Attempts + 1
		if attempt > attempts {
			gaveUp = true
			return record.ErrConflict
		}
		if _, err := r.Apply(record.Start, now, ""); err != nil {
			return err
		}
		r.StartStep(job.Pipeline.Name, now, attempt)
		r.Attempts, r.Worker = attempt, l.opts.Name
		return nil
	})
	switch {
	case gaveUp:
		reason := fmt.Sprintf("gave up after %d leases that were not answered within %s", attempt-1, timeout)
		return nil, l.fail(ctx, msg.Headers(), body, msg.Subject(), msg.Reply(), job, rec, rev, attempt-1, reason)
	case errors.Is(err, record.ErrConflict), errors.Is(err, jobs.ErrJobNotFound):
		_ = msg.Ack() // ended meanwhile (cancelled)
		return nil, nil
	case err != nil:
		_ = msg.NakWithDelay(time.Second)
		return nil, err
	}
	meta, err := msg.Metadata()
	if err != nil {
		_ = msg.NakWithDelay(time.Second)
		return nil, err
	}
	id, err := l.seal(token{Reply: msg.Reply(), Seq: meta.Sequence.Stream, Job: job.ID, Pipeline: job.Pipeline.Pipeline, Step: job.Pipeline.Name, Attempt: attempt})
	if err != nil {
		return nil, err
	}
	return &Lease{ID: id, Job: job.ID, Request: job.Request, Attempt: attempt, Deadline: now.Add(timeout)}, nil
}

// Answer takes user code's answer to a lease: the step's outputs, or
// (errMsg not empty) why its attempt failed.
// may, when not nil, says whether the caller may use the lease's
// pipeline; a lease of another is unknown to it.
func (l *Leaser) Answer(ctx context.Context, leaseID string, outputs []tensor.Tensor, errMsg string, may func(pipeline string) bool) error {
	t, err := l.open(leaseID)
	if err != nil || may != nil && !may(t.Pipeline) {
		return ErrUnknownLease
	}
	q := l.opts.Queue
	rec, rev, err := q.Records.GetRev(ctx, t.Job)
	if errors.Is(err, jobs.ErrJobNotFound) {
		return ErrUnknownLease
	}
	if err != nil {
		return err
	}
	if rec.Status != record.Running || rec.Attempts != t.Attempt || !slices.ContainsFunc(rec.Steps, func(s record.Step) bool { return s.Name == t.Step && s.Status == record.Running }) {
		return fmt.Errorf("%w: job %s is %s, and its step %s is no longer on this lease", ErrUnknownLease, t.Job, rec.Status, t.Step)
	}
	raw, err := q.RequestMsg(ctx, t.Seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return ErrUnknownLease
	}
	if err != nil {
		return err
	}
	body, err := q.LoadPayload(ctx, raw.Header, raw.Data)
	if err != nil {
		return err
	}
	job, err := jobs.DecodeJob(raw.Header, body, l.opts.Limits)
	if err != nil || job.Pipeline == nil || job.ID != t.Job {
		return ErrUnknownLease
	}
	plan, st, err := l.step(t.Pipeline, t.Step)
	if err != nil {
		return err
	}
	_, attempts := st.Lease()
	if errMsg != "" {
		if t.Attempt < attempts {
			delay := time.Duration(t.Attempt) * time.Second
			return q.SettleReply(ctx, t.Reply, fmt.Sprintf(`-NAK {"delay": %d}`, delay.Nanoseconds()))
		}
		return l.fail(ctx, raw.Header, raw.Data, raw.Subject, t.Reply, job, rec, rev, t.Attempt, fmt.Sprintf("%s (attempt %d of %d)", errMsg, t.Attempt, attempts))
	}
	state, err := pipeline.DecodeState(job.Pipeline.State, job.Pipeline.StateHeaderLen, job.Pipeline.Done, l.opts.Limits)
	if err != nil {
		return err
	}
	call, final, err := flow.Continue(plan, state, t.Step, outputs, nil, l.opts.Catalog)
	if err != nil {
		// The answer cannot go on (an output a later step needs is
		// missing, an operation after it fails): the client's to fix.
		return fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	now := time.Now().UTC()
	if call != nil {
		next, err := call.Job(plan, job.ID, state, job)
		if err != nil {
			return err
		}
		rec, rev, err := q.Records.UpdateFrom(ctx, job.ID, rec, rev, func(r *record.Record) error {
			return r.AdvanceStep(t.Step, next.Pipeline.Name, now, t.Attempt)
		})
		if err != nil {
			return err
		}
		if err := q.PublishSteps(ctx, []*jobs.Job{next}, []*record.Record{rec}, []uint64{rev})[0]; err != nil {
			return err
		}
		return q.SettleReply(ctx, t.Reply, "+ACK")
	}
	resp := &tensor.Response{ModelName: t.Pipeline, ModelVersion: "1", ID: job.ID, Outputs: tensor.Select(final, job.Pipeline.Outputs)}
	data := resp.AppendJSON(nil)
	key := jobs.JobResultKey(t.Pipeline, job.ID)
	if err := l.opts.Results.Put(ctx, key, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("store the result of job %s: %w", job.ID, err)
	}
	rec, _, err = q.Records.UpdateFrom(ctx, job.ID, rec, rev, func(r *record.Record) error {
		if _, err := r.Apply(record.Succeed, now, ""); err != nil {
			return err
		}
		r.EndStep(t.Step, record.Succeeded, now, t.Attempt, "")
		r.Result = &record.ResultRef{Key: key, Length: int64(len(data)), Whole: true}
		return nil
	})
	if err != nil {
		return err
	}
	var inline []byte
	if len(data) <= jobs.MaxInlineResponse {
		inline = data
	}
	if err := q.Announce(rec, inline); err != nil {
		return err // the record is final: a repeat answer finds the lease gone, the job done
	}
	return q.SettleReply(ctx, t.Reply, "+ACK")
}

// fail ends a step's job failed: its dead letter (replayed from this
// step), its record naming the step, its announcement; then settles the
// delivery.
func (l *Leaser) fail(ctx context.Context, h map[string][]string, data []byte, subject, reply string, job *jobs.Job, rec *record.Record, rev uint64, attempt int, reason string) error {
	q := l.opts.Queue
	why := fmt.Sprintf("step %s (run by user code): %s", job.Pipeline.Name, reason)
	if err := q.DeadLetterOf(ctx, h, data, subject, why, attempt); err != nil {
		return err
	}
	now := time.Now().UTC()
	rec, _, err := q.Records.UpdateFrom(ctx, job.ID, rec, rev, func(r *record.Record) error {
		if _, err := r.Apply(record.Fail, now, why); err != nil {
			return err
		}
		r.EndStep(job.Pipeline.Name, record.Failed, now, attempt, reason)
		return nil
	})
	if errors.Is(err, record.ErrConflict) {
		return q.SettleReply(ctx, reply, "+ACK")
	}
	if err != nil {
		return err
	}
	if err := q.Announce(rec, nil); err != nil {
		return err
	}
	return q.SettleReply(ctx, reply, "+ACK")
}

// seal and open make and read lease ids.
func (l *Leaser) seal(t token) (string, error) {
	aead, err := l.aead()
	if err != nil {
		return "", err
	}
	plain, err := json.Marshal(t)
	if err != nil {
		return "", err
	}
	nonce := make([]byte, aead.NonceSize())
	_, _ = rand.Read(nonce) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(aead.Seal(nonce, nonce, plain, nil)), nil
}

func (l *Leaser) open(id string) (token, error) {
	var t token
	b, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil {
		return t, err
	}
	aead, err := l.aead()
	if err != nil {
		return t, err
	}
	if len(b) < aead.NonceSize() {
		return t, errors.New("short lease id")
	}
	plain, err := aead.Open(nil, b[:aead.NonceSize()], b[aead.NonceSize():], nil)
	if err != nil {
		return t, err
	}
	return t, json.Unmarshal(plain, &t)
}

// aead is AES-GCM under a key derived from the deployment's event key,
// which every API process shares.
func (l *Leaser) aead() (cipher.AEAD, error) {
	secret, err := l.opts.Queue.EventKey(context.Background())
	if err != nil {
		return nil, fmt.Errorf("lease key: %w", err)
	}
	key := sha256.Sum256(append([]byte("inferq lease "), secret...))
	block, err := aes.NewCipher(key[:16])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
