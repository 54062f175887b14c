package consumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/inferq/inferq/internal/retry"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/storage"
	"github.com/inferq/inferq/tensor"
	"github.com/nats-io/nats.go/jetstream"
)

// fetched is a message pulled from the queue, with its body: the message's
// data, or for a job too large for a message, the stored payload.
type fetched struct {
	msg  jetstream.Msg
	body []byte
	// job, when set, is the message decoded already (or err saying why
	// not), with the inputs it gave by reference read from storage.
	job *jobs.Job
	err error
	// unread says why the job's request or inputs could not be read, for
	// good: it fails with that.
	unread error
	// prepared, for a pipeline's first model step whose operations ran
	// in the pump, is what they gave: nil for success (the job's request
	// made, its state in state), else why the job fails.
	prepared error
	state    *pipeline.State
}

// subscribe opens the model's consumers, one per priority, and starts a
// pump for each.
func (w *Worker) subscribe(ctx context.Context) ([]*fetcher, []chan *fetched, error) {
	maxPending := max(1024, 4*w.policy.MaxBatchSize*w.instances)
	// What this worker holds at most waiting for the model (to be
	// batched or run): two batches per instance, and no fewer than 16
	// jobs, so that small models are not starved by pull round trips.
	// Jobs that have run and wait for their results to be stored do not
	// count: a slow store must not starve the model.
	limit := max(2*w.policy.MaxBatchSize*w.instances, 16)
	var conss []jetstream.Consumer
	for _, p := range []record.Priority{record.High, record.Normal} {
		var cons jetstream.Consumer
		var err error
		if w.opts.Shadow > 0 {
			if p == record.High {
				continue // a shadow version has one queue
			}
			cons, err = w.shadowConsumer(ctx, maxPending)
		} else {
			cons, err = w.opts.Queue.Consumer(ctx, w.name, p, jobs.ConsumerOptions{AckWait: w.opts.AckWait, MaxAckPending: maxPending})
		}
		if err != nil {
			return nil, nil, fmt.Errorf("model %s: pull jobs: %w", w.name, err)
		}
		conss = append(conss, cons)
	}
	var fetchers []*fetcher
	var pumped []chan *fetched
	for _, cons := range conss {
		f := newFetcher(ctx, cons, w.held, limit, w.log)
		fetchers = append(fetchers, f)
		go f.Run()
		ch := make(chan *fetched, w.policy.MaxBatchSize)
		pumped = append(pumped, ch)
		go w.pump(ctx, f, ch)
	}
	if len(pumped) == 1 { // a shadow worker: nothing of high priority
		none := make(chan *fetched)
		close(none)
		pumped = append([]chan *fetched{none}, pumped...)
	}
	return fetchers, pumped, nil
}

// pump moves fetched messages into ch until the fetcher is drained. Off
// the batching loop, it fetches the stored payloads of large jobs, reads
// the inputs jobs give by reference, and runs the operations before a
// pipeline's first model step (jobs.Step.Prepare): several messages at
// once (prepareAhead), since reads wait on storage and operations take a
// core each. While storage is unreachable it backs off and hands those
// jobs back.
func (w *Worker) pump(ctx context.Context, src *fetcher, ch chan<- *fetched) {
	var busy sync.WaitGroup
	defer func() {
		busy.Wait()
		close(ch)
	}()
	slots := make(chan struct{}, prepareAhead)
	pass := func(m jetstream.Msg) {
		if !needsWork(m) {
			ch <- &fetched{msg: m, body: m.Data()}
			return
		}
		slots <- struct{}{}
		busy.Go(func() {
			defer func() { <-slots }()
			if f := w.fetch(ctx, m); f != nil {
				ch <- f
			}
		})
	}
	for m := range src.Messages() {
		if w.opts.Shadow == 0 {
			pass(m)
			continue
		}
		for _, run := range w.unpackShadows(m) {
			pass(run)
		}
	}
}

// prepareAhead is how many messages a pump works on at once.
const prepareAhead = 8

var objectParameter = []byte(`"` + tensor.ObjectParameter + `"`)

// needsWork reports whether a message needs more than its data before
// the batcher takes it: a stored payload, inputs by reference, or the
// operations before a pipeline's first model step.
func needsWork(m jetstream.Msg) bool {
	h := m.Headers()
	return h.Get(jobs.HeaderPayload) != "" || h.Get(jobs.HeaderStepPrepare) == "1" || bytes.Contains(m.Data(), objectParameter)
}

// fetch makes a fetched job of m: its body, its inputs given by reference
// read, and a pipeline step's operations before it run. Nil when the job
// was handed back (storage away).
func (w *Worker) fetch(ctx context.Context, m jetstream.Msg) *fetched {
	body, err := w.opts.Queue.LoadPayload(ctx, m.Headers(), m.Data())
	if err != nil && !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrInvalidKey) {
		if gaveUp := w.handBackUnread(ctx, m, fmt.Errorf("the job's stored request could not be read: %w", err)); gaveUp != nil {
			return &fetched{msg: m, unread: gaveUp}
		}
		return nil
	}
	if err != nil {
		w.log.Warn("a job's payload is missing", "err", err)
		return &fetched{msg: m} // the job fails in admit, with the reason
	}
	f := &fetched{msg: m, body: body}
	prepare := m.Headers().Get(jobs.HeaderStepPrepare) == "1"
	if !prepare && !bytes.Contains(body, objectParameter) {
		return f
	}
	if f.job, f.err = jobs.DecodeJob(m.Headers(), body, w.opts.Limits); f.err != nil {
		return f
	}
	var st *pipeline.State
	if st, f.unread = w.readInputs(ctx, f.job); f.unread != nil {
		if !permanent(f.unread) {
			if f.unread = w.handBackUnread(ctx, m, f.unread); f.unread == nil {
				return nil
			}
		}
		return f
	}
	if p := f.job.Pipeline; p != nil && p.Prepare {
		it := &item{job: f.job, state: st}
		f.prepared = w.prepare(it)
		f.state = it.state
	}
	return f
}

// permanent reports whether an error reading a job's inputs stays
// whatever the wait: the job fails with it rather than return to the
// queue.
func permanent(err error) bool {
	return errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrInvalidKey) ||
		errors.Is(err, errBadObject) || errors.Is(err, jobs.ErrInputScope) || errors.Is(err, storage.ErrSourceRefused)
}

// handBackUnread hands a job whose request or inputs could not be read
// back to the queue, without counting an attempt, and returns nil; a
// job already final (cancelled while it waited) is acknowledged instead.
// Past MaxHandBacks deliveries it returns the error the job fails with.
func (w *Worker) handBackUnread(ctx context.Context, m jetstream.Msg, err error) error {
	id := m.Headers().Get(jobs.HeaderJobID)
	if rec, rerr := w.opts.Queue.Records.Get(ctx, id); rerr == nil && rec.Status.Final() {
		w.log.Info("dropping a job that ended while its inputs could not be read", "job", id, "status", rec.Status)
		w.settle(m, done, 0)
		return nil
	}
	delay, ok := w.handBackDelay(m)
	if !ok {
		return fmt.Errorf("%w: gave up after %d deliveries: %v", errHandedBack, w.opts.MaxHandBacks, err)
	}
	w.log.Warn("could not read a job's inputs from storage; it returns to the queue", "job", id, "in", delay, "err", err)
	w.settle(m, handBack, delay)
	return nil
}

// errHandedBack is a job handed back too often without a run.
var errHandedBack = errors.New("handed back too often")

// handBackDelay is how long a job handed back without a run waits before
// its next delivery, growing with its deliveries; false once it has been
// delivered MaxHandBacks times (runs are bounded by max_attempts
// separately, from its record).
func (w *Worker) handBackDelay(m jetstream.Msg) (time.Duration, bool) {
	n := uint64(1)
	if meta, err := m.Metadata(); err == nil {
		n = meta.NumDelivered
	}
	if n >= uint64(w.opts.MaxHandBacks) {
		return 0, false
	}
	return retry.Delay(w.opts.Backoff, 30*time.Second, int(n)), true
}

// prefer forwards messages from high and normal to out until both are
// closed, then closes out. It takes a waiting high-priority message first,
// but after streak of them in a row a waiting normal one, so that a steady
// stream of high-priority jobs slows normal ones (to one in streak+1)
// without starving them. With nothing waiting it takes whichever comes.
func prefer[T any](high, normal <-chan T, out chan<- T, streak int) {
	defer close(out)
	run := 0
	for high != nil || normal != nil {
		first, firstIsHigh := high, true
		if run >= streak {
			first, firstIsHigh = normal, false
		}
		select {
		case m, ok := <-first:
			if !ok {
				if firstIsHigh {
					high = nil
				} else {
					normal = nil
				}
				continue
			}
			if firstIsHigh {
				run++
			} else {
				run = 0
			}
			out <- m
			continue
		default:
		}
		select {
		case m, ok := <-high:
			if !ok {
				high = nil
				continue
			}
			run++
			out <- m
		case m, ok := <-normal:
			if !ok {
				normal = nil
				continue
			}
			run = 0
			out <- m
		}
	}
}
