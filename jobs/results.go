package jobs

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/record"
)

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
func (q *Queue) Announce(rec *record.Record, response []byte) error {
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

// CanAnnounceAgain reports whether a finished job may be announced again
// now without being announced twice: for a worker that finds it final
// when its message comes back, whose writer (a worker killed after its
// record, the API cancelling it) may not have announced it. The results
// stream drops a repeat if the first made it, but only within its
// duplicate window: past it (a cancelled job that waited long in a deep
// queue) webhooks and batch counts would see the job twice. A quarter of
// the window is kept in hand for clocks that disagree between hosts.
func (q *Queue) CanAnnounceAgain(rec *record.Record) bool {
	window := q.dupWindow
	if window <= 0 {
		window = 2 * time.Minute
	}
	return rec.FinishedAt != nil && time.Since(*rec.FinishedAt) < window-window/4
}

// announcement is the message announcing a finished job.
func announcement(rec *record.Record, response []byte) (*nats.Msg, error) {
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
	record.Record
	Response json.RawMessage `json:"response,omitempty"`
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

// ErrNotAnnounced is returned by End for a job made final whose
// announcement could not be published: the change stands, and the
// worker that takes the job's message announces it again while the
// results stream still drops a repeat (CanAnnounceAgain).
var ErrNotAnnounced = errors.New("the job's announcement could not be published")

// End is the finisher of the changes made outside a worker, where no job
// message is held: it applies event ev to job id's record (Record.Apply:
// the transition table), and then writes what the transition says, in
// its order (the announcement). It returns the record as stored, or as
// it is with an error wrapping record.ErrConflict when the table refuses
// the change.
func (q *Queue) End(ctx context.Context, id string, ev record.Event, reason string) (*record.Record, error) {
	now := time.Now().UTC()
	var t record.Transition
	rec, err := q.Records.Update(ctx, id, func(r *record.Record) error {
		var err error
		t, err = r.Apply(ev, now, reason)
		return err
	})
	if err != nil {
		return rec, err
	}
	if t.Writes&record.Announce != 0 {
		if err := q.Announce(rec, nil); err != nil {
			return rec, fmt.Errorf("%w: %v", ErrNotAnnounced, err)
		}
	}
	return rec, nil
}

// eventKeyMeta is the results stream's metadata key that holds the
// secret the event key is derived from.
const eventKeyMeta = "inferq_event_key"

// newEventKey is a new secret for eventKeyMeta: 128 random bits as text.
func newEventKey() string { return rand.Text() }

// EventKey is the secret that result streams' event ids are made with
// (producer's eventID): a position in the results stream, shared by every
// model, would tell a tenant the others' volume. It is kept in the
// results stream's metadata, set by the process that created the stream
// (or first added it), so that every API process makes and reads the same
// ids, across restarts. It is read again every minute, so that processes
// that raced to add it to a stream of an earlier release agree soon.
func (q *Queue) EventKey(ctx context.Context) ([]byte, error) {
	q.eventKeyMu.Lock()
	defer q.eventKeyMu.Unlock()
	if q.eventKey != nil && time.Since(q.eventKeyAt) < time.Minute {
		return q.eventKey, nil
	}
	s, err := q.js.Stream(ctx, ResultStream)
	if err != nil {
		return nil, fmt.Errorf("results stream: %w", err)
	}
	secret := s.CachedInfo().Config.Metadata[eventKeyMeta]
	if secret == "" {
		return nil, fmt.Errorf("the results stream holds no event key (%s metadata): start an API or worker of this release, which adds it", eventKeyMeta)
	}
	sum := sha256.Sum256([]byte(secret))
	q.eventKey, q.eventKeyAt = sum[:16], time.Now()
	return q.eventKey, nil
}
