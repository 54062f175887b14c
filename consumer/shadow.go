package consumer

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
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
// succeeded and name shadow versions, a message per version for the
// group (jobs.PublishShadows), once they are acknowledged; never waited
// for.
func (w *Worker) publishShadows(outs []outcome, outputs map[*item][]tensor.Tensor) {
	var runs []jobs.ShadowRun
	for _, o := range outs {
		it := o.it
		if o.status != record.Succeeded || len(it.job.Shadows) == 0 || it.job.Pipeline != nil || it.model == nil {
			continue
		}
		answer := o.response // the stored JSON, when the job's result is
		if len(answer) == 0 {
			answer = it.response(w.name, outputs[it]).AppendJSON(nil)
		}
		runs = append(runs, jobs.ShadowRun{Job: it.job, Answering: it.model.VersionString(), Answer: answer})
	}
	if len(runs) == 0 {
		return
	}
	queued, dropped, err := w.opts.Queue.PublishShadows(runs)
	if err != nil {
		w.log.Warn("shadow runs could not be queued", "runs", dropped, "err", err)
		w.opts.Metrics.shadowDropped.WithLabelValues(w.name).Add(float64(dropped))
	}
	if len(queued) == 0 {
		return
	}
	go func() { // counted, never waited for
		for _, q := range queued {
			select {
			case <-q.Ack.Ok():
			case err := <-q.Ack.Err():
				w.log.Warn("shadow runs could not be queued", "runs", q.Runs, "err", err)
				w.opts.Metrics.shadowDropped.WithLabelValues(w.name).Add(float64(q.Runs))
			}
		}
	}()
}

// unpackShadows makes a message of each run of a shadow pack, settled
// with the pack (shadowPack); a message of one run is returned as it
// is. A pack that cannot be read is dropped, its runs counted as failed.
func (w *Worker) unpackShadows(m jetstream.Msg) []jetstream.Msg {
	headers, datas, ok, err := jobs.UnpackShadows(m.Headers(), m.Data())
	if !ok {
		return []jetstream.Msg{m}
	}
	if err != nil {
		w.log.Warn("dropping a shadow pack that cannot be read", "err", err)
		w.opts.Metrics.shadowRuns.WithLabelValues(w.name, strconv.FormatInt(w.opts.Shadow, 10), "failed").Inc()
		w.settle(m, drop, 0)
		return nil
	}
	p := &shadowPack{msg: m, left: len(headers)}
	w.held.weigh(m, len(headers))
	runs := make([]jetstream.Msg, len(headers))
	for i := range headers {
		runs[i] = &packedRun{Msg: m, pack: p, header: headers[i], data: datas[i]}
	}
	return runs
}

// shadowPack is a message of several shadow runs: it is acknowledged
// once every run is settled, or handed back (after the longest delay
// asked) if any run was; a run handed back runs again with its pack,
// which for a shadow run only adds to its statistics.
type shadowPack struct {
	msg   jetstream.Msg
	mu    sync.Mutex
	left  int
	back  bool
	delay time.Duration
}

func (p *shadowPack) settle(back bool, delay time.Duration) error {
	p.mu.Lock()
	p.left--
	if back {
		p.back, p.delay = true, max(p.delay, delay)
	}
	last, back, delay := p.left == 0, p.back, p.delay
	p.mu.Unlock()
	switch {
	case !last:
		return nil
	case back && delay > 0:
		return p.msg.NakWithDelay(delay)
	case back:
		return p.msg.Nak()
	}
	return p.msg.Ack()
}

// packedRun is a run of a shadow pack as a message of its own: its
// headers and data, settled with its pack.
type packedRun struct {
	jetstream.Msg
	pack    *shadowPack
	header  nats.Header
	data    []byte
	settled atomic.Bool
	ran     atomic.Bool // marked ran in the worker's held set
}

func (r *packedRun) Headers() nats.Header { return r.header }
func (r *packedRun) Data() []byte         { return r.data }

func (r *packedRun) end(back bool, delay time.Duration) error {
	if r.settled.Swap(true) {
		return nil
	}
	return r.pack.settle(back, delay)
}

func (r *packedRun) Ack() error                         { return r.end(false, 0) }
func (r *packedRun) DoubleAck(context.Context) error    { return r.end(false, 0) }
func (r *packedRun) Nak() error                         { return r.end(true, 0) }
func (r *packedRun) NakWithDelay(d time.Duration) error { return r.end(true, d) }
func (r *packedRun) Term() error                        { return r.end(false, 0) }
func (r *packedRun) TermWithReason(reason string) error { return r.end(false, 0) }

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
