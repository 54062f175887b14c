// Package consumer runs models on queued jobs: a Worker per model pulls
// jobs from the model's durable JetStream consumer, forms dynamic batches
// (package batching), runs them in ONNX Runtime sessions, writes each
// job's result to storage, updates its record, announces it, and only then
// acknowledges its message.
package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/storage"
	"github.com/inferq/inferq/tensor"
	"github.com/inferq/inferq/tracing"
)

// resultWriter stores results, and lists and deletes them when they
// expire; the storage package's stores are.
type resultWriter interface {
	Put(ctx context.Context, key string, r io.Reader) error
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	List(ctx context.Context, prefix string) ([]string, error)
	Delete(ctx context.Context, key string) error
}

// Options configure a Worker. Family, Runtime, Queue, Results and Metrics
// are required.
type Options struct {
	// Family is the model the worker serves, every loaded version of it.
	Family  *model.Family
	Runtime *onnx.Runtime
	Queue   *jobs.Queue
	Results resultWriter
	Metrics *Metrics
	Logger  *slog.Logger
	// Limits bound the tensors of a queued job, as the API's do.
	Limits tensor.Limits
	// AckWait is how long JetStream waits for an acknowledgement before it
	// delivers a job again; the worker reports progress well within it
	// while a batch runs. Default 60s.
	AckWait time.Duration
	// DrainTimeout bounds the finishing of batches in hand at shutdown.
	// Default 30s.
	DrainTimeout time.Duration
	// Backoff is the delay before the first retry of a failed run; each
	// further retry doubles it, up to 30s. Default 1s.
	Backoff time.Duration
	// MaxHandBacks bounds how often a job is handed back to the queue
	// without a run counted (its inputs or its result could not be read
	// or written, storage being away) before it ends failed, so that no
	// job cycles for ever. Each hand-back waits longer, up to 30s: the
	// default, 100, rides out about 45 minutes of storage trouble.
	MaxHandBacks int
	// Name identifies this process in the records of the jobs it runs,
	// such as host:pid.
	Name string
	// finished, when set, counts the jobs this worker finishes (the
	// Fleet's throughput measure).
	finished *atomic.Uint64
	// ResultLayout is LayoutBatch (default: a batch's results in one
	// object) or LayoutJob (an object per job, keyed by job id, for
	// readers of the bucket).
	ResultLayout string
	// Device, when set, is where this worker runs every model, whatever
	// their configs say: the CPU for a CPU worker, a GPU for a GPU worker.
	// The zero value runs each model where its config says.
	Device onnx.Provider
	// Overrides are this worker's own batch settings, over the models'.
	Overrides Overrides
	// Tracer starts the worker's spans (tracing.Tracer); nil traces
	// nothing.
	Tracer trace.Tracer
	// StatsInterval is how often the statistics of what the model is
	// asked and answers are published, and captured jobs written.
	// Default 1m.
	StatsInterval time.Duration
}

// Result layouts.
const (
	LayoutBatch = "batch"
	LayoutJob   = "job"
)

// Worker serves one model. Create it with NewWorker and start it with Run.
type Worker struct {
	opts     Options
	name     string
	log      *slog.Logger
	sessions map[int64]*onnx.Session
	// placements say where each version's sessions run.
	placements []Placement
	tracer     trace.Tracer
	watch      *watcher
	policy     batching.Policy
	// instances is how many batches run at once.
	instances int
	// storagePause is how long the result writer waits after storage
	// failed; 0 while it works. Only the writer touches it.
	storagePause time.Duration
	// noBatch holds the versions (int64) found at run time to give
	// outputs that do not split back per request.
	noBatch sync.Map
	// held are the job messages fetched and not yet settled.
	held *held
}

// NewWorker checks opts and returns a Worker; sessions load in Run.
func NewWorker(opts Options) (*Worker, error) {
	if opts.Family == nil || opts.Runtime == nil || opts.Queue == nil || opts.Results == nil || opts.Metrics == nil {
		return nil, errors.New("consumer: Family, Runtime, Queue, Results and Metrics are required")
	}
	def := opts.Family.Default()
	if def == nil {
		return nil, fmt.Errorf("consumer: model %q has no loadable version", opts.Family.Name)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 60 * time.Second
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	if opts.Backoff <= 0 {
		opts.Backoff = time.Second
	}
	if opts.MaxHandBacks <= 0 {
		opts.MaxHandBacks = 100
	}
	if opts.Tracer == nil {
		opts.Tracer = tracing.Tracer(nil)
	}
	if opts.StatsInterval <= 0 {
		opts.StatsInterval = time.Minute
	}
	// Batching settings are the model's, from its default version's
	// config (versions share one queue), as this worker overrides them.
	policy, instances := opts.Overrides.apply(def.Config)
	w := &Worker{
		opts: opts, name: opts.Family.Name, held: newHeld(), log: opts.Logger.With("model", opts.Family.Name),
		policy: policy, instances: instances, tracer: opts.Tracer,
	}
	w.watch = newWatcher(w)
	if _, err := batching.New[*item](w.policy, nil); err != nil {
		return nil, fmt.Errorf("model %q: %w", w.name, err)
	}
	return w, nil
}

// item is one job in the worker's hands.
type item struct {
	msg    jetstream.Msg
	job    *jobs.Job
	model  *model.Model
	inputs []tensor.Tensor // in the model's input order
	rows   int
	// lines, for a job that carries requests laid end to end, are those
	// requests' inputs, in the model's order; inputs is nil then.
	lines [][]tensor.Tensor
	// params are the response's parameters: for lines, their outputs'
	// shapes, and linesFailed how many of them failed. Set by the run.
	params      json.RawMessage
	linesFailed int
	// lineRows, for a job packed from several requests, is each one's
	// rows.
	lineRows []int
	// length is the request's own length along its padded axis, when its
	// inputs were padded: outputs are trimmed back to it. 0 when not.
	length  int64
	attempt int
	rec     *jobs.Record
	rev     uint64
	// trace is the job's trace context, and admitted when the worker
	// took it (see tracing.go).
	trace    context.Context
	admitted time.Time
}

// Run loads the model's sessions and serves jobs until ctx is cancelled,
// then stops fetching, finishes the batches in hand, returns the jobs not
// started to the queue, and returns.
func (w *Worker) Run(ctx context.Context) error {
	if w.sessions == nil {
		if err := w.Load(); err != nil {
			return err
		}
	}
	defer w.unload()

	// Every message fetched is kept alive until it is settled, wherever
	// it waits (see held).
	beat := make(chan struct{})
	beating := make(chan struct{})
	go func() {
		defer close(beating)
		// An hour, or a hundred ack waits: far past any batch's run.
		w.held.heartbeat(w.opts.AckWait/3, max(time.Hour, 100*w.opts.AckWait), beat)
	}()
	defer func() { close(beat); <-beating }()

	// Two durable consumers, one per priority, pumped into one channel
	// that prefers high-priority jobs. While NATS is away they cannot be
	// set up: wait for it, as the connection reconnects by itself.
	sources, pumped, err := w.subscribe(ctx)
	for wait := w.opts.Backoff; err != nil; wait = min(2*wait, 30*time.Second) {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		w.log.Warn("cannot pull jobs yet; retrying", "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		sources, pumped, err = w.subscribe(ctx)
	}
	msgs := make(chan *fetched)
	pumpDone := make(chan struct{})
	go func() {
		defer close(pumpDone)
		prefer(pumped[0], pumped[1], msgs, 4)
	}()

	batcher, _ := batching.New[*item](w.policy, nil)
	// Three overlapping stages keep the model busy: while one batch runs,
	// the next is being marked running and the results of those before
	// stored. Results that finish while a write is under way wait for the
	// next one and are written together, so that under load a storage
	// write carries several batches.
	work := make(chan batching.Batch[*item])
	prepared := make(chan []*item, w.instances)
	ran := make(chan *ranBatch, 8*w.instances)
	var preparers, executors, writers sync.WaitGroup
	// busy counts the batches handed on and not yet run: while there are
	// as many as instances, no instance is free, and a batch that is not
	// full stays open to fill (see batching.Batcher.Full). freed wakes
	// the loop when a run ends.
	var busy atomic.Int64
	freed := make(chan struct{}, 1)
	ranOne := func() {
		busy.Add(-1)
		select {
		case freed <- struct{}{}:
		default:
		}
	}
	allBusy := func() bool { return busy.Load() >= int64(w.instances) }
	next := func(idle bool) (batching.Batch[*item], bool) {
		if allBusy() {
			return batcher.Full()
		}
		return batcher.Next(idle)
	}
	dispatch := func(b batching.Batch[*item]) {
		busy.Add(1)
		if !w.dispatch(ctx, work, b) {
			ranOne()
		}
	}
	// Work started is finished even while shutting down.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	for range w.instances {
		preparers.Go(func() {
			for b := range work {
				if items := w.start(workCtx, b.Items); len(items) > 0 {
					prepared <- items
				} else {
					ranOne()
				}
			}
		})
		executors.Go(func() {
			for items := range prepared {
				r := w.runBatch(items)
				for _, it := range items {
					w.held.markRan(it.msg)
				}
				ranOne()
				ran <- r
			}
		})
	}
	for range 1 {
		writers.Go(func() {
			for r := range ran {
				group := []*ranBatch{r}
			more:
				for len(group) < 64 {
					select {
					case r, ok := <-ran:
						if !ok {
							break more
						}
						group = append(group, r)
					default:
						break more
					}
				}
				w.finishBatches(workCtx, group)
			}
		})
	}
	// Statistics and captured jobs are flushed a last time once the last
	// results are written.
	watchCtx, stopWatching := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWatching()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		w.watch.run(watchCtx, w.opts.StatsInterval)
	}()
	if keep := w.opts.Family.Default().Config.ResultRetention; keep > 0 {
		sweeping := make(chan struct{})
		defer func() { <-sweeping }()
		go func() {
			defer close(sweeping)
			w.sweep(ctx, keep)
		}()
	}
	w.log.Info("worker started", "max_batch_size", w.policy.MaxBatchSize, "max_queue_delay", w.policy.MaxQueueDelay, "instances", w.instances)
	// The counters alerts watch start at 0, so that the first failure is
	// an increase, not the start of a series.
	w.opts.Metrics.failedRuns.WithLabelValues(w.name)
	for _, st := range []jobs.Status{jobs.Succeeded, jobs.Failed} {
		w.opts.Metrics.finished.WithLabelValues(w.name, string(st))
	}

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	open := true
	for open {
		select {
		case m, ok := <-msgs:
			if !ok {
				open = false
				break
			}
			w.admit(ctx, batcher, m)
		drain:
			for {
				select {
				case m, ok := <-msgs:
					if !ok {
						open = false
						break drain
					}
					w.admit(ctx, batcher, m)
					if b, ok := next(false); ok {
						dispatch(b)
					}
				default:
					break drain
				}
			}
		case <-timer.C:
		case <-freed:
		case <-ctx.Done():
			open = false
		}
		if ctx.Err() != nil {
			break
		}
		for {
			b, ok := next(len(msgs) == 0)
			if !ok {
				break
			}
			dispatch(b)
		}
		// While every instance is busy, the open batches wait for a run
		// to end (freed), not for their delay.
		d, ok := batcher.UntilNext()
		if !ok || allBusy() {
			d = time.Hour
		}
		timer.Reset(d)
	}

	// Drain: stop fetching; what was fetched and not started goes back to
	// the queue at once, for this or another worker; batches running
	// finish.
	for _, src := range sources {
		src.Drain()
	}
	close(work)
	preparers.Wait()
	close(prepared)
	executors.Wait()
	close(ran)
	writers.Wait()
	stopWatching()
	<-watched
	returned := 0
	for _, b := range batcher.Flush() {
		for _, it := range b.Items {
			_ = it.msg.Nak()
			returned++
		}
	}
	for f := range msgs {
		_ = f.msg.Nak()
		returned++
	}
	<-pumpDone
	w.log.Info("worker stopped", "returned_to_queue", returned)
	return nil
}

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
	for _, p := range []jobs.Priority{jobs.High, jobs.Normal} {
		cons, err := w.opts.Queue.Consumer(ctx, w.name, p, jobs.ConsumerOptions{AckWait: w.opts.AckWait, MaxAckPending: maxPending})
		if err != nil {
			return nil, nil, fmt.Errorf("model %s: pull jobs: %w", w.name, err)
		}
		conss = append(conss, cons)
	}
	var fetchers []*fetcher
	var pumped []chan *fetched
	for _, cons := range conss {
		f := newFetcher(cons, w.held, limit, w.log)
		fetchers = append(fetchers, f)
		ch := make(chan *fetched, w.policy.MaxBatchSize)
		pumped = append(pumped, ch)
		go w.pump(ctx, f, ch)
	}
	return fetchers, pumped, nil
}

// pump moves fetched messages into ch until the fetcher is drained. It
// fetches the stored payloads of large jobs, off the batching loop; while
// storage is unreachable it backs off and hands those jobs back.
func (w *Worker) pump(ctx context.Context, src *fetcher, ch chan<- *fetched) {
	defer close(ch)
	for m := range src.Messages() {
		body, err := w.opts.Queue.LoadPayload(ctx, m.Headers(), m.Data())
		if err != nil && !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrInvalidKey) {
			if gaveUp := w.handBackUnread(ctx, m, fmt.Errorf("the job's stored request could not be read: %w", err)); gaveUp != nil {
				ch <- &fetched{msg: m, unread: gaveUp}
			}
			continue
		}
		if err != nil {
			body = nil // the job fails in admit, with the reason
			w.log.Warn("a job's payload is missing", "err", err)
		}
		f := &fetched{msg: m, body: body}
		if body != nil && bytes.Contains(body, []byte(`"`+tensor.ObjectParameter+`"`)) {
			f.job, f.err = jobs.DecodeJob(m.Headers(), body, w.opts.Limits)
			if f.err == nil {
				f.unread = w.readInputs(ctx, f.job)
				if f.unread != nil && !permanent(f.unread) {
					if f.unread = w.handBackUnread(ctx, m, f.unread); f.unread == nil {
						continue
					}
				}
			}
		}
		ch <- f
	}
}

// permanent reports whether an error reading a job's inputs stays
// whatever the wait: the job fails with it rather than return to the
// queue.
func permanent(err error) bool {
	return errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrInvalidKey) ||
		errors.Is(err, errBadObject) || errors.Is(err, jobs.ErrInputScope)
}

// handBackUnread hands a job whose request or inputs could not be read
// back to the queue, without counting an attempt, and returns nil; a
// job already final (cancelled while it waited) is acknowledged instead.
// Past MaxHandBacks deliveries it returns the error the job fails with.
func (w *Worker) handBackUnread(ctx context.Context, m jetstream.Msg, err error) error {
	id := m.Headers().Get(jobs.HeaderJobID)
	if rec, rerr := w.opts.Queue.Records.Get(ctx, id); rerr == nil && rec.Status.Final() {
		w.log.Info("dropping a job that ended while its inputs could not be read", "job", id, "status", rec.Status)
		_ = m.Ack()
		return nil
	}
	delay, ok := w.handBackDelay(m)
	if !ok {
		return fmt.Errorf("%w: gave up after %d deliveries: %v", errHandedBack, w.opts.MaxHandBacks, err)
	}
	w.log.Warn("could not read a job's inputs from storage; it returns to the queue", "job", id, "in", delay, "err", err)
	_ = m.NakWithDelay(delay)
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
	return min(w.opts.Backoff<<min(n-1, 5), 30*time.Second), true
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

// dispatch hands a batch to a free executor, waiting for one, and
// reports whether it did. At shutdown the batch goes back to the queue
// instead.
func (w *Worker) dispatch(ctx context.Context, work chan<- batching.Batch[*item], b batching.Batch[*item]) bool {
	select {
	case work <- b:
		w.opts.Metrics.batches.WithLabelValues(w.name, string(b.Reason)).Inc()
		return true
	case <-ctx.Done():
		for _, it := range b.Items {
			_ = it.msg.Nak()
		}
		return false
	}
}

// admit decodes a fetched job and adds it to the batcher, or ends it at
// once when it can never run.
func (w *Worker) admit(ctx context.Context, b *batching.Batcher[*item], f *fetched) {
	m := f.msg
	it := &item{msg: m}
	job, err := f.job, f.err
	if job == nil {
		job, err = jobs.DecodeJob(m.Headers(), f.body, w.opts.Limits)
	}
	if job == nil {
		w.log.Error("undecodable job message", "err", err)
		_ = m.TermWithReason("undecodable")
		return
	}
	it.job = job
	w.traceAdmit(it, m)
	switch key := m.Headers().Get(jobs.HeaderPayload); {
	case f.unread != nil:
		w.finishFailed(ctx, it, f.unread)
		return
	case key != "" && f.body == nil:
		w.finishFailed(ctx, it, fmt.Errorf("the job's request, stored at %s, is missing from storage", key))
		return
	case err != nil:
		w.finishFailed(ctx, it, fmt.Errorf("invalid job: %w", err))
		return
	}
	it.model, err = w.opts.Family.Lookup(job.Version)
	if err == nil {
		err = it.check()
	}
	if err != nil {
		w.finishFailed(ctx, it, err)
		return
	}
	if err := pad(it); err != nil {
		w.finishFailed(ctx, it, err)
		return
	}
	key := it.model.VersionString()
	if it.lines == nil && it.model.Batchable && !w.unbatched(it.model) {
		key += "|" + batching.Key(it.inputs, it.model.Batched)
	} else {
		key += "|" + job.ID // never batched with another
	}
	b.Add(key, it, it.rows)
}

// check checks the job's request against its model and takes its inputs
// in the model's order. Batch files pack lines into jobs larger than a
// run (see runWhole), or for a model that cannot stack them, lay them end
// to end (see runLines); the API holds its requests to the max batch
// size.
func (it *item) check() error {
	m, req := it.model, it.job.Request
	packed, err := batching.ParseLines(req.Parameters)
	if err != nil {
		return err
	}
	if packed == nil || packed.Shapes == nil {
		if it.rows, err = m.CheckRows(req, m.MaxJobRows()); err != nil {
			return err
		}
		it.inputs, _ = m.OrderedInputs(req) // CheckRows found them all
		if packed != nil {
			it.lineRows = packed.Rows // checked when used
		}
		return nil
	}
	ordered, err := m.OrderedInputs(req)
	if err != nil {
		return err
	}
	if it.lines, err = batching.Unpack(ordered, packed.Shapes); err != nil {
		return err
	}
	it.lineRows = make([]int, len(it.lines))
	for r, line := range it.lines {
		if it.lineRows[r], err = m.Check(&tensor.Request{Inputs: line, Outputs: req.Outputs}); err != nil {
			return fmt.Errorf("request %d of the %d packed in this job: %w", r+1, len(it.lines), err)
		}
		it.rows += it.lineRows[r]
	}
	return nil
}

// ranBatch is a batch that has run, waiting for its results to be stored.
type ranBatch struct {
	items   []*item
	outputs [][]tensor.Tensor
	errs    []error
}

// runBatch runs a prepared batch in ONNX Runtime. A batch that fails is
// split and its halves run again, down to single jobs, so that one bad
// request fails alone and the rest of its batch succeeds.
func (w *Worker) runBatch(items []*item) *ranBatch {
	r := &ranBatch{items: items, outputs: make([][]tensor.Tensor, len(items)), errs: make([]error, len(items))}
	batch, run := w.traceBatch(items)
	w.runIsolating(items, r.outputs, r.errs)
	run.End()
	batch.End()
	return r
}

// finishBatches stores the results of batches that have run, as one
// object, then records each job's outcome and acknowledges it.
func (w *Worker) finishBatches(ctx context.Context, group []*ranBatch) {
	var items []*item
	var outputs [][]tensor.Tensor
	var errs []error
	for _, r := range group {
		items = append(items, r.items...)
		outputs = append(outputs, r.outputs...)
		errs = append(errs, r.errs...)
	}
	refs, bodies := w.storeResults(ctx, items, outputs, errs)
	if w.storagePause > 0 {
		// Storage is away: hold the pipeline (and so the fetching) back.
		defer time.Sleep(w.storagePause)
	}
	var ended []outcome
	for i, it := range items {
		switch {
		case errs[i] != nil:
			if o, ok := w.retryOrFail(it, errs[i]); !ok {
				ended = append(ended, o)
			}
		case refs[i] != nil:
			body := bodies[i]
			if it.job.Record != nil && it.job.Record.Batch != "" {
				body = nil // batch output is read from storage, not streamed
			}
			ended = append(ended, outcome{it: it, status: jobs.Succeeded, result: refs[i], response: body})
		}
	}
	w.completeAll(ctx, ended)
	w.watch.observe(items, outputs, refs, bodies)
}

// storeResults writes the results of the succeeded jobs among items and
// returns where each is, with its encoding. In the batch layout (the
// default) they go in one object, a JSON line per job; in the job layout,
// an object per job, keyed by job id. A result that cannot be stored (an
// outage) sends its job back to the queue without counting the attempt,
// and the worker pauses before the next write: a result is never lost,
// and no job fails, because storage was briefly away.
func (w *Worker) storeResults(ctx context.Context, items []*item, outputs [][]tensor.Tensor, errs []error) ([]*jobs.ResultRef, [][]byte) {
	refs := make([]*jobs.ResultRef, len(items))
	bodies := make([][]byte, len(items))
	var buf []byte
	for i, it := range items {
		if errs[i] != nil {
			continue
		}
		resp := tensor.Response{ModelName: w.name, ModelVersion: it.model.VersionString(), ID: it.job.ID, Parameters: it.params, Outputs: selectOutputs(outputs[i], it.job.Request.Outputs)}
		start := len(buf)
		buf = resp.AppendJSON(buf)
		refs[i] = &jobs.ResultRef{Offset: int64(start), Length: int64(len(buf) - start)}
		buf = append(buf, '\n')
	}
	if len(buf) == 0 {
		return refs, bodies
	}
	var written []*item // the jobs whose results are written
	for i, r := range refs {
		if r != nil {
			bodies[i] = buf[r.Offset : r.Offset+r.Length]
			written = append(written, items[i])
		}
	}
	failed := make([]bool, len(items))
	var lastErr error
	if w.opts.ResultLayout == LayoutJob {
		var g errgroup.Group
		g.SetLimit(16)
		for i, it := range items {
			if refs[i] == nil {
				continue
			}
			g.Go(func() error {
				key := jobs.JobResultKey(w.name, it.job.ID)
				if err := w.put(ctx, key, bodies[i], []*item{it}); err != nil {
					failed[i] = true
					return err
				}
				refs[i] = &jobs.ResultRef{Key: key, Length: refs[i].Length, Whole: true}
				return nil
			})
		}
		lastErr = g.Wait()
	} else {
		key := jobs.BatchResultKey(w.name, ulid.Make().String())
		if err := w.put(ctx, key, buf, written); err != nil {
			lastErr = err
			for i := range failed {
				failed[i] = refs[i] != nil
			}
		}
		for _, r := range refs {
			if r != nil {
				r.Key = key
			}
		}
	}
	if lastErr == nil {
		w.storagePause = 0
		return refs, bodies
	}
	w.storagePause = min(max(2*w.storagePause, w.opts.Backoff), 30*time.Second)
	w.log.Warn("could not store results; their jobs return to the queue, and the worker pauses", "jobs", len(items), "pause", w.storagePause, "err", lastErr)
	for i, it := range items {
		if failed[i] {
			refs[i] = nil
			w.requeue(ctx, it, w.storagePause, lastErr)
		}
	}
	return refs, bodies
}

// put writes one result object holding the results of items' jobs, and
// measures and traces the write.
func (w *Worker) put(ctx context.Context, key string, data []byte, items []*item) error {
	span := w.traceWrite(items, key)
	defer span.End()
	start := time.Now()
	err := w.opts.Results.Put(ctx, key, bytes.NewReader(data))
	outcome := "ok"
	if err != nil {
		outcome = "error"
		span.SetStatus(codes.Error, err.Error())
	}
	w.opts.Metrics.writes.WithLabelValues(w.name, outcome).Observe(time.Since(start).Seconds())
	w.opts.Metrics.writeJobs.WithLabelValues(w.name).Observe(float64(len(items)))
	return err
}

// requeue hands a job back to the queue without counting its attempt:
// its run succeeded, but the result could not be kept (err). Past
// MaxHandBacks deliveries the job fails instead.
func (w *Worker) requeue(ctx context.Context, it *item, delay time.Duration, cause error) {
	if _, ok := w.handBackDelay(it.msg); !ok {
		w.complete(ctx, it, jobs.Failed, fmt.Sprintf("its result could not be stored; gave up after %d deliveries: %v", w.opts.MaxHandBacks, cause), nil, nil)
		return
	}
	_, _, err := w.opts.Queue.Records.UpdateFrom(ctx, it.job.ID, it.rec, it.rev, func(r *jobs.Record) error {
		if r.Status != jobs.Running {
			return jobs.ErrConflict
		}
		r.Status, r.StartedAt = jobs.Queued, nil
		r.Attempts = max(0, r.Attempts-1)
		return nil
	})
	if err != nil && !errors.Is(err, jobs.ErrConflict) {
		w.log.Warn("could not hand a job back; it will be redelivered", "job", it.job.ID, "err", err)
	}
	_ = it.msg.NakWithDelay(delay)
}

// runIsolating runs items as one batch and fills in each job's outputs;
// when the run fails it bisects, so that errs ends up set only for jobs
// that fail on their own.
func (w *Worker) runIsolating(items []*item, outputs [][]tensor.Tensor, errs []error) {
	m := items[0].model
	out, dur, err := w.infer(m, items)
	if err == nil {
		rows := 0
		for _, it := range items {
			rows += it.rows
		}
		w.opts.Metrics.batchSize.WithLabelValues(w.name).Observe(float64(rows))
		w.opts.Metrics.inference.WithLabelValues(w.name).Observe(dur.Seconds())
		for i, it := range items {
			outputs[i], errs[i] = trim(it, out[i])
		}
		return
	}
	if errors.Is(err, errUnsplittable) {
		for i := range items {
			w.runIsolating(items[i:i+1], outputs[i:i+1], errs[i:i+1])
		}
		return
	}
	w.opts.Metrics.failedRuns.WithLabelValues(w.name).Inc()
	if len(items) == 1 {
		w.log.Warn("job failed in ONNX Runtime", "job", items[0].job.ID, "version", m.Version, "err", err)
		errs[0] = err
		return
	}
	w.log.Warn("batch failed; splitting it to find the jobs that fail", "version", m.Version, "jobs", len(items), "err", err)
	half := len(items) / 2
	w.runIsolating(items[:half], outputs[:half], errs[:half])
	w.runIsolating(items[half:], outputs[half:], errs[half:])
}

var (
	errGaveUp = errors.New("attempts exhausted")
	// errExpired is a job whose deadline passed before it started.
	errExpired = errors.New("deadline passed")
	// errUnsplittable is a batch run whose outputs did not follow the
	// batch dimension, so they cannot be split back per job.
	errUnsplittable = errors.New("outputs cannot be split per job")
)

// start marks each job running, the whole set in one go, and returns
// those that should run: a job already final (cancelled, or finished
// before a redelivery) is acknowledged and dropped, one past its attempts
// or its deadline ends.
func (w *Worker) start(ctx context.Context, items []*item) []*item {
	now := time.Now().UTC()
	changes := make([]jobs.Change, len(items))
	for i, it := range items {
		changes[i] = jobs.Change{ID: it.job.ID, Rec: it.job.Record, Rev: it.job.Revision, Fn: func(r *jobs.Record) error {
			if r.Status.Final() {
				return jobs.ErrConflict
			}
			if r.Deadline != nil && now.After(*r.Deadline) && r.Status == jobs.Queued {
				return errExpired
			}
			// Attempts count the runs begun, from the record: a job
			// fetched and handed back unstarted has not been tried, and a
			// record left running says a run began and never finished
			// (its worker died), however JetStream counted the
			// deliveries.
			it.attempt = r.Attempts + 1
			if it.attempt > it.model.Config.MaxAttempts {
				return errGaveUp
			}
			r.Status = jobs.Running
			r.StartedAt = &now
			r.Worker = w.opts.Name
			r.Attempts = it.attempt
			r.ModelVersion = it.model.VersionString()
			return nil
		}}
	}
	var run []*item
	var ended []outcome
	for i, c := range w.opts.Queue.Records.UpdateAll(ctx, changes) {
		it := items[i]
		switch {
		case errors.Is(c.Err, errGaveUp):
			it.rec, it.rev = c.Rec, c.Rev
			ended = append(ended, outcome{it: it, status: jobs.Failed, reason: fmt.Sprintf("gave up after %d attempts that never finished: the worker running it stopped each time (crashed, killed or out of memory)", it.attempt-1)})
		case errors.Is(c.Err, errExpired):
			it.rec, it.rev = c.Rec, c.Rev
			ended = append(ended, outcome{it: it, status: jobs.Expired, reason: fmt.Sprintf("its deadline, %s, passed before it could start", c.Rec.Deadline.Format(time.RFC3339Nano))})
		case errors.Is(c.Err, jobs.ErrConflict):
			// Finished before (or cancelled). If its worker died between
			// the record and the acknowledgement, its announcement may
			// have died too: announce again; the results stream drops the
			// repeat if the first one made it.
			w.log.Debug("skipping finished job", "job", it.job.ID, "status", c.Rec.Status)
			if err := w.opts.Queue.Announce(c.Rec, w.storedResponse(ctx, c.Rec)); err != nil {
				w.log.Warn("could not announce a finished job; it will be redelivered to try again", "job", it.job.ID, "err", err)
				_ = it.msg.NakWithDelay(w.opts.Backoff)
				continue
			}
			_ = it.msg.Ack()
		case errors.Is(c.Err, jobs.ErrJobNotFound):
			w.log.Warn("job has no record; dropping it", "job", it.job.ID)
			_ = it.msg.Term()
		case c.Err != nil:
			w.log.Warn("could not mark job running; retrying later", "job", it.job.ID, "err", c.Err)
			_ = it.msg.NakWithDelay(w.opts.Backoff)
		default:
			it.rec, it.rev = c.Rec, c.Rev
			run = append(run, it)
		}
	}
	w.completeAll(ctx, ended)
	return run
}

// storedResponse reads back the response of a succeeded job small enough
// to travel inline in its announcement, so that an announcement made again
// carries it as the first would have; nil for any other job, or when it
// cannot be read (the announcement then points at result_url alone).
func (w *Worker) storedResponse(ctx context.Context, rec *jobs.Record) []byte {
	r := rec.Result
	if rec.Status != jobs.Succeeded || r == nil || r.Length > jobs.MaxInlineResponse {
		return nil
	}
	b, err := w.readRange(ctx, r)
	if err != nil {
		w.log.Warn("could not read a finished job's result to announce it again", "job", rec.ID, "err", err)
		return nil
	}
	return b
}

// readRange reads a stored result whole.
func (w *Worker) readRange(ctx context.Context, r *jobs.ResultRef) ([]byte, error) {
	rc, err := w.opts.Results.GetRange(ctx, r.Key, r.Offset, r.Length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err == nil && int64(len(b)) != r.Length {
		err = fmt.Errorf("read %d of the %d bytes of %s", len(b), r.Length, r.Key)
	}
	return b, err
}

// infer runs the batch's stacked inputs and returns each job's outputs.
func (w *Worker) infer(m *model.Model, items []*item) ([][]tensor.Tensor, time.Duration, error) {
	s := w.sessions[m.Version]
	if s == nil {
		return nil, 0, fmt.Errorf("version %d is not loaded", m.Version)
	}
	if len(items) == 1 {
		start := time.Now()
		var out []tensor.Tensor
		var err error
		it := items[0]
		if it.lines != nil {
			out, err = w.runLines(s, it)
		} else if out, err = w.runWhole(s, m, it.inputs, it.rows); err != nil && w.unstack(it) {
			w.log.Warn("a job packed from several requests failed in ONNX Runtime; running them one at a time to find those at fault", "job", it.job.ID, "requests", len(it.lines), "err", err)
			out, err = w.runLines(s, it)
		}
		return [][]tensor.Tensor{out}, time.Since(start), err
	}
	reqs := make([][]tensor.Tensor, len(items))
	rows := make([]int, len(items))
	for i, it := range items {
		reqs[i], rows[i] = it.inputs, it.rows
	}
	in, err := batching.Stack(reqs, m.Batched)
	if err != nil {
		return nil, 0, err
	}
	split, dur, err := runSplit(s, in, rows)
	if errors.Is(err, errUnsplittable) {
		// The model's metadata promised outputs batched along the first
		// dimension, and the run says otherwise: stop batching this
		// version. Its jobs are run one at a time from here on.
		if _, was := w.noBatch.LoadOrStore(m.Version, true); !was {
			w.log.Warn("model outputs do not follow the batch dimension; running its jobs one at a time from now on", "version", m.Version, "err", err)
		}
	}
	return split, dur, err
}

// runSplit runs stacked inputs once and splits the outputs back into
// parts of rows, returning how long the run took. An error wrapping
// errUnsplittable says the outputs did not follow the batch dimension.
func runSplit(s *onnx.Session, in []tensor.Tensor, rows []int) ([][]tensor.Tensor, time.Duration, error) {
	start := time.Now()
	out, err := s.Run(in)
	dur := time.Since(start)
	if err != nil {
		return nil, dur, err
	}
	split, err := batching.Split(out, rows)
	if err != nil {
		return nil, dur, fmt.Errorf("%w: %v", errUnsplittable, err)
	}
	return split, dur, nil
}

// runWhole runs one job. A job of more rows than the max batch size (a
// large request, or a batch file's lines packed together) runs in slices
// of at most that many rows, whose outputs are joined: max_batch_size is
// what a run may hold, whoever filled the job.
func (w *Worker) runWhole(s *onnx.Session, m *model.Model, in []tensor.Tensor, rows int) ([]tensor.Tensor, error) {
	size := w.policy.MaxBatchSize
	if rows <= size || !m.Sliceable() || w.unbatched(m) {
		return s.Run(in)
	}
	var cuts []int
	for left := rows; left > 0; left -= size {
		cuts = append(cuts, min(left, size))
	}
	parts, err := batching.Split(in, cuts)
	if err != nil {
		return w.runUnsliced(s, m, in, rows, err)
	}
	outs := make([][]tensor.Tensor, len(parts))
	for i, part := range parts {
		if outs[i], err = s.Run(part); err != nil {
			return nil, err
		}
	}
	joined, err := batching.Stack(outs, nil)
	for _, t := range joined {
		if len(t.Shape) == 0 || t.Shape[0] != int64(rows) {
			err = fmt.Errorf("output %s has shape %s for %d rows", t.Name, tensor.FormatShape(t.Shape), rows)
		}
	}
	if err != nil {
		return w.runUnsliced(s, m, in, rows, err)
	}
	return joined, nil
}

// unstack cuts a job stacked from several requests back into them, as
// lines to run one at a time; inputs shared by the job go to each. It
// reports false for a job that cannot be: one request, or padded inputs
// (whose outputs are trimmed as a whole).
func (w *Worker) unstack(it *item) bool {
	if len(it.lineRows) < 2 || it.length != 0 {
		return false
	}
	lines := make([][]tensor.Tensor, len(it.lineRows))
	for r := range lines {
		lines[r] = make([]tensor.Tensor, len(it.inputs))
	}
	for i, in := range it.inputs {
		if !it.model.Batched[i] {
			for r := range lines {
				lines[r][i] = in
			}
			continue
		}
		parts, err := batching.Split([]tensor.Tensor{in}, it.lineRows)
		if err != nil {
			w.log.Warn("a packed job's rows do not match its requests", "job", it.job.ID, "err", err)
			return false
		}
		for r := range lines {
			lines[r][i] = parts[r][0]
		}
	}
	it.lines = lines
	return true
}

// runLines runs a job of requests laid end to end: those that can share
// a run (same shapes, for a batchable model) in runs of up to the max
// batch size, the others one at a time. It lays their outputs end to end
// the same way, with their shapes in the response's parameters. A
// request that fails fails alone: the parameters say why, and its outputs
// are empty.
func (w *Worker) runLines(s *onnx.Session, it *item) ([]tensor.Tensor, error) {
	outs := make([][]tensor.Tensor, len(it.lines))
	lines := batching.Lines{Errors: map[int]string{}}
	alone := func(r int) {
		out, err := s.Run(it.lines[r])
		if err != nil {
			w.opts.Metrics.failedRuns.WithLabelValues(w.name).Inc()
			w.log.Warn("a request of a packed job failed in ONNX Runtime", "job", it.job.ID, "request", r+1, "of", len(it.lines), "err", err)
			lines.Errors[r] = err.Error()
			return
		}
		outs[r] = selectOutputs(out, it.job.Request.Outputs)
	}
	for _, group := range w.lineGroups(it) {
		if len(group.lines) == 1 || !w.runStacked(s, it, group, outs) {
			for _, r := range group.lines {
				alone(r)
			}
		}
	}
	var first []tensor.Tensor // a request's outputs, for the names and types
	for _, o := range outs {
		if o != nil {
			first = o
			break
		}
	}
	if first == nil {
		return nil, fmt.Errorf("all %d requests packed in this job failed; the first: %s", len(it.lines), lines.Errors[0])
	}
	for r := range lines.Errors {
		outs[r] = make([]tensor.Tensor, len(first))
		for i, t := range first {
			outs[r][i] = tensor.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: []int64{0}}
		}
	}
	packed, shapes, err := batching.Pack(outs)
	if err != nil {
		return nil, err
	}
	lines.Shapes = shapes
	it.params, it.linesFailed = lines.Parameters(), len(lines.Errors)
	return packed, nil
}

// lineGroup is requests of a job laid end to end that may share a run:
// their inputs, padded where the model's config asks, have the same
// shapes.
type lineGroup struct {
	lines   []int
	inputs  [][]tensor.Tensor // per line, as they run together
	lengths []int64           // per line, the padded length, or 0
	rows    int
}

// lineGroups groups the requests of a job laid end to end into those that
// may share a run, in order of first appearance: for a batchable model,
// requests of the same shapes once padded, up to the max batch size in
// rows; else each request alone.
func (w *Worker) lineGroups(it *item) []*lineGroup {
	m := it.model
	batch := m.Batchable && m.Sliceable() && !w.unbatched(m)
	var groups []*lineGroup
	open := map[string]*lineGroup{} // key to the group still open for it
	for r, line := range it.lines {
		if !batch {
			groups = append(groups, &lineGroup{lines: []int{r}})
			continue
		}
		in, length, err := padInputs(m, line)
		if err != nil {
			in, length = line, 0 // runs alone, unpadded, below
		}
		key := batching.Key(in, m.Batched)
		g := open[key]
		if g == nil || g.rows+it.lineRows[r] > w.policy.MaxBatchSize {
			g = &lineGroup{}
			open[key] = g
			groups = append(groups, g)
		}
		g.lines, g.inputs, g.lengths = append(g.lines, r), append(g.inputs, in), append(g.lengths, length)
		g.rows += it.lineRows[r]
	}
	return groups
}

// runStacked runs a group of a job's requests as one run, splits the
// outputs back and trims them to each request's own length. It reports
// false, having set nothing, when the run fails or its outputs do not
// split, so that the requests run one at a time.
func (w *Worker) runStacked(s *onnx.Session, it *item, g *lineGroup, outs [][]tensor.Tensor) bool {
	rows := make([]int, len(g.lines))
	for i, r := range g.lines {
		rows[i] = it.lineRows[r]
	}
	in, err := batching.Stack(g.inputs, it.model.Batched)
	if err != nil {
		return false
	}
	parts, _, err := runSplit(s, in, rows)
	if err != nil {
		if !errors.Is(err, errUnsplittable) {
			w.opts.Metrics.failedRuns.WithLabelValues(w.name).Inc()
		}
		return false
	}
	got := make([][]tensor.Tensor, len(g.lines))
	for i := range g.lines {
		if got[i], err = trimOutputs(it.model, g.lengths[i], parts[i]); err != nil {
			return false
		}
	}
	for i, r := range g.lines {
		outs[r] = selectOutputs(got[i], it.job.Request.Outputs)
	}
	return true
}

// runUnsliced runs a job that could not be cut into slices, or whose
// slices' outputs could not be joined back (one map per run, say), whole:
// unless the model's config holds every run to one row, a bound that a
// whole job would break.
func (w *Worker) runUnsliced(s *onnx.Session, m *model.Model, in []tensor.Tensor, rows int, why error) ([]tensor.Tensor, error) {
	if !m.Batchable {
		return nil, fmt.Errorf("a job of %d rows must run a row at a time (max_batch_size is 1), and it cannot be cut into rows and joined back: %w", rows, why)
	}
	return s.Run(in)
}

// unbatched reports whether batching was switched off for m at run time.
func (w *Worker) unbatched(m *model.Model) bool {
	_, ok := w.noBatch.Load(m.Version)
	return ok
}

func selectOutputs(all []tensor.Tensor, names []string) []tensor.Tensor {
	if len(names) == 0 {
		return all
	}
	out := make([]tensor.Tensor, 0, len(names))
	for _, n := range names {
		for _, t := range all {
			if t.Name == n {
				out = append(out, t)
			}
		}
	}
	return out
}

// retryOrFail returns a job whose run failed to the queue with a backoff,
// or, once it has had its attempts, returns how it ends (ok false).
func (w *Worker) retryOrFail(it *item, err error) (o outcome, retried bool) {
	if it.attempt < it.model.Config.MaxAttempts {
		_ = it.msg.NakWithDelay(w.backoff(it.attempt))
		return outcome{}, true
	}
	return outcome{it: it, status: jobs.Failed, reason: fmt.Sprintf("%v (attempt %d of %d)", err, it.attempt, it.model.Config.MaxAttempts)}, false
}

// finishFailed ends a job that can never run.
func (w *Worker) finishFailed(ctx context.Context, it *item, err error) {
	w.log.Warn("job cannot run", "job", it.job.ID, "err", err)
	w.complete(ctx, it, jobs.Failed, err.Error(), nil, nil)
}

// outcome is how a job ends: its final status, why, and for a succeeded
// job where its result is stored and the response its announcement
// carries.
type outcome struct {
	it       *item
	status   jobs.Status
	reason   string
	result   *jobs.ResultRef
	response []byte
}

// complete ends one job (see completeAll).
func (w *Worker) complete(ctx context.Context, it *item, status jobs.Status, reason string, result *jobs.ResultRef, response []byte) {
	w.completeAll(ctx, []outcome{{it: it, status: status, reason: reason, result: result, response: response}})
}

// completeAll moves jobs to their final status, announces them and
// acknowledges their messages, writing each step for the whole set at
// once: dead letters of the failed ones, then the records, then the
// announcements. A job whose record or announcement cannot be written is
// left to be redelivered, so it is not lost.
func (w *Worker) completeAll(ctx context.Context, outs []outcome) {
	if len(outs) == 0 {
		return
	}
	for _, o := range outs {
		defer w.traceFinish(o.it, o.status).End()
	}
	// The letter goes first: a job whose letter cannot be written is left
	// to come back, rather than failed without one.
	kept := outs[:0:0]
	for _, o := range outs {
		it := o.it
		if o.status == jobs.Failed && (it.rec == nil || !it.rec.Status.Final()) {
			if err := w.opts.Queue.DeadLetter(ctx, it.msg, o.reason, it.attempt); err != nil {
				w.log.Warn("could not dead-letter a failed job; it will be redelivered", "job", it.msg.Headers().Get(jobs.HeaderJobID), "err", err)
				_ = it.msg.NakWithDelay(w.backoff(it.attempt))
				continue
			}
		}
		kept = append(kept, o)
	}
	now := time.Now().UTC()
	changes := make([]jobs.Change, len(kept))
	for i, o := range kept {
		it := o.it
		changes[i] = jobs.Change{ID: it.job.ID, Rec: it.rec, Rev: it.rev, Fn: func(r *jobs.Record) error {
			if r.Status.Final() {
				return jobs.ErrConflict
			}
			r.Status, r.Error, r.FinishedAt = o.status, o.reason, &now
			r.Result = o.result
			if o.status == jobs.Succeeded {
				r.LinesFailed = it.linesFailed
			}
			if r.Attempts < it.attempt {
				r.Attempts = it.attempt
			}
			if it.model != nil {
				r.ModelVersion = it.model.VersionString()
			}
			return nil
		}}
	}
	var final []outcome
	var recs []*jobs.Record
	var responses [][]byte
	for i, c := range w.opts.Queue.Records.UpdateAll(ctx, changes) {
		o := kept[i]
		switch {
		case errors.Is(c.Err, jobs.ErrConflict), errors.Is(c.Err, jobs.ErrJobNotFound):
			_ = o.it.msg.Ack()
			continue
		case c.Err != nil:
			w.log.Warn("could not record job result; it will be redelivered", "job", o.it.job.ID, "err", c.Err)
			_ = o.it.msg.NakWithDelay(w.backoff(o.it.attempt))
			continue
		}
		// The job is final from here, whatever becomes of its message.
		w.opts.Metrics.finished.WithLabelValues(w.name, string(o.status)).Inc()
		if w.opts.finished != nil {
			w.opts.finished.Add(1)
		}
		w.opts.Metrics.latency.WithLabelValues(w.name, string(o.status)).Observe(now.Sub(c.Rec.CreatedAt).Seconds())
		final = append(final, o)
		recs = append(recs, c.Rec)
		responses = append(responses, o.response)
	}
	for i, err := range w.opts.Queue.AnnounceAll(ctx, recs, responses) {
		it := final[i].it
		if err != nil {
			// The record is final; the message is not acknowledged, so
			// that its redelivery finds the record final and announces it
			// again (the results stream drops a repeat within its
			// duplicate window).
			w.log.Warn("could not announce a finished job; it will be redelivered to try again", "job", it.job.ID, "err", err)
			_ = it.msg.NakWithDelay(w.backoff(it.attempt))
			continue
		}
		// A failed job's stored body stays for its dead letter's replay.
		if final[i].status != jobs.Failed {
			if err := w.opts.Queue.DropPayload(ctx, it.msg.Headers()); err != nil {
				w.log.Warn("could not delete a finished job's payload", "job", it.job.ID, "err", err)
			}
		}
		// A plain ack: if it is lost the job is delivered again, finds its
		// record final, and is acknowledged then without running.
		if err := it.msg.Ack(); err != nil {
			w.log.Warn("could not acknowledge job", "job", it.job.ID, "err", err)
		}
	}
}

func (w *Worker) backoff(attempt int) time.Duration {
	d := w.opts.Backoff
	for range max(0, attempt-1) {
		d *= 2
		if d >= 30*time.Second {
			return 30 * time.Second
		}
	}
	return d
}

// pad pads the item's inputs as its model's config asks, up to the bucket
// of the first padded input's length, and notes that length.
func pad(it *item) error {
	if it.lines != nil {
		return nil
	}
	var err error
	it.inputs, it.length, err = padInputs(it.model, it.inputs)
	return err
}

// padInputs pads inputs (in the model's order) as m's config asks, up to
// the bucket of the first padded input's length, which it returns: 0 when
// nothing was padded (no padding config, or longer than every bucket).
func padInputs(m *model.Model, inputs []tensor.Tensor) ([]tensor.Tensor, int64, error) {
	p := m.Config.Padding
	if p == nil {
		return inputs, 0, nil
	}
	out := slices.Clone(inputs)
	var length, bucket int64
	for i, in := range m.Inputs {
		spec, ok := p.Inputs[in.Name]
		if !ok {
			continue
		}
		n := out[i].Shape[spec.Axis]
		if length == 0 {
			b, ok := batching.Bucket(p.Buckets, n)
			if !ok {
				return inputs, 0, nil // longer than every bucket: runs unpadded
			}
			length, bucket = n, b
		}
		t, err := batching.Pad(out[i], spec.Axis, bucket, spec.Value)
		if err != nil {
			return nil, 0, err
		}
		out[i] = t
	}
	return out, length, nil
}

// trim cuts the outputs of a padded item back to its own length.
func trim(it *item, outputs []tensor.Tensor) ([]tensor.Tensor, error) {
	return trimOutputs(it.model, it.length, outputs)
}

// trimOutputs cuts outputs padded as m's config asks back to length; 0
// leaves them as they are.
func trimOutputs(m *model.Model, length int64, outputs []tensor.Tensor) ([]tensor.Tensor, error) {
	p := m.Config.Padding
	if length == 0 || p == nil {
		return outputs, nil
	}
	out := slices.Clone(outputs)
	for i := range out {
		if axis, ok := p.Outputs[out[i].Name]; ok {
			t, err := batching.Trim(out[i], axis, length)
			if err != nil {
				return nil, err
			}
			out[i] = t
		}
	}
	return out, nil
}

// sweep deletes the model's result objects older than keep, every tenth of
// keep (at least a second, at most a minute), until ctx ends. An object's
// name is the ULID of its batch, which says when it was written. Several
// workers of a model may sweep at once; deleting twice is harmless.
func (w *Worker) sweep(ctx context.Context, keep time.Duration) {
	t := time.NewTicker(min(max(keep/10, time.Second), time.Minute))
	defer t.Stop()
	prefix := jobs.ResultPrefix(w.name)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		keys, err := w.opts.Results.List(ctx, prefix)
		if err != nil {
			w.log.Warn("listing results to expire", "err", err)
			continue
		}
		cutoff := time.Now().Add(-keep)
		deleted := 0
		for _, key := range keys {
			name := strings.TrimPrefix(key, prefix)
			name = strings.TrimSuffix(strings.TrimSuffix(name, ".jsonl"), ".json")
			id, err := ulid.ParseStrict(name)
			if err != nil || ulid.Time(id.Time()).After(cutoff) {
				continue
			}
			if err := w.opts.Results.Delete(ctx, key); err != nil {
				w.log.Warn("deleting expired results", "key", key, "err", err)
				continue
			}
			deleted++
		}
		deleted += w.expireCaptured(ctx, cutoff)
		if deleted > 0 {
			w.log.Info("expired results deleted", "objects", deleted, "older_than", keep)
		}
	}
}

// errBadObject is an input object that cannot be the input it stands for.
var errBadObject = errors.New("bad input object")

// readInputs reads the inputs a job gives by reference from storage. A
// missing object, or one whose size does not fit the input's shape, is an
// error the job fails with; others are storage trouble, to retry.
func (w *Worker) readInputs(ctx context.Context, job *jobs.Job) error {
	for i := range job.Request.Inputs {
		t := &job.Request.Inputs[i]
		if t.Object == "" {
			continue
		}
		if err := jobs.CheckInputObject(job.Model, t.Object); err != nil {
			return fmt.Errorf("input %q: %w", t.Name, err)
		}
		rc, err := w.opts.Results.Get(ctx, t.Object)
		if err != nil {
			return fmt.Errorf("input %q: object %s: %w", t.Name, t.Object, err)
		}
		t.Data, err = io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("input %q: read object %s: %w", t.Name, t.Object, err)
		}
		if err := t.CheckData(); err != nil {
			return fmt.Errorf("%w: input %q: object %s holds %d bytes, which do not fit %s %s: %v", errBadObject, t.Name, t.Object, len(t.Data), t.Datatype, tensor.FormatShape(t.Shape), err)
		}
	}
	return nil
}
