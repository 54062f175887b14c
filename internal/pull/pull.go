// Package pull is the loop that takes messages from a durable JetStream
// pull consumer, shared by everything that consumes one: the worker (jobs),
// the batch tracker and the webhook dispatcher (announcements).
//
// It pulls with Fetch requests of a bounded wait, never a continuous
// Consume: a continuous pull is stopped by unsubscribing, and a message on
// its way at that moment reaches no handler while JetStream holds it as
// delivered until its ack wait runs out. A Fetch ends on its own, so the
// loop stops by asking no more and handing over what the request under
// way still brings.
package pull

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/retry"
)

// Handler handles messages that arrived together, at most Loop.Max of
// them. It returns nil to acknowledge them all, Kept when it took them
// over (it settles each itself, later), Stop(err) to end the loop (they
// are handed back), or any other error to hand them back to the queue.
type Handler func(ctx context.Context, msgs []jetstream.Msg) error

// Kept is what a Handler returns when it settles the messages itself.
var Kept = errors.New("pull: the handler keeps the messages")

// Stop marks err as terminal: the loop hands the messages back and ends,
// returning err.
func Stop(err error) error { return &stopError{err} }

type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

// Loop pulls from one consumer. Consumer is required.
type Loop struct {
	Consumer jetstream.Consumer
	// Max is the most messages one request asks for, and one Handler call
	// gets. Default 256.
	Max int
	// Room, when set, says how many more messages the caller can take
	// now; the loop never asks for more. While it says none the loop
	// waits for Freed (or Wait) and asks again.
	Room  func() int
	Freed <-chan struct{}
	// Wait is the longest one request stays open. Default 500ms.
	Wait time.Duration
	// Logger and What (what the loop does, for its log lines: "pulling
	// jobs") report a NATS error, retried with backoff.
	Logger *slog.Logger
	What   string
}

// Run pulls and hands messages to handle until ctx ends or handle
// returns a Stop error. Once ctx has ended it asks for no more, hands
// over what the request under way brings, and returns nil: what is
// handed over then is handled with ctx ended, and the handler decides
// whether to hand it back. While NATS is away, or the consumer gone, it
// retries with backoff, from 100ms up to 5s.
func (l *Loop) Run(ctx context.Context, handle Handler) error {
	max, wait, log := l.Max, l.Wait, l.Logger
	if max <= 0 {
		max = 256
	}
	if wait <= 0 {
		wait = 500 * time.Millisecond
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	what := l.What
	if what == "" {
		what = "pulling messages"
	}
	backoff := retry.New(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		n := max
		if l.Room != nil {
			if n = min(n, l.Room()); n <= 0 {
				select {
				case <-ctx.Done():
				case <-l.Freed:
				case <-time.After(wait):
				}
				continue
			}
		}
		b, err := l.Consumer.Fetch(n, jetstream.FetchMaxWait(wait))
		if err == nil {
			if err = deliver(ctx, b.Messages(), n, handle); err != nil {
				// Drain the request so that its messages go back too.
				for m := range b.Messages() {
					_ = m.Nak()
				}
				return err
			}
			err = b.Error()
		}
		if err == nil || errors.Is(err, jetstream.ErrNoMessages) {
			backoff.Reset()
			continue
		}
		d := backoff.Next()
		if ctx.Err() == nil {
			log.Warn(what, "err", err, "retry_in", d)
		}
		retry.Sleep(ctx, d)
	}
	return nil
}

// deliver hands the messages of one request to handle as they arrive,
// each time with whatever else has arrived beside them.
func deliver(ctx context.Context, msgs <-chan jetstream.Msg, max int, handle Handler) error {
	group := make([]jetstream.Msg, 0, max)
	for m := range msgs {
		group = append(group[:0], m)
	more:
		for len(group) < max {
			select {
			case m, ok := <-msgs:
				if !ok {
					break more
				}
				group = append(group, m)
			default:
				break more
			}
		}
		err := handle(ctx, group)
		var stop *stopError
		switch {
		case err == nil:
			for _, m := range group {
				_ = m.Ack()
			}
		case errors.Is(err, Kept):
		default:
			// Handed back with a delay growing with its deliveries, so
			// that a failure that lasts (a record that cannot be
			// written) is not retried in a tight loop.
			for _, m := range group {
				_ = m.NakWithDelay(handBackDelay(m))
			}
			if errors.As(err, &stop) {
				return stop.err
			}
		}
	}
	return nil
}

// handBackDelay is how long a message a handler handed back waits before
// it comes again: from 100ms, doubling with its deliveries, up to 5s.
func handBackDelay(m jetstream.Msg) time.Duration {
	n := 1
	if meta, err := m.Metadata(); err == nil {
		n = int(meta.NumDelivered)
	}
	return retry.Delay(100*time.Millisecond, 5*time.Second, n)
}
