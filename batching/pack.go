package batching

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/inferq/inferq/tensor"
)

// Pack lays requests that cannot share a run end to end, so that one job
// can carry them all: each tensor of the result holds that tensor's
// elements of every request in order, as one dimension. shapes[r][i] is
// request r's shape of tensor i, which Unpack needs to cut them apart.
// Every request lists the same tensors (names and datatypes) in the same
// order; their shapes may differ.
func Pack(requests [][]tensor.Tensor) (packed []tensor.Tensor, shapes [][][]int64, err error) {
	if len(requests) == 0 {
		return nil, nil, fmt.Errorf("pack: no requests")
	}
	first := requests[0]
	packed = make([]tensor.Tensor, len(first))
	shapes = make([][][]int64, len(requests))
	for r, req := range requests {
		if len(req) != len(first) {
			return nil, nil, fmt.Errorf("pack: request %d has %d tensors, request 0 has %d", r, len(req), len(first))
		}
		shapes[r] = make([][]int64, len(req))
		for i := range req {
			if req[i].Name != first[i].Name || req[i].Datatype != first[i].Datatype {
				return nil, nil, fmt.Errorf("pack: tensor %d of request %d is %q %s, of request 0 %q %s",
					i, r, req[i].Name, req[i].Datatype, first[i].Name, first[i].Datatype)
			}
			shapes[r][i] = req[i].Shape
		}
	}
	for i := range first {
		size, n := 0, int64(0)
		for _, req := range requests {
			size += len(req[i].Data)
			n += tensor.NumElements(req[i].Shape)
		}
		data := make([]byte, 0, size)
		for _, req := range requests {
			data = append(data, req[i].Data...)
		}
		packed[i] = tensor.Tensor{Name: first[i].Name, Datatype: first[i].Datatype, Shape: []int64{n}, Data: data}
	}
	return packed, shapes, nil
}

// Unpack cuts tensors laid end to end by Pack back into requests of the
// given shapes. The pieces alias the packed data. It checks that the
// shapes account for every element, no more and no fewer.
func Unpack(packed []tensor.Tensor, shapes [][][]int64) ([][]tensor.Tensor, error) {
	out := make([][]tensor.Tensor, len(shapes))
	for r := range shapes {
		if len(shapes[r]) != len(packed) {
			return nil, fmt.Errorf("unpack: request %d has %d shapes for %d tensors", r, len(shapes[r]), len(packed))
		}
		out[r] = make([]tensor.Tensor, len(packed))
	}
	for i := range packed {
		t := &packed[i]
		data := t.Data
		for r := range shapes {
			shape := shapes[r][i]
			n, err := elements(shape, len(data))
			if err != nil {
				return nil, fmt.Errorf("unpack: tensor %q of request %d: %w", t.Name, r, err)
			}
			end, err := dataEnd(t.Datatype, data, n)
			if err != nil {
				return nil, fmt.Errorf("unpack: tensor %q of request %d, shape %s: %w", t.Name, r, tensor.FormatShape(shape), err)
			}
			out[r][i] = tensor.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: shape, Data: data[:end:end]}
			data = data[end:]
		}
		if len(data) > 0 {
			return nil, fmt.Errorf("unpack: tensor %q has %d bytes left after the last request", t.Name, len(data))
		}
	}
	return out, nil
}

// elements is the element count of shape, refused when a dimension is
// negative or the count cannot fit in left bytes (every element takes at
// least one byte), which also keeps the product from overflowing.
func elements(shape []int64, left int) (int64, error) {
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("shape %s has a negative dimension", tensor.FormatShape(shape))
		}
		if d == 0 {
			return 0, nil
		}
	}
	n := int64(1)
	for _, d := range shape {
		if n > int64(left)/d {
			return 0, fmt.Errorf("shape %s needs more elements than the %d bytes left", tensor.FormatShape(shape), left)
		}
		n *= d
	}
	return n, nil
}

// dataEnd is the length of the first n elements of data of datatype dt.
func dataEnd(dt tensor.Datatype, data []byte, n int64) (int, error) {
	if dt != tensor.Bytes {
		size := int64(dt.Size())
		if size == 0 {
			return 0, fmt.Errorf("invalid datatype %s", dt)
		}
		if n*size > int64(len(data)) {
			return 0, fmt.Errorf("%d elements of %s need %d bytes, %d are left", n, dt, n*size, len(data))
		}
		return int(n * size), nil
	}
	at := 0
	for e := range n {
		if at+4 > len(data) {
			return 0, fmt.Errorf("BYTES data ends before element %d of %d", e, n)
		}
		at += 4 + int(binary.LittleEndian.Uint32(data[at:]))
		if at > len(data) {
			return 0, fmt.Errorf("BYTES data ends inside an element")
		}
	}
	return at, nil
}

// Lines is how a job was packed from several requests (a batch file's
// lines): it travels beside the job's request (jobs.HeaderLines), and in
// the parameters of the job's stored response, which only inferq reads.
// As JSON, for requests laid end to end by Pack:
// {"inferq_lines": [[shape, ...], ...]}, a list of shapes per request, a
// shape per tensor; in a response also "inferq_line_errors", the requests
// that failed, by index, with why (their outputs have no elements). For
// requests stacked along the batch dimension: "inferq_line_rows".
type Lines struct {
	Shapes [][][]int64    `json:"inferq_lines,omitempty"`
	Errors map[int]string `json:"inferq_line_errors,omitempty"`
	// Rows, in a request stacked from several along the batch dimension,
	// is each one's rows, so that a run that fails can be retried one
	// request at a time.
	Rows []int `json:"inferq_line_rows,omitempty"`
}

// Failed reports whether request i failed, and why. l may be nil.
func (l *Lines) Failed(i int) (string, bool) {
	if l == nil {
		return "", false
	}
	msg, ok := l.Errors[i]
	return msg, ok
}

// LinesParameter and RowsParameter name the parameters that carry
// Lines.Shapes and Lines.Rows.
const (
	LinesParameter = "inferq_lines"
	RowsParameter  = "inferq_line_rows"
)

// Parameters encodes l as JSON: the parameters of a packed job's stored
// response, or the header beside its request.
func (l *Lines) Parameters() json.RawMessage {
	b, _ := json.Marshal(l) // never fails for ints and strings
	return b
}

// ParseLines reads Lines from its JSON (a header, or a stored response's
// parameters): nil when it says nothing of lines.
func ParseLines(params json.RawMessage) (*Lines, error) {
	if len(params) == 0 || !bytes.Contains(params, []byte(`"inferq_line`)) {
		return nil, nil
	}
	var l struct {
		Shapes *[][][]int64   `json:"inferq_lines"`
		Errors map[int]string `json:"inferq_line_errors"`
		Rows   *[]int         `json:"inferq_line_rows"`
	}
	if err := json.Unmarshal(params, &l); err != nil {
		return nil, fmt.Errorf("parameter %s: %w", LinesParameter, err)
	}
	switch {
	case l.Shapes == nil && l.Rows == nil:
		return nil, nil
	case l.Shapes != nil && len(*l.Shapes) == 0:
		return nil, fmt.Errorf("parameter %s lists no requests", LinesParameter)
	case l.Rows != nil && len(*l.Rows) == 0:
		return nil, fmt.Errorf("parameter %s lists no requests", RowsParameter)
	case l.Shapes != nil && l.Rows != nil:
		return nil, fmt.Errorf("parameters %s and %s exclude each other", LinesParameter, RowsParameter)
	}
	out := &Lines{Errors: l.Errors}
	if l.Shapes != nil {
		out.Shapes = *l.Shapes
	} else {
		out.Rows = *l.Rows
	}
	return out, nil
}
