package consumer

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// A shadow worker (Options.Shadow) runs the shadow runs of one version
// of its model: jobs that another version answered, queued on this
// version's own queue by the worker that answered them
// (publishShadows), with the answer. It writes no record, result,
// announcement or dead letter: a shadow run's outputs go to prediction
// monitoring alone, with their agreement with the answer, and a run that
// fails is counted and dropped.

// publishShadows queues the shadow runs of the jobs among outs that
// succeeded and name shadow versions, once they are acknowledged; never
// waited for.
func (w *Worker) publishShadows(outs []outcome, outputs map[*item][]tensor.Tensor) {
	var futures []jetstream.PubAckFuture
	for _, o := range outs {
		it := o.it
		if o.status != record.Succeeded || len(it.job.Shadows) == 0 || it.job.Pipeline != nil || it.model == nil {
			continue
		}
		answer := o.response // the stored JSON, when the job's result is
		if len(answer) == 0 {
			answer = it.response(w.name, outputs[it]).AppendJSON(nil)
		}
		fs, err := w.opts.Queue.PublishShadows(it.job, it.model.VersionString(), answer)
		if err != nil {
			w.log.Warn("a shadow run could not be queued", "job", it.job.ID, "err", err)
			w.opts.Metrics.shadowDropped.WithLabelValues(w.name).Add(float64(len(it.job.Shadows) - len(fs)))
		}
		futures = append(futures, fs...)
	}
	if len(futures) == 0 {
		return
	}
	go func() { // counted, never waited for
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				w.log.Warn("a shadow run could not be queued", "err", err)
				w.opts.Metrics.shadowDropped.WithLabelValues(w.name).Inc()
			}
		}
	}()
}

// finishShadows ends a group of shadow runs: the succeeded ones compared
// with their answers and observed, every message acknowledged.
func (w *Worker) finishShadows(items []*item, outputs [][]tensor.Tensor, errs []error) {
	for i, it := range items {
		if errs[i] != nil {
			w.shadowFailed(it, errs[i])
			continue
		}
		w.opts.Metrics.shadowRuns.WithLabelValues(w.name, it.model.VersionString(), "succeeded").Inc()
		w.settle(it.msg, done, 0)
	}
	w.watch.observeShadows(items, outputs, errs)
}

// shadowFailed counts and drops a shadow run that failed: the job it
// shadows was answered, and stays as it is.
func (w *Worker) shadowFailed(it *item, err error) {
	version := ""
	if it.model != nil {
		version = it.model.VersionString()
	}
	w.log.Debug("shadow run failed", "job", it.job.ID, "version", version, "err", err)
	w.opts.Metrics.shadowRuns.WithLabelValues(w.name, version, "failed").Inc()
	w.settle(it.msg, done, 0)
}

// shadowConsumers is the consumer of a shadow worker's version, and an
// empty second source for the pump's preference of high priority.
func (w *Worker) shadowConsumer(ctx context.Context, maxPending int) (jetstream.Consumer, error) {
	return w.opts.Queue.ShadowConsumer(ctx, w.name, w.opts.Shadow, jobs.ConsumerOptions{AckWait: w.opts.AckWait, MaxAckPending: maxPending})
}
