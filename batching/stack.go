package batching

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/inferq/inferq/tensor"
)

// Key is the grouping key of a request: requests with equal keys stack.
// inputs are in the model's input order; batched says which of them are
// stacked along the first dimension (nil: all). For those the key holds
// the shape without the batch dimension; the others (scalars, state) are
// shared by the whole batch, so the key holds their shape and a digest of
// their values, and only requests whose shared inputs are identical are
// grouped.
func Key(inputs []tensor.Tensor, batched []bool) string {
	var b strings.Builder
	for i := range inputs {
		if i > 0 {
			b.WriteByte(';')
		}
		s := inputs[i].Shape
		if batched == nil || batched[i] {
			if len(s) > 0 {
				s = s[1:]
			}
			b.WriteString(tensor.FormatShape(s))
			continue
		}
		b.WriteString(tensor.FormatShape(s))
		b.WriteByte('=')
		if d := inputs[i].Data; len(d) <= 32 {
			b.WriteString(hex.EncodeToString(d))
		} else {
			sum := sha256.Sum256(d)
			b.WriteString(hex.EncodeToString(sum[:]))
		}
	}
	return b.String()
}

// Stack concatenates requests along the first dimension. Each request
// lists its inputs in the same order; all requests must agree on every
// input's datatype and on every dimension but the first. Inputs that
// batched marks false are not stacked: every request must carry the same
// value, which the batch takes once. batched nil stacks every input.
func Stack(requests [][]tensor.Tensor, batched []bool) ([]tensor.Tensor, error) {
	return StackInto(requests, batched, func(n int) []byte { return make([]byte, 0, n) })
}

// StackInto is Stack taking the buffer of each input it stacks from
// buf(n), which returns an empty slice with room for n bytes. Inputs it
// does not stack (one request, or an input batched marks false) are the
// requests' own, not from buf.
func StackInto(requests [][]tensor.Tensor, batched []bool, buf func(n int) []byte) ([]tensor.Tensor, error) {
	if len(requests) == 0 {
		return nil, fmt.Errorf("stack: no requests")
	}
	if len(requests) == 1 {
		return requests[0], nil
	}
	first := requests[0]
	out := make([]tensor.Tensor, len(first))
	for i := range first {
		if batched != nil && !batched[i] {
			for r, req := range requests {
				t := &req[i]
				if t.Datatype != first[i].Datatype || !slices.Equal(t.Shape, first[i].Shape) || !bytes.Equal(t.Data, first[i].Data) {
					return nil, fmt.Errorf("stack: input %q is shared by the batch, but request %d carries a different value than request 0", t.Name, r)
				}
			}
			out[i] = first[i]
			continue
		}
		size, rows := 0, int64(0)
		for r, req := range requests {
			if len(req) != len(first) {
				return nil, fmt.Errorf("stack: request %d has %d inputs, request 0 has %d", r, len(req), len(first))
			}
			t := &req[i]
			if t.Datatype != first[i].Datatype || len(t.Shape) == 0 || !slices.Equal(t.Shape[1:], first[i].Shape[1:]) {
				return nil, fmt.Errorf("stack: input %q of request %d (%s %s) does not stack with request 0 (%s %s)",
					t.Name, r, t.Datatype, tensor.FormatShape(t.Shape), first[i].Datatype, tensor.FormatShape(first[i].Shape))
			}
			size += len(t.Data)
			rows += t.Shape[0]
		}
		data := buf(size)
		for _, req := range requests {
			data = append(data, req[i].Data...)
		}
		shape := slices.Clone(first[i].Shape)
		shape[0] = rows
		out[i] = tensor.Tensor{Name: first[i].Name, Datatype: first[i].Datatype, Shape: shape, Data: data}
	}
	return out, nil
}

// Split cuts each output along its first dimension into consecutive
// pieces of rows[0], rows[1], ... rows, one slice of outputs per request.
// The pieces alias the outputs' data.
func Split(outputs []tensor.Tensor, rows []int) ([][]tensor.Tensor, error) {
	total := 0
	for _, r := range rows {
		total += r
	}
	out := make([][]tensor.Tensor, len(rows))
	for i := range out {
		out[i] = make([]tensor.Tensor, len(outputs))
	}
	for o := range outputs {
		t := &outputs[o]
		if len(t.Shape) == 0 || t.Shape[0] != int64(total) {
			return nil, fmt.Errorf("split: output %q has shape %s, but the batch has %d rows", t.Name, tensor.FormatShape(t.Shape), total)
		}
		offsets, err := rowOffsets(t, total)
		if err != nil {
			return nil, fmt.Errorf("split: output %q: %w", t.Name, err)
		}
		at := 0
		for i, r := range rows {
			shape := slices.Clone(t.Shape)
			shape[0] = int64(r)
			data := t.Data[offsets[at]:offsets[at+r]]
			out[i][o] = tensor.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: shape, Data: data[:len(data):len(data)]}
			at += r
		}
	}
	return out, nil
}

// Unstack is Stack's inverse for one stacked request: its inputs cut
// into requests of rows[0], rows[1], ... rows; an input batched marks
// false (shared by the requests) goes to each whole. The pieces alias
// the inputs' data.
func Unstack(inputs []tensor.Tensor, batched []bool, rows []int) ([][]tensor.Tensor, error) {
	out := make([][]tensor.Tensor, len(rows))
	for r := range out {
		out[r] = make([]tensor.Tensor, len(inputs))
	}
	for i, in := range inputs {
		if batched != nil && !batched[i] {
			for r := range out {
				out[r][i] = in
			}
			continue
		}
		parts, err := Split([]tensor.Tensor{in}, rows)
		if err != nil {
			return nil, err
		}
		for r := range out {
			out[r][i] = parts[r][0]
		}
	}
	return out, nil
}

// EachRow is rows for Split or Unstack that cut n rows one by one.
func EachRow(n int) []int {
	rows := make([]int, n)
	for i := range rows {
		rows[i] = 1
	}
	return rows
}

// rowOffsets returns the byte offset where each row starts, plus the end.
func rowOffsets(t *tensor.Tensor, rows int) ([]int, error) {
	perRow := tensor.NumElements(t.Shape[1:])
	offsets := make([]int, rows+1)
	if t.Datatype != tensor.Bytes {
		rowBytes := int(perRow) * t.Datatype.Size()
		if len(t.Data) != rowBytes*rows {
			return nil, fmt.Errorf("%d bytes of data for %d rows of %d bytes", len(t.Data), rows, rowBytes)
		}
		for i := range offsets {
			offsets[i] = i * rowBytes
		}
		return offsets, nil
	}
	at := 0
	for r := range rows {
		offsets[r] = at
		for range perRow {
			if at+4 > len(t.Data) {
				return nil, fmt.Errorf("BYTES data ends in row %d", r)
			}
			at += 4 + int(binary.LittleEndian.Uint32(t.Data[at:]))
			if at > len(t.Data) {
				return nil, fmt.Errorf("BYTES data ends in row %d", r)
			}
		}
	}
	if at != len(t.Data) {
		return nil, fmt.Errorf("%d bytes of BYTES data after the last row", len(t.Data)-at)
	}
	offsets[rows] = at
	return offsets, nil
}
