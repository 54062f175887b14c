package consumer

import (
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// fetcher pulls a consumer's messages in batches no larger than the room
// the worker has, and holds each as it arrives (see held). A streaming
// iterator would keep a buffer of delivered messages that nobody marks in
// progress: behind a slow model their ack wait runs out while they wait,
// and they are delivered again and run twice.
type fetcher struct {
	cons  jetstream.Consumer
	held  *held
	limit int           // most messages the worker holds waiting for the model
	wait  time.Duration // longest a pull stays open
	log   *slog.Logger

	out      chan jetstream.Msg
	stop     chan struct{}
	stopOnce sync.Once
}

func newFetcher(cons jetstream.Consumer, h *held, limit int, log *slog.Logger) *fetcher {
	f := &fetcher{cons: cons, held: h, limit: limit, wait: 500 * time.Millisecond, log: log,
		out: make(chan jetstream.Msg, limit), stop: make(chan struct{})}
	go f.run()
	return f
}

// Messages is the channel of held messages; it is closed once Drain was
// called and the pull under way has ended.
func (f *fetcher) Messages() <-chan jetstream.Msg { return f.out }

// Drain stops pulling; messages of the pull under way still arrive.
func (f *fetcher) Drain() { f.stopOnce.Do(func() { close(f.stop) }) }

func (f *fetcher) run() {
	defer close(f.out)
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-f.stop:
			return
		default:
		}
		// Jobs that have run wait only for their results to be stored:
		// a slow store must not hold the next jobs back.
		n := f.limit - f.held.Waiting()
		if n <= 0 {
			select {
			case <-f.stop:
				return
			case <-f.held.freed:
			case <-time.After(f.wait):
			}
			continue
		}
		b, err := f.cons.Fetch(n, jetstream.FetchMaxWait(f.wait))
		if err == nil {
			for m := range b.Messages() {
				f.out <- f.held.hold(m)
			}
			err = b.Error()
		}
		if err != nil {
			// NATS away or the consumer gone: try again, more slowly.
			f.log.Warn("pulling jobs", "err", err, "retry_in", backoff)
			select {
			case <-f.stop:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}
