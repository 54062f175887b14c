package consumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/flow"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/storage"
	"github.com/inferq/inferq/tensor"
)

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
			w.settle(it.msg, handBack, 0)
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
		w.settle(m, drop, 0)
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
	if job.Pipeline != nil && job.Pipeline.Prepare {
		err := f.prepared // run in the pump
		if f.job == nil {
			err = w.prepare(it)
		} else {
			it.state = f.state
		}
		if err != nil {
			w.finishFailed(ctx, it, err)
			return
		}
	}
	it.model, err = w.opts.Family.Lookup(job.Version)
	if err != nil && job.Routed {
		// The traffic split picked a version that is gone now: the
		// default answers, as for a job that named none.
		w.log.Warn("the version the traffic split picked is not loaded; the default version answers", "job", job.ID, "version", job.Version, "err", err)
		it.model, err = w.opts.Family.Lookup(0)
	}
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
	if it.lines == nil && !it.empty && it.model.Batchable && !w.runner.unbatched(it.model) {
		key += "|" + batching.Key(batchKeyInputs(it.model, it.inputs), it.model.Batched)
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
	m, req, packed := it.model, it.job.Request, it.job.Lines
	var err error
	if it.job.Pipeline != nil && packed == nil {
		// A pipeline step of zero rows is answered without a run (see
		// flow.EmptyOutputs).
		if in, oerr := m.OrderedInputs(req); oerr == nil {
			if rows, _ := flow.Rows(m, in); rows == 0 {
				it.inputs, it.empty = in, true
				return nil
			}
		}
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

// errBadObject is an input object that cannot be the input it stands for.
var errBadObject = errors.New("bad input object")

// readInputs reads the inputs a job gives by reference from storage. A
// missing object, or one whose size does not fit the input's shape, is an
// error the job fails with; others are storage trouble, to retry.
func (w *Worker) readInputs(ctx context.Context, job *jobs.Job) (*pipeline.State, error) {
	if err := w.readObjects(ctx, job.Model, job.Request.Inputs); err != nil {
		return nil, err
	}
	p := job.Pipeline
	if p == nil || !p.Prepare || len(p.State) == 0 {
		return nil, nil
	}
	// A pipeline job's first step, not prepared yet: the objects are
	// its inputs, in its state, under the pipeline's inputs folder. The
	// state, decoded with them read, is what the operations before the
	// step (prepare) take.
	st, err := pipeline.DecodeState(p.State, p.StateHeaderLen, p.Done, w.opts.Limits)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadObject, err)
	}
	values := make([]tensor.Tensor, 0, len(st.Values))
	refs := make([]string, 0, len(st.Values))
	for ref, t := range st.Values {
		if t.Object != "" {
			values, refs = append(values, t), append(refs, ref)
		}
	}
	if err := w.readObjects(ctx, p.Pipeline, values); err != nil {
		return nil, err
	}
	for i, ref := range refs {
		values[i].Object = ""
		st.Values[ref] = values[i]
	}
	return st, nil
}

// openObject opens an input object of a job of model: a key under the
// model's inputs folder of the store, or an s3:// URL of an allowed
// source.
func (w *Worker) openObject(ctx context.Context, model, ref string) (io.ReadCloser, error) {
	if storage.IsURL(ref) {
		if w.opts.Sources == nil {
			return nil, fmt.Errorf("%w: this worker reads no s3:// sources (--batch-sources)", storage.ErrSourceRefused)
		}
		return w.opts.Sources.OpenURL(ctx, ref)
	}
	if err := jobs.CheckInputObject(model, ref); err != nil {
		return nil, err
	}
	return w.opts.Results.Get(ctx, ref)
}

// readObjects reads the inputs given by reference among inputs, each
// under model's inputs folder. A BYTES input of one element whose
// object is not that element in the binary extension's form (a length,
// then the bytes) is the object itself: a file (a picture, a WAV) as it
// was stored.
func (w *Worker) readObjects(ctx context.Context, model string, inputs []tensor.Tensor) error {
	for i := range inputs {
		t := &inputs[i]
		if t.Object == "" {
			continue
		}
		rc, err := w.openObject(ctx, model, t.Object)
		if err != nil {
			return fmt.Errorf("input %q: object %s: %w", t.Name, t.Object, err)
		}
		t.Data, err = io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("input %q: read object %s: %w", t.Name, t.Object, err)
		}
		if t.Datatype == tensor.Bytes && tensor.NumElements(t.Shape) == 1 && t.CheckData() != nil {
			t.Data = tensor.AppendBytesElement(nil, t.Data)
		}
		if err := t.CheckData(); err != nil {
			return fmt.Errorf("%w: input %q: object %s holds %d bytes, which do not fit %s %s: %v", errBadObject, t.Name, t.Object, len(t.Data), t.Datatype, tensor.FormatShape(t.Shape), err)
		}
	}
	return nil
}
