package jobs

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/inferq/inferq/record"
)

// Jobs move in sets: a worker marks a whole batch running, and records
// and announces a whole batch's outcomes. Each set's writes are published
// asynchronously and waited for once, so that a batch of 32 jobs costs a
// round trip to JetStream per step instead of 32 in turn; what each job
// writes is unchanged (see docs/nats.md).

// AckTimeout is how long a set of writes waits for JetStream to
// acknowledge them. An acknowledgement can be lost without the connection
// dropping (a stream's leader killed with the write in flight), and an
// asynchronous publish has no timeout of its own unless its JetStream
// context sets one (jetstream.WithPublishAsyncTimeout, which inferq's
// commands set to this): without a bound, a worker would wait for ever.
// A write that timed out is handed back and made again; one that was
// stored after all is found so.
const AckTimeout = 10 * time.Second

// Change is one job's record changing: Fn applied to the record as the
// caller last read it (Rec at revision Rev; nil to read it), stored if
// nobody wrote since, else applied again to what was written.
type Change struct {
	ID  string
	Rec *record.Record
	Rev uint64
	Fn  func(*record.Record) error
}

// Changed is the outcome of a Change, as Records.UpdateFrom returns it:
// the record as stored (or, when Fn refused, as Fn saw it), its revision,
// and the error.
type Changed struct {
	Rec *record.Record
	Rev uint64
	Err error
}

// UpdateAll applies changes as UpdateFrom would, one by one, but publishes
// every record in one go and waits once: changes whose starting record
// was stale are then made again from the stored one.
func (r *Records) UpdateAll(ctx context.Context, changes []Change) []Changed {
	out := make([]Changed, len(changes))
	acks := make([]jetstream.PubAckFuture, len(changes))
	for i, c := range changes {
		if c.Rec == nil || r.js == nil {
			continue // read first: the slow path below
		}
		rec := *c.Rec // Fn changes it; the caller's copy stays as read
		if err := c.Fn(&rec); err != nil {
			out[i] = Changed{Rec: &rec, Rev: c.Rev, Err: err}
			continue
		}
		b, err := json.Marshal(&rec)
		if err != nil {
			out[i].Err = fmt.Errorf("encode record %s: %w", c.ID, err)
			continue
		}
		msg := &nats.Msg{Subject: r.subject(c.ID), Data: b}
		acks[i], err = r.js.PublishMsgAsync(msg, jetstream.WithExpectLastSequencePerSubject(c.Rev))
		if err != nil {
			acks[i] = nil // the slow path tries again
			continue
		}
		out[i] = Changed{Rec: &rec}
	}
	var slow []int
	wctx, cancel := context.WithTimeout(ctx, cmp.Or(r.ackTimeout, AckTimeout))
	defer cancel()
	for i, a := range acks {
		if a == nil {
			if out[i].Rec == nil && out[i].Err == nil {
				slow = append(slow, i)
			}
			continue
		}
		ack, err := wait(wctx, a)
		switch {
		case err == nil:
			out[i].Rev = ack.Sequence
		case isWrongLastSequence(err):
			slow = append(slow, i)
		default:
			out[i] = Changed{Err: fmt.Errorf("update record %s: %w", changes[i].ID, err)}
		}
	}
	var g errgroup.Group
	g.SetLimit(32)
	for _, i := range slow {
		c := changes[i]
		g.Go(func() error {
			var rec *record.Record
			var rev uint64
			if c.Rec != nil && out[i].Rec == nil {
				// Not published (the publisher was stalled): from the
				// record as read.
				cp := *c.Rec
				rec, rev = &cp, c.Rev
			}
			rec, rev, err := r.UpdateFrom(ctx, c.ID, rec, rev, c.Fn)
			out[i] = Changed{Rec: rec, Rev: rev, Err: err}
			return nil
		})
	}
	g.Wait()
	return out
}

// subject is where the bucket keeps job id's record.
func (r *Records) subject(id string) string { return "$KV." + RecordBucket + "." + id }

// wait waits for an asynchronous publish to be acknowledged, or ctx to
// end.
func wait(ctx context.Context, a jetstream.PubAckFuture) (*jetstream.PubAck, error) {
	select {
	case ack := <-a.Ok():
		return ack, nil
	case err := <-a.Err():
		return nil, err
	case <-ctx.Done():
		return nil, fmt.Errorf("no acknowledgement from JetStream: %w", ctx.Err())
	}
}

// isWrongLastSequence reports a compare-and-set refused: someone wrote
// the record since it was read.
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// AnnounceAll announces finished jobs as Announce does, each with its
// response (responses[i] for recs[i]; nil for none), publishing all at
// once and waiting once. It returns each announcement's error.
func (q *Queue) AnnounceAll(ctx context.Context, recs []*record.Record, responses [][]byte) []error {
	errs := make([]error, len(recs))
	acks := make([]jetstream.PubAckFuture, len(recs))
	for i, rec := range recs {
		msg, err := announcement(rec, responses[i])
		if err == nil {
			acks[i], err = q.js.PublishMsgAsync(msg, jetstream.WithMsgID(rec.ID))
		}
		errs[i] = err
	}
	wctx, cancel := context.WithTimeout(ctx, cmp.Or(q.ackTimeout, AckTimeout))
	defer cancel()
	for i, a := range acks {
		if a == nil { // not published
			if errors.Is(errs[i], jetstream.ErrTooManyStalledMsgs) {
				errs[i] = q.Announce(recs[i], responses[i]) // one by one, then
			}
			continue
		}
		if _, err := wait(wctx, a); err != nil {
			errs[i] = fmt.Errorf("announce job %s: %w", recs[i].ID, err)
		}
	}
	return errs
}
