package consumer

import (
	"fmt"
	"slices"
	"time"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/tensor"
)

// raggedRow is a row of a ragged model's batch: its inputs cut to its
// own length, and its outputs once run.
type raggedRow struct {
	length  int64
	inputs  []tensor.Tensor
	outputs []tensor.Tensor
}

// runRagged runs the rows of items (jobs of a model with config ragged)
// each cut to its own length along the ragged input's axis, rows of
// equal length together (at most the max batch size a run), and
// returns each job's outputs: its rows' joined back, the ragged outputs
// padded with zeros along their axis to the longest of the job's rows.
func (r *runner) runRagged(s session, m *model.Model, items []*item) ([][]tensor.Tensor, time.Duration, error) {
	rg := m.Config.Ragged
	in := slices.IndexFunc(m.Inputs, func(io onnx.IO) bool { return io.Name == rg.Input })
	if in < 0 {
		return nil, 0, fmt.Errorf("ragged input %q is not an input of the model", rg.Input)
	}
	var rows []*raggedRow
	perItem := make([][]*raggedRow, len(items))
	for i, it := range items {
		lengths, err := batching.RowLengths(it.inputs[in], rg.Axis, rg.Value)
		if err != nil {
			return nil, 0, err
		}
		parts, err := batching.Unstack(it.inputs, m.Batched, batching.EachRow(it.rows))
		if err != nil {
			return nil, 0, err
		}
		full := it.inputs[in].Shape[rg.Axis]
		for k, part := range parts {
			length := batching.RaggedLength(lengths[k], full, rg.MultipleOf)
			if part[in], err = batching.Trim(part[in], rg.Axis, length); err != nil {
				return nil, 0, err
			}
			row := &raggedRow{length: length, inputs: part}
			rows = append(rows, row)
			perItem[i] = append(perItem[i], row)
		}
	}
	// Rows of equal length together, shortest first.
	slices.SortStableFunc(rows, func(a, b *raggedRow) int { return int(a.length - b.length) })
	var took time.Duration
	for start := 0; start < len(rows); {
		end := start + 1
		for end < len(rows) && rows[end].length == rows[start].length && end-start < max(r.policy.MaxBatchSize, 1) {
			end++
		}
		group := rows[start:end]
		reqs := make([][]tensor.Tensor, len(group))
		for g, row := range group {
			reqs[g] = row.inputs
		}
		stacked, err := batching.Stack(reqs, m.Batched)
		if err != nil {
			return nil, took, err
		}
		split, dur, err := runSplit(s, stacked, batching.EachRow(len(group)))
		took += dur
		if err != nil {
			return nil, took, err
		}
		for g, row := range group {
			row.outputs = split[g]
		}
		start = end
	}
	outs := make([][]tensor.Tensor, len(items))
	for i, rs := range perItem {
		rowOuts := make([][]tensor.Tensor, len(rs))
		for k, row := range rs {
			rowOuts[k] = row.outputs
		}
		var err error
		if outs[i], err = batching.JoinRagged(rowOuts, rg.Outputs); err != nil {
			return nil, took, fmt.Errorf("job %s: %w", items[i].job.ID, err)
		}
	}
	return outs, took, nil
}

// batchKeyInputs are a job's inputs as its batch key sees them: for a
// ragged model, the ragged input's length along its axis left out, so
// that jobs of different lengths share a batch (their rows run by
// length anyway).
func batchKeyInputs(m *model.Model, inputs []tensor.Tensor) []tensor.Tensor {
	rg := m.Config.Ragged
	if rg == nil {
		return inputs
	}
	i := slices.IndexFunc(m.Inputs, func(io onnx.IO) bool { return io.Name == rg.Input })
	if i < 0 || i >= len(inputs) || rg.Axis >= len(inputs[i].Shape) {
		return inputs
	}
	out := slices.Clone(inputs)
	out[i].Shape = slices.Clone(out[i].Shape)
	out[i].Shape[rg.Axis] = -1
	return out
}
