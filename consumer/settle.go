package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/inferq/inferq/internal/retry"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/nats-io/nats.go/jetstream"
)

// settlement is how a job's message ends in the worker's hands. Every
// stage decides one; settle is the one place that carries it out.
type settlement string

const (
	// done acknowledges the message: the job is final, or needs nothing
	// more from this delivery.
	done settlement = "ack"
	// handBack returns the job to the queue, to be delivered again after
	// a delay (0: at once): a retry, storage away, a shutdown.
	handBack settlement = "hand_back"
	// drop terminates a message that can never run: JetStream does not
	// deliver it again.
	drop settlement = "drop"
)

// settle ends a job's message as decided, and counts it. A settlement
// that does not reach NATS leaves the message to come back after its ack
// wait, where a redelivery finds the job's record as this one left it.
func (w *Worker) settle(m jetstream.Msg, how settlement, delay time.Duration) {
	var err error
	switch how {
	case done:
		err = m.Ack()
	case handBack:
		if delay > 0 {
			err = m.NakWithDelay(delay)
		} else {
			err = m.Nak()
		}
	case drop:
		err = m.Term()
	}
	w.opts.Metrics.settled.WithLabelValues(w.name, string(how)).Inc()
	if err != nil {
		w.log.Warn("could not settle a job's message; JetStream delivers it again after its ack wait", "job", m.Headers().Get(jobs.HeaderJobID), "how", how, "err", err)
	}
}

var (
	errGaveUp = errors.New("attempts exhausted")
	// errExpired is a job whose deadline passed before it started.
	errExpired = errors.New("deadline passed")
	// errUploadCut is a job of a batch whose upload was cut off before
	// the end of its file: nobody can read its output.
	errUploadCut = errors.New("batch upload cut off")
)

// start marks each job running, the whole set in one go, and returns
// those that should run: a job already final (cancelled, or finished
// before a redelivery) is acknowledged and dropped, one past its attempts
// or its deadline ends. A job delivered for the first time with its
// record in the message is not written yet when the worker waits
// Options.RunningAfter before marking (see markRunningAfter): its record
// is changed in hand, and stored with the final one if the run is quick.
func (w *Worker) start(ctx context.Context, items []*item) []*item {
	if w.opts.Shadow > 0 {
		return items // a shadow run has no record
	}
	now := time.Now().UTC()
	fn := func(it *item) func(r *record.Record) error {
		cut := batchOf(it) != "" && w.batches.uploadCut(ctx, w.opts.Queue.Batches, batchOf(it))
		return func(r *record.Record) error {
			if r.Status.Final() {
				return record.ErrConflict
			}
			if cut && r.Status == record.Queued {
				return errUploadCut
			}
			if r.Deadline != nil && now.After(*r.Deadline) && r.Status == record.Queued {
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
			if _, err := r.Apply(record.Start, now, ""); err != nil {
				return err
			}
			startStep(r, it, now)
			r.Worker = w.opts.Name
			r.Attempts = it.attempt
			if it.job.Pipeline == nil {
				r.ModelVersion = it.model.VersionString()
			}
			return nil
		}
	}
	started := make([]jobs.Changed, len(items))
	var changes []jobs.Change
	var written []int
	for i, it := range items {
		if w.opts.RunningAfter > 0 && it.job.Record != nil && it.job.Revision > 0 && firstDelivery(it.msg, w.since) {
			// A first delivery: no earlier run can have left the record
			// running, so the record the message carries is the one to
			// start from.
			rec := *it.job.Record
			err := fn(it)(&rec)
			started[i] = jobs.Changed{Rec: &rec, Rev: it.job.Revision, Err: err}
			it.unmarked = err == nil
			continue
		}
		changes = append(changes, jobs.Change{ID: it.job.ID, Rec: it.job.Record, Rev: it.job.Revision, Fn: fn(it)})
		written = append(written, i)
	}
	for j, c := range w.opts.Queue.Records.UpdateAll(ctx, changes) {
		started[written[j]] = c
	}
	var run []*item
	var ended []outcome
	for i, c := range started {
		it := items[i]
		switch {
		case errors.Is(c.Err, errGaveUp):
			it.rec, it.rev = c.Rec, c.Rev
			ended = append(ended, outcome{it: it, status: record.Failed, reason: fmt.Sprintf("gave up after %d attempts that never finished: the worker running it stopped each time (crashed, killed or out of memory)", it.attempt-1)})
		case errors.Is(c.Err, errUploadCut):
			it.rec, it.rev = c.Rec, c.Rev
			ended = append(ended, outcome{it: it, status: record.Cancelled, reason: fmt.Sprintf("its batch, %s, ended before its file was read to the end (its upload was cut off, or it was cancelled): a line of it that has not started does not run", c.Rec.Batch)})
		case errors.Is(c.Err, errExpired):
			it.rec, it.rev = c.Rec, c.Rev
			ended = append(ended, outcome{it: it, status: record.Expired, reason: fmt.Sprintf("its deadline, %s, passed before it could start", c.Rec.Deadline.Format(time.RFC3339Nano))})
		case errors.Is(c.Err, record.ErrConflict):
			// Finished before (or cancelled). If its worker died between
			// the record and the acknowledgement, its announcement may
			// have died too: announce again while the results stream
			// drops the repeat if the first one made it.
			w.log.Debug("skipping finished job", "job", it.job.ID, "status", c.Rec.Status)
			if !w.opts.Queue.CanAnnounceAgain(c.Rec) {
				w.settle(it.msg, done, 0)
				continue
			}
			if err := w.opts.Queue.Announce(c.Rec, w.storedResponse(ctx, c.Rec)); err != nil {
				w.log.Warn("could not announce a finished job; it will be redelivered to try again", "job", it.job.ID, "err", err)
				w.settle(it.msg, handBack, w.opts.Backoff)
				continue
			}
			w.settle(it.msg, done, 0)
		case errors.Is(c.Err, jobs.ErrJobNotFound):
			// The record is stored before the message is published: on a
			// cluster, a replica that lags may not have it yet. Dropped
			// only once several deliveries found none.
			if meta, err := it.msg.Metadata(); err == nil && meta.NumDelivered < 5 {
				w.log.Warn("job has no record yet; trying again later", "job", it.job.ID)
				w.settle(it.msg, handBack, w.opts.Backoff)
				continue
			}
			w.log.Warn("job has no record; dropping it", "job", it.job.ID)
			w.settle(it.msg, drop, 0)
		case c.Err != nil:
			w.log.Warn("could not mark job running; retrying later", "job", it.job.ID, "err", c.Err)
			w.settle(it.msg, handBack, w.opts.Backoff)
		default:
			it.rec, it.rev = c.Rec, c.Rev
			run = append(run, it)
		}
	}
	w.completeAll(ctx, ended)
	return run
}

// retryOrFail returns a job whose run failed to the queue with a backoff,
// or, once it has had its attempts, returns how it ends (ok false).
func (w *Worker) retryOrFail(ctx context.Context, it *item, err error) (o outcome, retried bool) {
	if it.attempt < it.model.Config.MaxAttempts {
		// The attempt counts: the record says so before the job returns.
		w.markRunning(ctx, []*item{it})
		w.settle(it.msg, handBack, w.backoff(it.attempt))
		return outcome{}, true
	}
	return outcome{it: it, status: record.Failed, reason: fmt.Sprintf("%v (attempt %d of %d)", err, it.attempt, it.model.Config.MaxAttempts)}, false
}

// finishFailed ends a job that can never run.
func (w *Worker) finishFailed(ctx context.Context, it *item, err error) {
	w.log.Warn("job cannot run", "job", it.job.ID, "err", err)
	w.complete(ctx, it, record.Failed, err.Error(), nil, nil)
}

// outcome is how a job ends: its final status, why, and for a succeeded
// job where its result is stored and the response its announcement
// carries.
type outcome struct {
	it       *item
	status   record.Status
	reason   string
	result   *record.ResultRef
	response []byte
}

// event is the lifecycle event that ends the job as o says.
func (o outcome) event() record.Event {
	switch o.status {
	case record.Succeeded:
		return record.Succeed
	case record.Expired:
		return record.Expire
	case record.Cancelled:
		return record.Cancel
	}
	return record.Fail
}

// complete ends one job (see completeAll).
func (w *Worker) complete(ctx context.Context, it *item, status record.Status, reason string, result *record.ResultRef, response []byte) {
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
	if w.opts.Shadow > 0 {
		for _, o := range outs {
			w.shadowFailed(o.it, errors.New(o.reason))
		}
		return
	}
	for _, o := range outs {
		defer w.traceFinish(o.it, o.status).End()
	}
	// The letter goes first (record.Effects): a job whose letter cannot be
	// written is left to come back, rather than failed without one.
	kept := outs[:0:0]
	for _, o := range outs {
		it := o.it
		if t, err := record.Next(record.Running, o.event()); err == nil && t.Writes&record.WriteDeadLetter != 0 && (it.rec == nil || !it.rec.Status.Final()) {
			if err := w.opts.Queue.DeadLetter(ctx, it.msg, stepReason(it, o.reason), it.attempt); err != nil {
				w.log.Warn("could not dead-letter a failed job; it will be redelivered", "job", it.msg.Headers().Get(jobs.HeaderJobID), "err", err)
				w.settle(it.msg, handBack, w.backoff(it.attempt))
				continue
			}
		}
		kept = append(kept, o)
	}
	now := time.Now().UTC()
	changes := make([]jobs.Change, len(kept))
	for i, o := range kept {
		it := o.it
		changes[i] = jobs.Change{ID: it.job.ID, Rec: it.rec, Rev: it.rev, Fn: func(r *record.Record) error {
			if _, err := r.Apply(o.event(), now, endStep(r, it, o.status, o.reason, now)); err != nil {
				return err
			}
			r.Result = o.result
			if o.status == record.Succeeded {
				r.LinesFailed = it.linesFailed
			}
			if r.Attempts < it.attempt {
				r.Attempts = it.attempt
			}
			if r.StartedAt == nil && it.rec != nil {
				// Read again, as stored before the job was marked.
				r.StartedAt, r.Worker = it.rec.StartedAt, it.rec.Worker
			}
			if it.model != nil && it.job.Pipeline == nil {
				r.ModelVersion = it.model.VersionString()
			}
			return nil
		}}
	}
	var final []outcome
	var recs []*record.Record
	var responses [][]byte
	for i, c := range w.opts.Queue.Records.UpdateAll(ctx, changes) {
		o := kept[i]
		switch {
		case errors.Is(c.Err, record.ErrConflict), errors.Is(c.Err, jobs.ErrJobNotFound):
			w.settle(o.it.msg, done, 0)
			continue
		case c.Err != nil:
			w.log.Warn("could not record job result; it will be redelivered", "job", o.it.job.ID, "err", c.Err)
			w.settle(o.it.msg, handBack, w.backoff(o.it.attempt))
			continue
		}
		// The job is final from here, whatever becomes of its message.
		w.opts.Metrics.finished.WithLabelValues(w.name, string(o.status)).Inc()
		if p := o.it.job.Pipeline; p != nil {
			w.opts.Metrics.steps.WithLabelValues(p.Pipeline, p.Name, string(o.status)).Inc()
		}
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
			w.settle(it.msg, handBack, w.backoff(it.attempt))
			continue
		}
		// A failed job's stored body stays for its dead letter's replay.
		if final[i].status != record.Failed {
			if err := w.opts.Queue.DropPayload(ctx, it.msg.Headers()); err != nil {
				w.log.Warn("could not delete a finished job's payload", "job", it.job.ID, "err", err)
			}
		}
		// A plain ack: if it is lost the job is delivered again, finds its
		// record final, and is acknowledged then without running.
		w.settle(it.msg, done, 0)
	}
}

// backoff is how long a job waits after its run failed before attempt
// attempt+1.
func (w *Worker) backoff(attempt int) time.Duration {
	return retry.Delay(w.opts.Backoff, 30*time.Second, attempt)
}

// firstDelivery reports a message JetStream delivers for the first time
// and stored after since, when this worker started. JetStream's count of
// deliveries is not trusted for older messages: a NATS server killed with
// its consumers' latest state unwritten (an embedded one dies with a
// worker that crashed) delivers again as if for the first time, and a
// job whose run crashed the process before its record said running would
// then never have that run counted, and crash it again for ever. Those
// are marked running before they run, from their stored record.
func firstDelivery(m jetstream.Msg, since time.Time) bool {
	meta, err := m.Metadata()
	return err == nil && meta.NumDelivered == 1 && meta.Timestamp.After(since)
}

// markRunning stores the running record of each job among items that
// start left unmarked, the set in one go. A job whose record changed
// meanwhile (cancelled) stays unmarked: its final write finds out.
func (w *Worker) markRunning(ctx context.Context, items []*item) {
	var changes []jobs.Change
	var marked []*item
	for _, it := range items {
		if !it.unmarked {
			continue
		}
		started := it.rec
		changes = append(changes, jobs.Change{ID: it.job.ID, Rec: it.job.Record, Rev: it.rev, Fn: func(r *record.Record) error {
			if r.Status != record.Queued {
				return record.ErrConflict // moved on meanwhile (cancelled)
			}
			if _, err := r.Apply(record.Start, *started.StartedAt, ""); err != nil {
				return err
			}
			r.Worker, r.Attempts, r.ModelVersion = started.Worker, started.Attempts, started.ModelVersion
			return nil
		}})
		marked = append(marked, it)
	}
	for i, c := range w.opts.Queue.Records.UpdateAll(ctx, changes) {
		if c.Err != nil {
			if !errors.Is(c.Err, record.ErrConflict) {
				w.log.Debug("could not mark a job running", "job", marked[i].job.ID, "err", c.Err)
			}
			continue
		}
		marked[i].rec, marked[i].rev, marked[i].unmarked = c.Rec, c.Rev, false
	}
}

// lateMark marks a batch's jobs running once it has run for
// Options.RunningAfter.
type lateMark struct {
	timer *time.Timer
	done  chan struct{}
}

// markRunningAfter arms the marking of items that start left unmarked;
// nil when there are none.
func (w *Worker) markRunningAfter(ctx context.Context, items []*item) *lateMark {
	if !slices.ContainsFunc(items, func(it *item) bool { return it.unmarked }) {
		return nil
	}
	l := &lateMark{done: make(chan struct{})}
	l.timer = time.AfterFunc(w.opts.RunningAfter, func() {
		defer close(l.done)
		w.markRunning(ctx, items)
	})
	return l
}

// stop disarms the marking, or, if it has begun, waits for it to end: the
// items are the caller's again when it returns.
func (l *lateMark) stop() {
	if l != nil && !l.timer.Stop() {
		<-l.done
	}
}

// batchOf is the batch of a job whose message carries its record; "" for
// any other.
func batchOf(it *item) string {
	if it.job.Record != nil {
		return it.job.Record.Batch
	}
	return ""
}

// batchStates remembers, for a few seconds, whether batches' uploads were
// cut off (record.BatchRecord.UploadCut), so that a batch's jobs cost a
// read of its record every few seconds, not one each.
type batchStates struct {
	mu    sync.Mutex
	known map[string]batchState
}

type batchState struct {
	cut bool
	at  time.Time
}

// batchGetter reads batch records; *jobs.Batches is one.
type batchGetter interface {
	Get(ctx context.Context, id string) (*record.BatchRecord, error)
}

// uploadCut reports whether batch's upload was cut off before the end of
// its file. A record that cannot be read says no: the job runs.
func (s *batchStates) uploadCut(ctx context.Context, batches batchGetter, batch string) bool {
	now := time.Now()
	s.mu.Lock()
	e, ok := s.known[batch]
	s.mu.Unlock()
	if ok && now.Sub(e.at) < 5*time.Second {
		return e.cut
	}
	b, err := batches.Get(ctx, batch)
	cut := err == nil && b.UploadCut()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.known == nil || len(s.known) > 10_000 {
		s.known = map[string]batchState{}
	}
	s.known[batch] = batchState{cut: cut, at: now}
	return cut
}
