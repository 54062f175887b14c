package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/record"
)

// DeadLetterStream keeps a copy of every job that ended failed: its
// request as it was queued and why it failed, for an operator to inspect
// and replay (see Queue.DeadLetters and Queue.Replay).
const DeadLetterStream = "INFERQ_DEAD_LETTERS"

const deadPrefix = "inferq.dead."

// Headers a dead letter adds to the job message it copies.
const (
	HeaderError    = "Inferq-Error"
	HeaderAttempts = "Inferq-Attempts"
	HeaderFailedAt = "Inferq-Failed-At"
	// HeaderSubject is the subject the job was queued on, which says its
	// priority.
	HeaderSubject = "Inferq-Subject"
)

// DeadLetterSubject is the subject of a model's dead letter for a job.
func DeadLetterSubject(model, id string) string { return deadPrefix + Token(model) + "." + id }

func setupDeadLetters(ctx context.Context, js jetstream.JetStream, opts Options) error {
	return ensureStream(ctx, js, jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "inferq jobs that failed, with why, for inspection and replay",
		Subjects:    []string{deadPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    opts.Replicas,
		Duplicates:  opts.DuplicateWindow,
		MaxAge:      opts.DeadLetterRetention,
		// One letter per job: a job failed twice (its record write lost
		// after the first) keeps the latest.
		MaxMsgsPerSubject: 1,
		// Each model's letters are bounded (boundDeadLetters); all of
		// them together are bounded like the queue: the oldest letters
		// go first, and a letter is never refused, since a refusal would
		// hold its job back.
		MaxBytes: opts.MaxQueuedBytes,
		Discard:  jetstream.DiscardOld,
	})
}

// DeadLetter copies a failed job's message, with the reason it failed, to
// the dead-letter stream. Call it before the job's record is marked
// failed: if it errs, leave the job to be redelivered, so that no failed
// job goes without its letter.
func (q *Queue) DeadLetter(ctx context.Context, msg jetstream.Msg, reason string, attempts int) error {
	return q.DeadLetterOf(ctx, msg.Headers(), msg.Data(), msg.Subject(), reason, attempts)
}

// DeadLetterOf is DeadLetter of a message read from the stream by its
// parts (a step leased to user code, answered later).
func (q *Queue) DeadLetterOf(ctx context.Context, h nats.Header, data []byte, subject, reason string, attempts int) error {
	id, model := h.Get(HeaderJobID), h.Get(HeaderModel)
	if p := h.Get(HeaderPipeline); p != "" {
		model = p // a pipeline job's letter is its pipeline's, naming the step
	}
	if !subjectToken(model) || !subjectToken(id) {
		// Not a job inferq can replay (a hand-made message); its record,
		// if it has one, says why it failed.
		return nil
	}
	out := nats.NewMsg(DeadLetterSubject(model, id))
	out.Data = data
	for k, v := range h {
		if k == HeaderRecordRevision || strings.HasPrefix(k, "Nats-") {
			continue
		}
		out.Header[k] = v
	}
	out.Header.Set(HeaderError, headerValue(reason))
	out.Header.Set(HeaderAttempts, strconv.Itoa(attempts))
	out.Header.Set(HeaderFailedAt, time.Now().UTC().Format(time.RFC3339Nano))
	out.Header.Set(HeaderSubject, subject)
	_, err := q.js.PublishMsg(ctx, out, jetstream.WithMsgID("dead-"+id), jetstream.WithExpectStream(DeadLetterStream))
	if err != nil {
		return fmt.Errorf("dead-letter job %s: %w", id, err)
	}
	q.boundDeadLetters(ctx, model)
	return nil
}

// boundDeadLetters drops model's oldest dead letters past its bound
// (Options.MaxDeadLetters), so that the stream's own bound, shared by
// every model, is reached only by all of them together, never by one
// model's flood of failures. A purge that fails is tried again at the
// model's next letter.
func (q *Queue) boundDeadLetters(ctx context.Context, model string) {
	if q.maxDeadLetters <= 0 {
		return
	}
	s, err := q.js.Stream(ctx, DeadLetterStream)
	if err != nil {
		return
	}
	_ = s.Purge(ctx, jetstream.WithPurgeSubject(deadPrefix+Token(model)+".>"), jetstream.WithPurgeKeep(uint64(q.maxDeadLetters)))
}

// subjectToken reports whether s can be one token of a subject.
func subjectToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*> \t\r\n")
}

// headerValue makes s safe as a header value: one line, of bounded length.
func headerValue(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	const max = 2048
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

func deadLetterOf(m *jetstream.RawStreamMsg) record.DeadLetter {
	h := m.Header
	d := record.DeadLetter{
		Seq: m.Sequence, JobID: h.Get(HeaderJobID), Model: h.Get(HeaderModel),
		Error: h.Get(HeaderError), Bytes: len(m.Data),
	}
	d.Attempts, _ = strconv.Atoi(h.Get(HeaderAttempts))
	d.FailedAt, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderFailedAt))
	if h.Get(HeaderSubject) == RequestSubject(d.Model, record.High) {
		d.Priority = record.High
	}
	if p := h.Get(HeaderPipeline); p != "" {
		d.Model, d.Step = p, h.Get(HeaderStep)
	}
	if rec := recordOf(h); rec != nil {
		d.Batch = rec.Batch
	}
	return d
}

// recordOf is the record a job message carries, if it carries one.
func recordOf(h nats.Header) *record.Record {
	v := h.Get(HeaderRecord)
	if v == "" {
		return nil
	}
	var rec record.Record
	if json.Unmarshal([]byte(v), &rec) != nil {
		return nil
	}
	return &rec
}

// DeadLetters returns up to limit of a model's dead letters, oldest
// first, from those after stream sequence after (0 for the start).
func (q *Queue) DeadLetters(ctx context.Context, model string, after uint64, limit int) ([]record.DeadLetter, error) {
	s, err := q.js.Stream(ctx, DeadLetterStream)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", DeadLetterStream, err)
	}
	var out []record.DeadLetter
	seq := after + 1
	for len(out) < limit {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(deadPrefix+Token(model)+".*"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("read dead letters of %s: %w", model, err)
		}
		out = append(out, deadLetterOf(m))
		seq = m.Sequence + 1
	}
	return out, nil
}

// ErrNoDeadLetter is returned for a job that has no dead letter.
var ErrNoDeadLetter = errors.New("no dead letter for this job")

// Replay queues a dead letter's request again as a new job with id newID,
// whose record names the failed job in ReplayOf, and removes the letter.
// The new job keeps the old one's priority, webhook and request; not its
// deadline (long passed, most likely) nor its batch (which has ended).
func (q *Queue) Replay(ctx context.Context, model, id, newID string) (*record.Record, error) {
	s, err := q.js.Stream(ctx, DeadLetterStream)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", DeadLetterStream, err)
	}
	m, err := s.GetLastMsgForSubject(ctx, DeadLetterSubject(model, id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: %s of model %s", ErrNoDeadLetter, id, model)
	}
	if err != nil {
		return nil, fmt.Errorf("read dead letter of job %s: %w", id, err)
	}
	h := m.Header
	subject, stepModel := h.Get(HeaderSubject), model
	if h.Get(HeaderPipeline) == model {
		// A pipeline job's step: replayed on its model's queue, from
		// that step, the steps before it not run again.
		stepModel = h.Get(HeaderModel)
	}
	if subject != RequestSubject(stepModel, record.Normal) && subject != RequestSubject(stepModel, record.High) {
		subject = RequestSubject(stepModel, record.Normal)
	}
	old := recordOf(h)
	if old == nil {
		old = &record.Record{}
	}
	rec := NewRecord(newID, Spec{Model: model, ClientID: old.ClientID, Rows: old.Rows, Priority: old.Priority, Webhook: old.Webhook, ReplayOf: id})
	for _, st := range old.Steps {
		if st.Status == record.Succeeded {
			rec.Steps = append(rec.Steps, st)
		}
	}
	out := nats.NewMsg(subject)
	out.Data = m.Data
	for _, k := range []string{HeaderModel, HeaderVersion, HeaderPayload, HeaderHeaderLength, HeaderLines,
		HeaderPipeline, HeaderStep, HeaderStepsDone, HeaderStateLength, HeaderStateHeaderLength, HeaderPipelineOutputs, HeaderStepPrepare} {
		if v := h.Get(k); v != "" {
			out.Header.Set(k, v)
		}
	}
	out.Header.Set(HeaderJobID, newID)
	if err := q.enqueue(ctx, out, rec); err != nil {
		return nil, fmt.Errorf("replay job %s: %w", id, err)
	}
	// The replay is queued; the letter has done its work. Should this
	// delete fail, a second replay would queue the request once more,
	// which an operator can see in the listing.
	if err := s.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return rec, fmt.Errorf("job %s replayed as %s, but its dead letter could not be removed: %w", id, newID, err)
	}
	return rec, nil
}
