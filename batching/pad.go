package batching

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/inferq/inferq/tensor"
)

// Bucket returns the smallest of buckets (ascending) that is at least n,
// and false when n is larger than all of them.
func Bucket(buckets []int64, n int64) (int64, bool) {
	for _, b := range buckets {
		if b >= n {
			return b, true
		}
	}
	return 0, false
}

// Pad extends t along axis to length to, filling with value (for BYTES,
// empty strings). A tensor already that long is returned as it is.
func Pad(t tensor.Tensor, axis int, to int64, value float64) (tensor.Tensor, error) {
	if axis < 0 || axis >= len(t.Shape) {
		return t, fmt.Errorf("pad %q: axis %d out of range for shape %s", t.Name, axis, tensor.FormatShape(t.Shape))
	}
	n := t.Shape[axis]
	if n >= to {
		return t, nil
	}
	outer := tensor.NumElements(t.Shape[:axis])
	inner := tensor.NumElements(t.Shape[axis+1:])
	shape := slices.Clone(t.Shape)
	shape[axis] = to
	if t.Datatype != tensor.Bytes {
		block, err := positionBytes(t, inner)
		if err != nil {
			return t, err
		}
		pad := bytes.Repeat(tensor.AppendNumber(nil, t.Datatype, value), int((to-n)*inner))
		data := make([]byte, 0, outer*to*block)
		for o := range outer {
			data = append(data, t.Data[o*n*block:(o+1)*n*block]...)
			data = append(data, pad...)
		}
		return tensor.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: shape, Data: data}, nil
	}
	elems, err := splitElements(t)
	if err != nil {
		return t, err
	}
	var fill []byte
	if t.Datatype == tensor.Bytes {
		fill = tensor.AppendBytesElement(nil, nil)
	} else {
		fill = tensor.AppendNumber(nil, t.Datatype, value)
	}
	var data []byte
	for o := range outer {
		row := elems[o*n*inner : (o+1)*n*inner]
		for _, e := range row {
			data = append(data, e...)
		}
		for range (to - n) * inner {
			data = append(data, fill...)
		}
	}
	return tensor.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: shape, Data: data}, nil
}

// Trim cuts t along axis to its first n entries. A tensor no longer than
// n is returned as it is.
func Trim(t tensor.Tensor, axis int, n int64) (tensor.Tensor, error) {
	if axis < 0 || axis >= len(t.Shape) {
		return t, fmt.Errorf("trim %q: axis %d out of range for shape %s", t.Name, axis, tensor.FormatShape(t.Shape))
	}
	have := t.Shape[axis]
	if have <= n {
		return t, nil
	}
	outer := tensor.NumElements(t.Shape[:axis])
	inner := tensor.NumElements(t.Shape[axis+1:])
	shape := slices.Clone(t.Shape)
	shape[axis] = n
	if t.Datatype != tensor.Bytes {
		block, err := positionBytes(t, inner)
		if err != nil {
			return t, err
		}
		data := make([]byte, 0, outer*n*block)
		for o := range outer {
			data = append(data, t.Data[o*have*block:(o*have+n)*block]...)
		}
		return tensor.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: shape, Data: data}, nil
	}
	elems, err := splitElements(t)
	if err != nil {
		return t, err
	}
	var data []byte
	for o := range outer {
		for _, e := range elems[o*have*inner : o*have*inner+n*inner] {
			data = append(data, e...)
		}
	}
	return tensor.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: shape, Data: data}, nil
}

// positionBytes is the bytes of one position along an axis of t, a
// tensor of fixed-size elements with inner elements after the axis,
// checking that its data fit its shape: padding and trimming copy
// blocks of positions rather than elements.
func positionBytes(t tensor.Tensor, inner int64) (int64, error) {
	block := inner * int64(t.Datatype.Size())
	if int64(len(t.Data)) != tensor.NumElements(t.Shape)*int64(t.Datatype.Size()) {
		return 0, fmt.Errorf("%q: %d bytes of data for shape %s", t.Name, len(t.Data), tensor.FormatShape(t.Shape))
	}
	return block, nil
}

// splitElements returns each element's encoding (with its length prefix,
// for BYTES), in order.
func splitElements(t tensor.Tensor) ([][]byte, error) {
	n := tensor.NumElements(t.Shape)
	out := make([][]byte, 0, n)
	if t.Datatype == tensor.Bytes {
		at := 0
		for range n {
			if at+4 > len(t.Data) {
				return nil, fmt.Errorf("%q: BYTES data shorter than its shape", t.Name)
			}
			size := 4 + int(binary.LittleEndian.Uint32(t.Data[at:]))
			if at+size > len(t.Data) {
				return nil, fmt.Errorf("%q: BYTES data shorter than its shape", t.Name)
			}
			out = append(out, t.Data[at:at+size])
			at += size
		}
		return out, nil
	}
	size := t.Datatype.Size()
	if int64(len(t.Data)) != n*int64(size) {
		return nil, fmt.Errorf("%q: %d bytes of data for %d elements", t.Name, len(t.Data), n)
	}
	for i := range n {
		out = append(out, t.Data[i*int64(size):(i+1)*int64(size)])
	}
	return out, nil
}
