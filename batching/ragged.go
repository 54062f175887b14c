package batching

import (
	"bytes"
	"fmt"

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
