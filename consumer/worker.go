// Package consumer runs models on queued jobs: a Worker per model pulls
// jobs from the model's durable JetStream consumer, forms dynamic batches
// (package batching), runs them in ONNX Runtime sessions, writes each
// job's result to storage, updates its record, announces it, and only then
// acknowledges its message.
//
// A job passes through the files of this package in order:
//
//	pull.go       the durable consumers, one per priority, and the pumps
//	              that fetch from them (fetcher.go), high priority first
//	admit.go      a fetched job checked, its inputs read, and batched
//	settle.go     a batch marked running (start), and every job's end:
//	              its final record, announcement and acknowledgement;
//	              settle, the one place a message is acknowledged,
//	              handed back or dropped
//	run.go        a batch run by the strategy its jobs need, split back
//	              per job (runner, over a one-method session that ONNX
//	              Runtime's sessions and tests' fakes provide)
//	results.go    the results of a set of batches stored as one object
//	retention.go  old result objects and captured jobs deleted, on a
//	              ticker of their own (retention.Run)
//
// worker.go holds the pipeline that joins them (Run); held.go keeps every
// fetched message alive until it is settled; monitoring.go and tracing.go
// observe it; fleet.go runs and scales the workers of every model.
package consumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/internal/retry"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/record"
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
	Family *model.Family
	// Catalog finds the pipelines whose model steps this worker runs,
	// and the models of their next steps (a *model.Catalog). Without it
	// a pipeline step fails.
	Catalog Catalog
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
	// MaxResultBytes bounds one job's result as stored; a job whose
	// result is larger fails with the reason. 0 is no bound.
	MaxResultBytes int64
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
	// RunningAfter is how long a batch of first deliveries (of jobs
	// queued since the worker started) runs before its jobs' records say
	// running: one that finishes sooner goes from queued to its final
	// state in one write, a write a job fewer (see docs/nats.md). 0 marks
	// every batch running before it runs.
	RunningAfter time.Duration
	// Shadow, when set, makes the worker run the shadow runs of this
	// version of its model (queued by the workers that answered the
	// jobs, on the version's own queue) instead of the model's jobs: it
	// compares their outputs with the answers for prediction
	// monitoring, and writes no record, result or announcement.
	Shadow int64
	// Sources reads the inputs that jobs name by s3:// URL (the lines of
	// a batch over an allowed bucket, --batch-sources); nil reads none.
	Sources interface {
		OpenURL(ctx context.Context, url string) (io.ReadCloser, error)
	}
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
	// runner runs the batches.
	runner *runner
	// held are the job messages fetched and not yet settled.
	held *held
	// since is when Run began: see firstDelivery.
	since time.Time
	// abandoned is set when the drain timeout passed with work in hand:
	// its jobs are back in the queue, and nothing more is written for
	// them.
	abandoned atomic.Bool
	// batches remembers which batches' uploads were cut off.
	batches batchStates
}

// terminateWait is how long a worker waits, past its drain timeout, for
// the runs it ended to return.
const terminateWait = 5 * time.Second

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
	w.runner = &runner{name: w.name, policy: policy, metrics: opts.Metrics, log: w.log}
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
	// empty: a pipeline step of zero rows, answered without a run.
	empty bool
	// state, for a pipeline step prepared here (see prepare), is its
	// job's state after the operations before the step.
	state *pipeline.State
	rec   *record.Record
	rev   uint64
	// unmarked: rec says running, but the stored record (at rev) still
	// says queued; see Options.RunningAfter and markRunning.
	unmarked bool
	// trace is the job's trace context, and admitted when the worker
	// took it (see tracing.go).
	trace    context.Context
	admitted time.Time
}

// Catalog is what a worker reads of the model repository beyond its own
// model.
type Catalog interface {
	Lookup(name string, version int64) (*model.Model, error)
}

// Run loads the model's sessions and serves jobs until ctx is cancelled,
// then stops fetching, finishes the batches in hand, returns the jobs not
// started to the queue, and returns.
func (w *Worker) Run(ctx context.Context) error {
	w.since = time.Now()
	if w.sessions == nil {
		if err := w.Load(); err != nil {
			return err
		}
	}
	// A run still under way past the drain timeout keeps its sessions:
	// unloading them under it would crash the process.
	stuck := false
	defer func() {
		if !stuck {
			w.unload()
		}
	}()

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
	for wait := retry.New(w.opts.Backoff, 30*time.Second); err != nil; sources, pumped, err = w.subscribe(ctx) {
		if ctx.Err() != nil {
			return nil // stopped while starting
		}
		d := wait.Next()
		w.log.Warn("cannot pull jobs yet; retrying", "in", d, "err", err)
		if !retry.Sleep(ctx, d) {
			return nil
		}
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
				late := w.markRunningAfter(workCtx, items)
				r := w.runBatch(items)
				late.stop()
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
				if w.storagePause > 0 {
					// Storage is away: hold the pipeline (and so the
					// fetching) back, but not a shutdown.
					retry.Sleep(ctx, w.storagePause)
				}
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
	if keep := w.opts.Family.Default().Config.ResultRetention; keep > 0 && w.opts.Shadow == 0 {
		sweeping := make(chan struct{})
		defer func() { <-sweeping }()
		go func() {
			defer close(sweeping)
			var versions []string
			for _, m := range w.opts.Family.Versions {
				versions = append(versions, m.VersionString())
			}
			r := retention{Model: w.name, Versions: versions, Keep: keep, Store: w.opts.Results, Logger: w.log}
			_ = r.Run(ctx) // returns when ctx ends
		}()
	}
	w.log.Info("worker started", "max_batch_size", w.policy.MaxBatchSize, "max_queue_delay", w.policy.MaxQueueDelay, "instances", w.instances)
	// The counters alerts watch start at 0, so that the first failure is
	// an increase, not the start of a series.
	w.opts.Metrics.failedRuns.WithLabelValues(w.name)
	if w.opts.Shadow == 0 {
		w.opts.Metrics.shadowDropped.WithLabelValues(w.name)
	}
	for _, st := range []record.Status{record.Succeeded, record.Failed} {
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
	// finish, within the drain timeout.
	for _, src := range sources {
		src.Drain()
	}
	returned := 0
	for _, b := range batcher.Flush() {
		for _, it := range b.Items {
			w.settle(it.msg, handBack, 0)
			returned++
		}
	}
	close(work)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		preparers.Wait()
		close(prepared)
		executors.Wait()
		close(ran)
		writers.Wait()
	}()
	drainTimer := time.NewTimer(w.opts.DrainTimeout)
	defer drainTimer.Stop()
	select {
	case <-drained:
	case <-drainTimer.C:
		// A batch outlived the drain timeout (a stuck or very slow run):
		// its jobs, and every other job still held, go back to the queue
		// now, for another worker, without an attempt counted; the runs
		// under way are ended, and what they and the writer bring after
		// is dropped (abandoned).
		w.abandoned.Store(true)
		cancelWork()
		// The pull under way ends first, so that nothing handed back is
		// delivered again into it.
		for f := range msgs {
			w.settle(f.msg, handBack, 0)
			returned++
		}
		<-pumpDone
		n := w.held.handBackAll()
		returned += n
		w.log.Warn("batches still running at the drain timeout; their jobs go back to the queue", "drain_timeout", w.opts.DrainTimeout, "jobs", n)
		for v, s := range w.sessions {
			if err := s.Terminate(); err != nil {
				w.log.Warn("could not end a run under way", "version", v, "err", err)
			}
		}
		select {
		case <-drained:
		case <-time.After(terminateWait):
			stuck = true
			w.log.Error("a run did not end when told to; its sessions stay loaded", "waited", terminateWait)
		}
	}
	stopWatching()
	if !stuck {
		<-watched
	}
	for f := range msgs {
		w.settle(f.msg, handBack, 0)
		returned++
	}
	<-pumpDone
	w.log.Info("worker stopped", "returned_to_queue", returned)
	return nil
}
