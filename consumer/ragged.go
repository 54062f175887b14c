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

// raggedRow is a row of a ragged model's batch: whose it is, and its
// inputs cut to its own length.
type raggedRow struct {
	item, row int
	length    int64
	inputs    []tensor.Tensor
	outputs   []tensor.Tensor
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
		ones := make([]int, it.rows)
		for k := range ones {
			ones[k] = 1
		}
		parts := make([][]tensor.Tensor, it.rows) // per row, its inputs
		for k := range parts {
			parts[k] = make([]tensor.Tensor, len(it.inputs))
		}
		for j, t := range it.inputs {
			if !m.Batched[j] {
				for k := range parts {
					parts[k][j] = t
				}
				continue
			}
			split, err := batching.Split([]tensor.Tensor{t}, ones)
			if err != nil {
				return nil, 0, err
			}
			for k := range parts {
				parts[k][j] = split[k][0]
			}
		}
		full := it.inputs[in].Shape[rg.Axis]
		for k := range parts {
			length := max(lengths[k], 1) // a run needs a position
			if q := rg.MultipleOf; q > 1 {
				length = (length + q - 1) / q * q
			}
			length = min(length, full)
			if parts[k][in], err = batching.Trim(parts[k][in], rg.Axis, length); err != nil {
				return nil, 0, err
			}
			row := &raggedRow{item: i, row: k, length: length, inputs: parts[k]}
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
		ones := make([]int, len(group))
		for g, row := range group {
			reqs[g], ones[g] = row.inputs, 1
		}
		stacked, err := batching.Stack(reqs, m.Batched)
		if err != nil {
			return nil, took, err
		}
		split, dur, err := runSplit(s, stacked, ones)
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
		var err error
		if outs[i], err = joinRagged(rg, rs); err != nil {
			return nil, took, fmt.Errorf("job %s: %w", items[i].job.ID, err)
		}
	}
	return outs, took, nil
}

// joinRagged joins a job's rows' outputs back, the ragged outputs padded
// with zeros to the longest row's along their axis.
func joinRagged(rg *model.Ragged, rows []*raggedRow) ([]tensor.Tensor, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	outs := make([][]tensor.Tensor, len(rows))
	for k, row := range rows {
		outs[k] = slices.Clone(row.outputs)
	}
	for o, t := range outs[0] {
		axis, ok := rg.Outputs[t.Name]
		if !ok {
			continue
		}
		longest := int64(0)
		for _, out := range outs {
			if axis < len(out[o].Shape) {
				longest = max(longest, out[o].Shape[axis])
			}
		}
		for _, out := range outs {
			var err error
			if out[o], err = batching.Pad(out[o], axis, longest, 0); err != nil {
				return nil, err
			}
		}
	}
	joined, err := batching.Stack(outs, nil)
	if err != nil {
		return nil, fmt.Errorf("the outputs of its rows, each run at its own length, do not join back (list each output whose length follows the input's in ragged's outputs): %w", err)
	}
	return joined, nil
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
