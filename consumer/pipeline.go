package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/inferq/inferq/flow"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// A pipeline job's model step is a job on its model's queue, run by that
// model's workers like any other, batched with every other caller. The
// worker that finishes it goes on with the job in place (flow.Continue):
// it runs the operations after the step and queues the next model step
// (record.Advance: one record write, one message, one acknowledgement),
// or, after the last, stores the pipeline's outputs as the job's result
// and ends it as any job ends.

// stepFailed fails a pipeline job at a step whose failure another
// attempt would not mend (an operation's error, outputs a later step
// cannot use); its message names the step.
type stepFailed struct{ error }

func failStep(format string, args ...any) error { return stepFailed{fmt.Errorf(format, args...)} }

// goOn goes on with the pipeline jobs among items whose model step ran
// (errs[i] nil): those with a model step left are queued for it, the set
// in one go, and dropped from what the caller finishes (their entry in
// keep false); one at its end has outputs[i] replaced by the pipeline's
// outputs.
func (w *Worker) goOn(ctx context.Context, items []*item, outputs [][]tensor.Tensor, errs []error) (keep []bool) {
	keep = make([]bool, len(items))
	var moving []*item
	var next []*jobs.Job
	for i, it := range items {
		keep[i] = true
		if it.job.Pipeline == nil || errs[i] != nil {
			continue
		}
		final, job, err := w.nextStep(it, outputs[i])
		switch {
		case err != nil:
			errs[i] = err
		case job != nil:
			keep[i] = false
			moving, next = append(moving, it), append(next, job)
		default:
			outputs[i], it.params = final, nil
		}
	}
	w.advance(ctx, moving, next)
	return keep
}

// nextStep runs what follows a pipeline job's model step up to its next
// model step, and returns that step's job; or the pipeline's outputs.
func (w *Worker) nextStep(it *item, outputs []tensor.Tensor) (final []tensor.Tensor, next *jobs.Job, err error) {
	step := it.job.Pipeline
	start := time.Now()
	_, span := w.tracer.Start(it.trace, "inferq.pipeline_continue", trace.WithAttributes(
		attribute.String("inferq.job", it.job.ID), attribute.String("inferq.pipeline", step.Pipeline), attribute.String("inferq.step", step.Name)))
	defer func() {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		w.opts.Metrics.stepSeconds.WithLabelValues(step.Pipeline, step.Name).Observe(time.Since(start).Seconds())
	}()
	plan, st, err := w.stateOf(it)
	if err != nil {
		return nil, nil, err
	}
	call, final, err := flow.Continue(plan, st, step.Name, outputs, it.params, w.opts.Catalog)
	if err != nil {
		return nil, nil, failStep("%v", err)
	}
	if call == nil {
		return final, nil, nil
	}
	if next, err = call.Job(plan, it.job.ID, st, it.job); err != nil {
		return nil, nil, failStep("step %s: %v", call.Step.Name, err)
	}
	return nil, next, nil
}

// stateOf is the plan of a pipeline step's job and its state: as
// prepare left it, or as its message carries it.
func (w *Worker) stateOf(it *item) (*pipeline.Plan, *pipeline.State, error) {
	step := it.job.Pipeline
	if w.opts.Catalog == nil {
		return nil, nil, failStep("step %s: this worker was started without the model repository, which pipeline %s is read from", step.Name, step.Pipeline)
	}
	m, err := w.opts.Catalog.Lookup(step.Pipeline, 0)
	if err == nil && m.Pipeline == nil {
		err = fmt.Errorf("%s is a model now, not a pipeline", step.Pipeline)
	}
	if err != nil {
		return nil, nil, failStep("step %s: pipeline %s: %v", step.Name, step.Pipeline, err)
	}
	if it.state != nil {
		return m.Pipeline, it.state, nil
	}
	st, err := pipeline.DecodeState(step.State, step.StateHeaderLen, step.Done, w.opts.Limits)
	if err != nil {
		return nil, nil, failStep("step %s: %v", step.Name, err)
	}
	return m.Pipeline, st, nil
}

// prepare makes the request of a pipeline step queued before the
// operations ahead of it ran (jobs.Step.Prepare: the job's first model
// step, which carries what the client sent): it runs them here, in the
// model's worker, and shapes the step for the model. An operation that
// fails fails the job, naming its step.
func (w *Worker) prepare(it *item) error {
	plan, st, err := w.stateOf(it)
	if err != nil {
		return err
	}
	call, err := flow.Prepare(plan, st, it.job.Pipeline.Name, w.opts.Catalog)
	if err != nil {
		return failStep("%v", err)
	}
	it.job.Request, it.job.Lines, it.state = call.Request, call.Lines, st
	return nil
}

// advance records each pipeline job among items done with its step and
// waiting for its next (next[i]), then queues next[i] and acknowledges
// the step's message: each write for the whole set at once. The record
// goes first: a message queued for a record not yet advanced could start
// before it and be undone by it. Should a message fail, its step is
// handed back: run again, it queues the next step once more (a repeat
// JetStream drops within its duplicate window).
func (w *Worker) advance(ctx context.Context, items []*item, next []*jobs.Job) {
	if len(items) == 0 {
		return
	}
	now := time.Now().UTC()
	changes := make([]jobs.Change, len(items))
	for i, it := range items {
		changes[i] = jobs.Change{ID: it.job.ID, Rec: it.rec, Rev: it.rev, Fn: func(r *record.Record) error {
			if err := r.AdvanceStep(it.job.Pipeline.Name, next[i].Pipeline.Name, now, it.attempt); err != nil {
				return err
			}
			if r.Worker == "" {
				r.Worker = w.opts.Name
			}
			return nil
		}}
	}
	var moved []*item
	var jobsOut []*jobs.Job
	var recs []*record.Record
	var revs []uint64
	for i, c := range w.opts.Queue.Records.UpdateAll(ctx, changes) {
		it := items[i]
		switch {
		case errors.Is(c.Err, record.ErrConflict), errors.Is(c.Err, jobs.ErrJobNotFound):
			w.settle(it.msg, done, 0) // ended meanwhile
		case c.Err != nil:
			w.log.Warn("could not record a pipeline step done; it will run again", "job", it.job.ID, "step", it.job.Pipeline.Name, "err", c.Err)
			w.settle(it.msg, handBack, w.backoff(it.attempt))
		default:
			moved, jobsOut, recs, revs = append(moved, it), append(jobsOut, next[i]), append(recs, c.Rec), append(revs, c.Rev)
		}
	}
	for i, err := range w.opts.Queue.PublishSteps(ctx, jobsOut, recs, revs) {
		it := moved[i]
		if err != nil {
			w.log.Warn("could not queue a pipeline job's next step; its step will run again", "job", it.job.ID, "step", jobsOut[i].Pipeline.Name, "err", err)
			w.settle(it.msg, handBack, w.backoff(it.attempt))
			continue
		}
		w.opts.Metrics.steps.WithLabelValues(it.job.Pipeline.Pipeline, it.job.Pipeline.Name, string(record.Succeeded)).Inc()
		if err := w.opts.Queue.DropPayload(ctx, it.msg.Headers()); err != nil {
			w.log.Warn("could not delete a pipeline step's payload", "job", it.job.ID, "err", err)
		}
		w.settle(it.msg, done, 0)
	}
}

// startStep notes in r that a pipeline job's model step starts its
// attempt (see start).
func startStep(r *record.Record, it *item, now time.Time) {
	if it.job.Pipeline == nil {
		return
	}
	r.StartStep(it.job.Pipeline.Name, now, it.attempt)
}

// endStep notes in r how a pipeline job's last step ended, and returns
// the job's error naming the step (see stepReason).
func endStep(r *record.Record, it *item, status record.Status, reason string, now time.Time) string {
	if it.job.Pipeline == nil {
		return reason
	}
	if afterStep(reason) && it.attempt == 0 {
		return reason // an operation before the model step failed: it never started
	}
	name := it.job.Pipeline.Name
	switch {
	case status == record.Succeeded || reason == "":
		r.EndStep(name, status, now, it.attempt, "")
		return reason
	case afterStep(reason):
		r.EndStep(name, record.Succeeded, now, it.attempt, "") // the model step ran; what came after failed
		return reason
	}
	r.EndStep(name, status, now, it.attempt, reason)
	return stepReason(it, reason)
}

// stepReason is why a job failed, naming its step when it is a pipeline
// job's: its record's error and its dead letter's.
func stepReason(it *item, reason string) string {
	if it.job == nil || it.job.Pipeline == nil || reason == "" || afterStep(reason) {
		return reason
	}
	return fmt.Sprintf("step %s (model %s): %s", it.job.Pipeline.Name, it.job.Model, reason)
}

// afterStep reports a reason that names its step already (stepFailed).
func afterStep(reason string) bool { return strings.HasPrefix(reason, "step ") }
