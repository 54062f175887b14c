package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

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
// (errs[i] nil): a job with a model step left is queued for it, and
// dropped from what the caller finishes (its entry in keep false); one at
// its end has outputs[i] replaced by the pipeline's outputs.
func (w *Worker) goOn(ctx context.Context, items []*item, outputs [][]tensor.Tensor, errs []error) (keep []bool) {
	keep = make([]bool, len(items))
	for i, it := range items {
		keep[i] = true
		if it.job.Pipeline == nil || errs[i] != nil {
			continue
		}
		final, queued, err := w.nextStep(ctx, it, outputs[i])
		switch {
		case err != nil:
			errs[i] = err
		case queued:
			keep[i] = false
		default:
			outputs[i], it.params = final, nil
		}
	}
	return keep
}

// nextStep runs what follows a pipeline job's model step up to its next
// model step, and queues that; or returns the pipeline's outputs. queued
// also reports a job whose message this settled (handed back when the
// next step could not be queued).
func (w *Worker) nextStep(ctx context.Context, it *item, outputs []tensor.Tensor) (final []tensor.Tensor, queued bool, err error) {
	step := it.job.Pipeline
	start := time.Now()
	defer func() {
		w.opts.Metrics.stepSeconds.WithLabelValues(step.Pipeline, step.Name).Observe(time.Since(start).Seconds())
	}()
	if w.opts.Catalog == nil {
		return nil, false, failStep("step %s: this worker was started without the model repository, which pipeline %s is read from", step.Name, step.Pipeline)
	}
	m, err := w.opts.Catalog.Lookup(step.Pipeline, 0)
	if err == nil && m.Pipeline == nil {
		err = fmt.Errorf("%s is a model now, not a pipeline", step.Pipeline)
	}
	if err != nil {
		return nil, false, failStep("step %s: pipeline %s: %v", step.Name, step.Pipeline, err)
	}
	plan := m.Pipeline
	st, err := pipeline.DecodeState(step.State, step.StateHeaderLen, step.Done, w.opts.Limits)
	if err != nil {
		return nil, false, failStep("step %s: %v", step.Name, err)
	}
	call, final, err := flow.Continue(plan, st, step.Name, outputs, it.params, w.opts.Catalog)
	if err != nil {
		return nil, false, failStep("%v", err)
	}
	if call == nil {
		return final, false, nil
	}
	next, err := call.Job(plan, it.job.ID, st, it.job)
	if err != nil {
		return nil, false, failStep("step %s: %v", call.Step.Name, err)
	}
	w.advance(ctx, it, next)
	return nil, true, nil
}

// advance records a pipeline job's step done and waiting for next, then
// queues next and acknowledges the step's message. The record goes
// first: a message queued for a record not yet advanced could start
// before it and be undone by it. Should the message fail, the step is
// handed back: run again, it queues the next step once more (a repeat
// JetStream drops within its duplicate window).
func (w *Worker) advance(ctx context.Context, it *item, next *jobs.Job) {
	now := time.Now().UTC()
	var from *record.Record
	if it.rec != nil {
		c := *it.rec
		c.Steps = slices.Clone(c.Steps)
		from = &c
	}
	rec, rev, err := w.opts.Queue.Records.UpdateFrom(ctx, it.job.ID, from, it.rev, func(r *record.Record) error {
		if _, err := r.Apply(record.Advance, now, ""); err != nil {
			return err
		}
		s := r.Step(it.job.Pipeline.Name)
		s.Status, s.FinishedAt, s.Attempts, s.Error = record.Succeeded, &now, max(s.Attempts, it.attempt), ""
		r.Step(next.Pipeline.Name).Status = record.Queued
		r.Attempts = 0 // the next step's, from none
		if r.Worker == "" {
			r.Worker = w.opts.Name
		}
		return nil
	})
	switch {
	case errors.Is(err, record.ErrConflict), errors.Is(err, jobs.ErrJobNotFound):
		w.settle(it.msg, done, 0) // ended meanwhile
		return
	case err != nil:
		w.log.Warn("could not record a pipeline step done; it will run again", "job", it.job.ID, "step", it.job.Pipeline.Name, "err", err)
		w.settle(it.msg, handBack, w.backoff(it.attempt))
		return
	}
	if err := w.opts.Queue.PublishStep(ctx, next, rec, rev); err != nil {
		w.log.Warn("could not queue a pipeline job's next step; its step will run again", "job", it.job.ID, "step", next.Pipeline.Name, "err", err)
		w.settle(it.msg, handBack, w.backoff(it.attempt))
		return
	}
	w.opts.Metrics.steps.WithLabelValues(it.job.Pipeline.Pipeline, it.job.Pipeline.Name, string(record.Succeeded)).Inc()
	if err := w.opts.Queue.DropPayload(ctx, it.msg.Headers()); err != nil {
		w.log.Warn("could not delete a pipeline step's payload", "job", it.job.ID, "err", err)
	}
	w.settle(it.msg, done, 0)
}

// startStep notes in r that a pipeline job's model step starts its
// attempt (see start).
func startStep(r *record.Record, it *item, now time.Time) {
	if it.job.Pipeline == nil {
		return
	}
	s := r.Step(it.job.Pipeline.Name)
	s.Status, s.StartedAt, s.FinishedAt, s.Attempts, s.Error = record.Running, &now, nil, it.attempt, ""
}

// endStep notes in r how a pipeline job's last step ended, and returns
// the job's error naming the step (see stepReason).
func endStep(r *record.Record, it *item, status record.Status, reason string, now time.Time) string {
	if it.job.Pipeline == nil {
		return reason
	}
	s := r.Step(it.job.Pipeline.Name)
	s.Status, s.FinishedAt = status, &now
	if s.Attempts < it.attempt {
		s.Attempts = it.attempt
	}
	if status == record.Succeeded || reason == "" {
		return reason
	}
	if afterStep(reason) {
		s.Status = record.Succeeded // the model step ran; what came after failed
		return reason
	}
	s.Error = reason
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
