package consumer

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/pull"
)

// fetcher pulls a consumer's messages in batches no larger than the room
// the worker has (pull.Loop), and holds each as it arrives (see held). A
// streaming iterator would keep a buffer of delivered messages that nobody
// marks in progress: behind a slow model their ack wait runs out while
// they wait, and they are delivered again and run twice.
type fetcher struct {
	loop pull.Loop
	held *held
	out  chan jetstream.Msg
	// ctx ends when Drain is called, not with the worker's: the worker
	// drains its fetchers in its own order at shutdown.
	ctx  context.Context
	stop context.CancelFunc
}

// newFetcher makes a fetcher holding at most limit messages that wait for
// the model; Run starts it.
func newFetcher(ctx context.Context, cons jetstream.Consumer, h *held, limit int, log *slog.Logger) *fetcher {
	ctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	return &fetcher{
		loop: pull.Loop{Consumer: cons, Max: limit, Freed: h.freed, Logger: log, What: "pulling jobs",
			// Jobs that have run wait only for their results to be
			// stored: a slow store must not hold the next jobs back.
			Room: func() int { return limit - h.Waiting() }},
		held: h,
		out:  make(chan jetstream.Msg, limit),
		ctx:  ctx,
		stop: stop,
	}
}

// Run pulls until Drain is called and the pull under way has ended, then
// closes Messages.
func (f *fetcher) Run() {
	defer close(f.out)
	_ = f.loop.Run(f.ctx, func(_ context.Context, msgs []jetstream.Msg) error {
		for _, m := range msgs {
			f.out <- f.held.hold(m)
		}
		return pull.Kept
	})
}

// Messages is the channel of held messages; it is closed once Drain was
// called and the pull under way has ended.
func (f *fetcher) Messages() <-chan jetstream.Msg { return f.out }

// Drain stops pulling; messages of the pull under way still arrive.
func (f *fetcher) Drain() { f.stop() }
