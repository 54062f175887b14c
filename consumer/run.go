package consumer

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
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
