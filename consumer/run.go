package consumer

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"slices"
	"sync"
	"time"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/flow"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/tensor"
)

// errUnsplittable is a batch run whose outputs did not follow the batch
// dimension, so they cannot be split back per job.
var errUnsplittable = errors.New("outputs cannot be split per job")

// ranBatch is a batch that has run, waiting for its results to be stored.
type ranBatch struct {
	items   []*item
	outputs [][]tensor.Tensor
	errs    []error
}

// runBatch runs a prepared batch in ONNX Runtime, traced.
func (w *Worker) runBatch(items []*item) *ranBatch {
	batch, run := w.traceBatch(items)
	defer batch.End()
	defer run.End()
	return w.runner.run(items)
}

// session runs a model once: an ONNX Runtime session (onnx.Session), or
// in tests a fake whose outputs are easy to check.
type session interface {
	Run(inputs []tensor.Tensor) ([]tensor.Tensor, error)
}

// runner runs a worker's batches by the strategy their jobs need, and
// splits the outputs back per job. It knows nothing of NATS or storage:
// what it is given is jobs' inputs, what it returns is their outputs or
// why each failed.
//
// The strategies: a batch of several jobs is stacked and run once
// (infer, runSplit); a job alone runs whole, in slices of at most the
// max batch size when it is larger (runWhole, runUnsliced); a job of
// requests laid end to end runs them in groups that share a run
// (runLines, runStacked). A batch that fails is bisected down to the jobs
// that fail on their own (runIsolating).
type runner struct {
	name     string // the model, for metrics
	policy   batching.Policy
	sessions map[int64]session
	metrics  *Metrics
	log      *slog.Logger
	// noBatch holds the versions (int64) found at run time to give
	// outputs that do not split back per request.
	noBatch sync.Map
	// buffers lends the buffers batches are stacked into.
	buffers stackBuffers
}

// stackBuffers lends the buffers a batch's inputs are stacked into, taken
// back once its run returns (ONNX Runtime reads inputs during the run
// only, and its outputs are copies). For image-sized inputs, stacking into
// new buffers made a tenth of the server's allocations, and the garbage
// they made set the pace of collections. Sizes are rounded up to a power
// of two, so that batches of nearby sizes share buffers.
type stackBuffers struct{ pool sync.Pool }

func (p *stackBuffers) get(n int) []byte {
	if b, ok := p.pool.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:0]
	}
	return make([]byte, 0, 1<<bits.Len(uint(max(n, 1)-1)))
}

func (p *stackBuffers) put(b []byte) { p.pool.Put(&b) }

// run runs a batch. A batch that fails is split and its halves run
// again, down to single jobs, so that one bad request fails alone and
// the rest of its batch succeeds.
func (r *runner) run(items []*item) *ranBatch {
	ran := &ranBatch{items: items, outputs: make([][]tensor.Tensor, len(items)), errs: make([]error, len(items))}
	if len(items) == 1 && items[0].empty {
		ran.outputs[0] = flow.EmptyOutputs(items[0].model)
		return ran
	}
	r.runIsolating(items, ran.outputs, ran.errs)
	return ran
}

// runIsolating runs items as one batch and fills in each job's outputs;
// when the run fails it bisects, so that errs ends up set only for jobs
// that fail on their own.
func (r *runner) runIsolating(items []*item, outputs [][]tensor.Tensor, errs []error) {
	m := items[0].model
	out, dur, err := r.infer(m, items)
	if err == nil {
		rows := 0
		for _, it := range items {
			rows += it.rows
		}
		r.metrics.batchSize.WithLabelValues(r.name).Observe(float64(rows))
		r.metrics.inference.WithLabelValues(r.name).Observe(dur.Seconds())
		for i, it := range items {
			outputs[i], errs[i] = trim(it, out[i])
		}
		return
	}
	if errors.Is(err, errUnsplittable) {
		for i := range items {
			r.runIsolating(items[i:i+1], outputs[i:i+1], errs[i:i+1])
		}
		return
	}
	r.metrics.failedRuns.WithLabelValues(r.name).Inc()
	if len(items) == 1 {
		r.log.Warn("job failed in ONNX Runtime", "job", items[0].job.ID, "version", m.Version, "err", err)
		errs[0] = err
		return
	}
	r.log.Warn("batch failed; splitting it to find the jobs that fail", "version", m.Version, "jobs", len(items), "err", err)
	half := len(items) / 2
	r.runIsolating(items[:half], outputs[:half], errs[:half])
	r.runIsolating(items[half:], outputs[half:], errs[half:])
}

// infer runs the batch's stacked inputs and returns each job's outputs.
func (r *runner) infer(m *model.Model, items []*item) ([][]tensor.Tensor, time.Duration, error) {
	s := r.sessions[m.Version]
	if s == nil {
		return nil, 0, fmt.Errorf("version %d is not loaded", m.Version)
	}
	if m.Config.Ragged != nil && !slices.ContainsFunc(items, func(it *item) bool { return it.lines != nil }) {
		return r.runRagged(s, m, items)
	}
	if len(items) == 1 {
		start := time.Now()
		var out []tensor.Tensor
		var err error
		it := items[0]
		if it.lines != nil {
			out, err = r.runLines(s, it)
		} else if out, err = r.runWhole(s, m, it.inputs, it.rows); err != nil && r.unstack(it) {
			r.log.Warn("a job packed from several requests failed in ONNX Runtime; running them one at a time to find those at fault", "job", it.job.ID, "requests", len(it.lines), "err", err)
			out, err = r.runLines(s, it)
		}
		return [][]tensor.Tensor{out}, time.Since(start), err
	}
	reqs := make([][]tensor.Tensor, len(items))
	rows := make([]int, len(items))
	for i, it := range items {
		reqs[i], rows[i] = it.inputs, it.rows
	}
	var lent [][]byte
	in, err := batching.StackInto(reqs, m.Batched, func(n int) []byte {
		b := r.buffers.get(n)
		lent = append(lent, b)
		return b
	})
	defer func() {
		for _, b := range lent {
			r.buffers.put(b)
		}
	}()
	if err != nil {
		return nil, 0, err
	}
	split, dur, err := runSplit(s, in, rows)
	if errors.Is(err, errUnsplittable) {
		// The model's metadata promised outputs batched along the first
		// dimension, and the run says otherwise: stop batching this
		// version. Its jobs are run one at a time from here on.
		if _, was := r.noBatch.LoadOrStore(m.Version, true); !was {
			r.log.Warn("model outputs do not follow the batch dimension; running its jobs one at a time from now on", "version", m.Version, "err", err)
		}
	}
	return split, dur, err
}

// runSplit runs stacked inputs once and splits the outputs back into
// parts of rows, returning how long the run took. An error wrapping
// errUnsplittable says the outputs did not follow the batch dimension.
func runSplit(s session, in []tensor.Tensor, rows []int) ([][]tensor.Tensor, time.Duration, error) {
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
func (r *runner) runWhole(s session, m *model.Model, in []tensor.Tensor, rows int) ([]tensor.Tensor, error) {
	size := r.policy.MaxBatchSize
	if rows <= size || !m.Sliceable() || r.unbatched(m) {
		return s.Run(in)
	}
	var cuts []int
	for left := rows; left > 0; left -= size {
		cuts = append(cuts, min(left, size))
	}
	parts, err := batching.Split(in, cuts)
	if err != nil {
		return r.runUnsliced(s, m, in, rows, err)
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
		return r.runUnsliced(s, m, in, rows, err)
	}
	return joined, nil
}

// unstack cuts a job stacked from several requests back into them, as
// lines to run one at a time; inputs shared by the job go to each. It
// reports false for a job that cannot be: one request, or padded inputs
// (whose outputs are trimmed as a whole).
func (r *runner) unstack(it *item) bool {
	if len(it.lineRows) < 2 || it.length != 0 {
		return false
	}
	lines, err := batching.Unstack(it.inputs, it.model.Batched, it.lineRows)
	if err != nil {
		r.log.Warn("a packed job's rows do not match its requests", "job", it.job.ID, "err", err)
		return false
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
func (r *runner) runLines(s session, it *item) ([]tensor.Tensor, error) {
	outs := make([][]tensor.Tensor, len(it.lines))
	lines := batching.Lines{Errors: map[int]string{}}
	alone := func(l int) {
		out, err := s.Run(it.lines[l])
		if err != nil {
			r.metrics.failedRuns.WithLabelValues(r.name).Inc()
			r.log.Warn("a request of a packed job failed in ONNX Runtime", "job", it.job.ID, "request", l+1, "of", len(it.lines), "err", err)
			lines.Errors[l] = err.Error()
			return
		}
		outs[l] = tensor.Select(out, it.job.Request.Outputs)
	}
	for _, group := range r.lineGroups(it) {
		if len(group.lines) == 1 || !r.runStacked(s, it, group, outs) {
			for _, l := range group.lines {
				alone(l)
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
	for l := range lines.Errors {
		outs[l] = make([]tensor.Tensor, len(first))
		for i, t := range first {
			outs[l][i] = tensor.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: []int64{0}}
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
func (r *runner) lineGroups(it *item) []*lineGroup {
	m := it.model
	batch := m.Batchable && m.Sliceable() && !r.unbatched(m)
	var groups []*lineGroup
	open := map[string]*lineGroup{} // key to the group still open for it
	for l, line := range it.lines {
		if !batch {
			groups = append(groups, &lineGroup{lines: []int{l}})
			continue
		}
		in, length, err := padInputs(m, line)
		if err != nil {
			in, length = line, 0 // runs alone, unpadded, below
		}
		key := batching.Key(in, m.Batched)
		g := open[key]
		if g == nil || g.rows+it.lineRows[l] > r.policy.MaxBatchSize {
			g = &lineGroup{}
			open[key] = g
			groups = append(groups, g)
		}
		g.lines, g.inputs, g.lengths = append(g.lines, l), append(g.inputs, in), append(g.lengths, length)
		g.rows += it.lineRows[l]
	}
	return groups
}

// runStacked runs a group of a job's requests as one run, splits the
// outputs back and trims them to each request's own length. It reports
// false, having set nothing, when the run fails or its outputs do not
// split, so that the requests run one at a time.
func (r *runner) runStacked(s session, it *item, g *lineGroup, outs [][]tensor.Tensor) bool {
	rows := make([]int, len(g.lines))
	for i, l := range g.lines {
		rows[i] = it.lineRows[l]
	}
	in, err := batching.Stack(g.inputs, it.model.Batched)
	if err != nil {
		return false
	}
	parts, _, err := runSplit(s, in, rows)
	if err != nil {
		if !errors.Is(err, errUnsplittable) {
			r.metrics.failedRuns.WithLabelValues(r.name).Inc()
		}
		return false
	}
	got := make([][]tensor.Tensor, len(g.lines))
	for i := range g.lines {
		if got[i], err = trimOutputs(it.model, g.lengths[i], parts[i]); err != nil {
			return false
		}
	}
	for i, l := range g.lines {
		outs[l] = tensor.Select(got[i], it.job.Request.Outputs)
	}
	return true
}

// runUnsliced runs a job that could not be cut into slices, or whose
// slices' outputs could not be joined back (one map per run, say), whole:
// unless the model's config holds every run to one row, a bound that a
// whole job would break.
func (r *runner) runUnsliced(s session, m *model.Model, in []tensor.Tensor, rows int, why error) ([]tensor.Tensor, error) {
	if !m.Batchable {
		return nil, fmt.Errorf("a job of %d rows must run a row at a time (max_batch_size is 1), and it cannot be cut into rows and joined back: %w", rows, why)
	}
	return s.Run(in)
}

// unbatched reports whether batching was switched off for m at run time.
func (r *runner) unbatched(m *model.Model) bool {
	_, ok := r.noBatch.Load(m.Version)
	return ok
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
