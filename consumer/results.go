package consumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
	"github.com/oklog/ulid/v2"
	"go.opentelemetry.io/otel/codes"
	"golang.org/x/sync/errgroup"
)

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
	if w.opts.Shadow > 0 {
		w.finishShadows(items, outputs, errs)
		return
	}
	if w.abandoned.Load() {
		return // handed back at the drain timeout
	}
	if keep := w.goOn(ctx, items, outputs, errs); slices.Contains(keep, false) {
		items, outputs, errs = kept(items, keep), kept(outputs, keep), kept(errs, keep)
	}
	refs, bodies := w.storeResults(ctx, items, outputs, errs)
	var ended []outcome
	for i, it := range items {
		var failed stepFailed
		switch {
		case errors.As(errs[i], &failed):
			ended = append(ended, outcome{it: it, status: record.Failed, reason: failed.Error()})
		case errors.Is(errs[i], errResultTooLarge):
			// Another run would make the same result: no retry.
			ended = append(ended, outcome{it: it, status: record.Failed, reason: errs[i].Error()})
		case errs[i] != nil:
			if o, ok := w.retryOrFail(ctx, it, errs[i]); !ok {
				ended = append(ended, o)
			}
		case refs[i] != nil:
			if refs[i].HeaderLength > 0 {
				// Announced (and captured) as JSON.
				bodies[i] = inlineJSON(it.response(w.name, outputs[i]), refs[i].Length)
			}
			body := bodies[i]
			if it.job.Record != nil && it.job.Record.Batch != "" {
				body = nil // batch output is read from storage, not streamed
			}
			ended = append(ended, outcome{it: it, status: record.Succeeded, result: refs[i], response: body})
		}
	}
	w.completeAll(ctx, ended)
	w.watch.observe(items, outputs, refs, bodies)
	if slices.ContainsFunc(items, func(it *item) bool { return len(it.job.Shadows) > 0 }) {
		byItem := make(map[*item][]tensor.Tensor, len(items))
		for i, it := range items {
			byItem[it] = outputs[i]
		}
		w.publishShadows(ended, byItem)
	}
}

// storeResults writes the results of the succeeded jobs among items and
// returns where each is, with its encoding. In the batch layout (the
// default) they go in one object, a JSON line per job; in the job layout,
// an object per job, keyed by job id. A result that cannot be stored (an
// outage) sends its job back to the queue without counting the attempt,
// and the worker pauses before the next write: a result is never lost,
// and no job fails, because storage was briefly away.
func (w *Worker) storeResults(ctx context.Context, items []*item, outputs [][]tensor.Tensor, errs []error) ([]*record.ResultRef, [][]byte) {
	refs := make([]*record.ResultRef, len(items))
	bodies := make([][]byte, len(items))
	var buf []byte
	for i, it := range items {
		if errs[i] != nil {
			continue
		}
		resp := it.response(w.name, outputs[i])
		start := len(buf)
		var headerLen int
		if req := it.job.Request; req.AnyBinary() && (it.rec == nil || it.rec.Batch == "") {
			// Raw bytes as ONNX Runtime gave them, no conversion. (A batch
			// file's output is JSON Lines, whatever its lines asked.)
			buf, headerLen = resp.AppendBinary(buf, req.WantsBinary)
		} else {
			buf = resp.AppendJSON(buf)
		}
		if limit := w.opts.MaxResultBytes; limit > 0 && int64(len(buf)-start) > limit {
			errs[i] = fmt.Errorf("%w: its result is %d bytes, more than this server keeps for one job (--max-result-bytes %d); ask for fewer outputs or rows a job", errResultTooLarge, len(buf)-start, limit)
			buf = buf[:start]
			continue
		}
		refs[i] = &record.ResultRef{Offset: int64(start), Length: int64(len(buf) - start), HeaderLength: int64(headerLen)}
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
				refs[i] = &record.ResultRef{Key: key, Length: refs[i].Length, Whole: true, HeaderLength: refs[i].HeaderLength}
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

// kept is the elements of s whose keep is true.
func kept[T any](s []T, keep []bool) []T {
	out := s[:0:0]
	for i, v := range s {
		if keep[i] {
			out = append(out, v)
		}
	}
	return out
}

// errResultTooLarge fails a job whose result is past Options.MaxResultBytes.
var errResultTooLarge = errors.New("result too large")

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
		w.complete(ctx, it, record.Failed, fmt.Sprintf("its result could not be stored; gave up after %d deliveries: %v", w.opts.MaxHandBacks, cause), nil, nil)
		return
	}
	if it.unmarked {
		// Stored as queued still: nothing to undo.
		w.settle(it.msg, handBack, delay)
		return
	}
	_, _, err := w.opts.Queue.Records.UpdateFrom(ctx, it.job.ID, it.rec, it.rev, func(r *record.Record) error {
		if _, err := r.Apply(record.Requeue, time.Now().UTC(), ""); err != nil {
			return err
		}
		r.Attempts = max(0, r.Attempts-1)
		return nil
	})
	if err != nil && !errors.Is(err, record.ErrConflict) {
		w.log.Warn("could not hand a job back; it will be redelivered", "job", it.job.ID, "err", err)
	}
	w.settle(it.msg, handBack, delay)
}

// storedResponse reads back the response of a succeeded job small enough
// to travel inline in its announcement, so that an announcement made again
// carries it as the first would have; nil for any other job, or when it
// cannot be read (the announcement then points at result_url alone).
func (w *Worker) storedResponse(ctx context.Context, rec *record.Record) []byte {
	r := rec.Result
	if rec.Status != record.Succeeded || r == nil || r.Length > jobs.MaxInlineResponse {
		return nil
	}
	b, err := w.readRange(ctx, r)
	if err != nil {
		w.log.Warn("could not read a finished job's result to announce it again", "job", rec.ID, "err", err)
		return nil
	}
	if r.HeaderLength > 0 {
		resp, err := tensor.DecodeBinaryResponse(b, int(r.HeaderLength))
		if err != nil {
			w.log.Warn("could not decode a finished job's result to announce it again", "job", rec.ID, "err", err)
			return nil
		}
		return inlineJSON(resp, r.Length)
	}
	return b
}

// inlineJSON is a binary result's response as JSON, for its announcement,
// which carries responses inline as JSON: followers of the results see
// the same whatever form the client asked the result in. Nil for a
// result whose JSON would be too large to inline anyway (JSON numbers
// take three to five times their binary bytes), which is then not
// converted at all.
func inlineJSON(resp *tensor.Response, binaryLength int64) []byte {
	if binaryLength > jobs.MaxInlineResponse/3 {
		return nil
	}
	return resp.AppendJSON(nil)
}

// readRange reads a stored result whole.
func (w *Worker) readRange(ctx context.Context, r *record.ResultRef) ([]byte, error) {
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

// response is the V2 response of the job, from the outputs of its run:
// those it asked for, in the model's order.
func (it *item) response(model string, outputs []tensor.Tensor) *tensor.Response {
	if p := it.job.Pipeline; p != nil {
		return &tensor.Response{ModelName: p.Pipeline, ModelVersion: "1", ID: it.job.ID, Parameters: it.params, Outputs: tensor.Select(outputs, p.Outputs)}
	}
	return &tensor.Response{ModelName: model, ModelVersion: it.model.VersionString(), ID: it.job.ID, Parameters: it.params, Outputs: tensor.Select(outputs, it.job.Request.Outputs)}
}
