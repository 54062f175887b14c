package jobs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/record"
)

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
func (q *Queue) Consumer(ctx context.Context, model string, p record.Priority, opts ConsumerOptions) (jetstream.Consumer, error) {
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
func (q *Queue) retireOldConsumer(ctx context.Context, model string, p record.Priority) error {
	subject := RequestSubject(model, p)
	old := ConsumerName(model, p)
	if p == record.High {
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
	if p == record.High {
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
		if m, _, ok := ModelOfConsumer(n); ok {
			seen[m] = true
		}
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("list models: %w", err)
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

// Depth reads the depth of a model's queue from its consumers, both
// priorities together. A consumer not created yet (no worker has run)
// counts the stream's messages on its subject as pending.
func (q *Queue) Depth(ctx context.Context, model string) (Depth, error) {
	var d Depth
	for _, p := range []record.Priority{record.Normal, record.High} {
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

// RequestMsg reads the job message at seq of the request stream (one
// delivered and not yet acknowledged: a leased step's).
func (q *Queue) RequestMsg(ctx context.Context, seq uint64) (*jetstream.RawStreamMsg, error) {
	s, err := q.js.Stream(ctx, RequestStream)
	if err != nil {
		return nil, err
	}
	return s.GetMsg(ctx, seq)
}

// SettleReply settles a delivered job message by its reply subject, as
// the holder of the message would: "+ACK", "-NAK" or "-NAK {\"delay\":
// ns}", waiting for the server to confirm.
func (q *Queue) SettleReply(ctx context.Context, reply, how string) error {
	if !strings.HasPrefix(reply, "$JS.ACK.") {
		return fmt.Errorf("%q is not a JetStream reply subject", reply)
	}
	_, err := q.js.Conn().RequestWithContext(ctx, reply, []byte(how))
	return err
}
