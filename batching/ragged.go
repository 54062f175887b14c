package batching

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/inferq/inferq/tensor"
)

// RowLengths returns, for each row of t (its first axis), its own length
// along axis: one past the last position where some entry is not value,
// the padding; 0 for a row all padding. t is of a fixed-size type.
func RowLengths(t tensor.Tensor, axis int, value float64) ([]int64, error) {
	if axis < 1 || axis >= len(t.Shape) {
		return nil, fmt.Errorf("row lengths of %q: axis %d is not an axis after the first of shape %s", t.Name, axis, tensor.FormatShape(t.Shape))
	}
	if t.Datatype == tensor.Bytes {
		return nil, fmt.Errorf("row lengths of %q: BYTES tensors are not padded with a value", t.Name)
	}
	size := int64(t.Datatype.Size())
	rows, n := t.Shape[0], t.Shape[axis]
	between := tensor.NumElements(t.Shape[1:axis])       // per row, before the axis
	inner := tensor.NumElements(t.Shape[axis+1:]) * size // bytes per position
	if int64(len(t.Data)) != rows*between*n*inner {
		return nil, fmt.Errorf("row lengths of %q: %d bytes of data for shape %s", t.Name, len(t.Data), tensor.FormatShape(t.Shape))
	}
	pad := bytes.Repeat(tensor.AppendNumber(nil, t.Datatype, value), int(inner/size))
	out := make([]int64, rows)
	for r := range rows {
		for b := range between {
			block := t.Data[(r*between+b)*n*inner : (r*between+b+1)*n*inner]
			// Only positions past the longest found so far can add to it.
			for p := n - 1; p >= out[r]; p-- {
				if !bytes.Equal(block[p*inner:(p+1)*inner], pad) {
					out[r] = p + 1
					break
				}
			}
		}
	}
	return out, nil
}

// RaggedLength is the length a row of own length runs at, in a request
// of length full: at least 1 (a run needs a position), rounded up to a
// multiple of multipleOf (0 or 1: exact), never past full.
func RaggedLength(own, full, multipleOf int64) int64 {
	n := max(own, 1)
	if multipleOf > 1 {
		n = (n + multipleOf - 1) / multipleOf * multipleOf
	}
	return min(n, full)
}

// JoinRagged stacks the outputs of a request's rows, each run at its own
// length, back into the request's outputs: the outputs named in axes are
// first padded with zeros along their axis to the longest row's. Other
// outputs must have the same shape for every row.
func JoinRagged(rows [][]tensor.Tensor, axes map[string]int) ([]tensor.Tensor, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	outs := make([][]tensor.Tensor, len(rows))
	for k, row := range rows {
		outs[k] = slices.Clone(row)
	}
	for o, t := range outs[0] {
		axis, ok := axes[t.Name]
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
			if out[o], err = Pad(out[o], axis, longest, 0); err != nil {
				return nil, err
			}
		}
	}
	joined, err := Stack(outs, nil)
	if err != nil {
		return nil, fmt.Errorf("the outputs of its rows, each run at its own length, do not join back (list each output whose length follows the input's in ragged's outputs): %w", err)
	}
	return joined, nil
}
