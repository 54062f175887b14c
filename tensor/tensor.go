package tensor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Tensor is one named input or output.
//
// Data holds the elements in row-major order as little-endian bytes. For
// BYTES tensors each element is a 4-byte little-endian length followed by
// that many bytes, the layout of the V2 binary tensor extension.
type Tensor struct {
	Name     string
	Datatype Datatype
	Shape    []int64
	Data     []byte
	// Object, on an input given by reference, names the stored object
	// that holds its data (raw little-endian elements, as in the binary
	// extension); Data is empty until the object is read.
	Object string
}

// ObjectParameter is the input parameter that gives an input by
// reference: {"parameters": {"inferq_object": "tensors/x.raw"}} in place
// of "data".
const ObjectParameter = "inferq_object"

// NumElements is the product of the shape's dimensions (1 for a scalar).
func NumElements(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// Strings returns the elements of a BYTES tensor.
func (t *Tensor) Strings() ([][]byte, error) {
	if t.Datatype != Bytes {
		return nil, fmt.Errorf("tensor %q is %s, not BYTES", t.Name, t.Datatype)
	}
	return SplitBytes(t.Data)
}

// AppendBytesElement appends one BYTES element to data in the binary layout.
func AppendBytesElement(data, elem []byte) []byte {
	data = binary.LittleEndian.AppendUint32(data, uint32(len(elem)))
	return append(data, elem...)
}

// SplitBytes splits BYTES tensor data into its elements, which alias data.
func SplitBytes(data []byte) ([][]byte, error) {
	var out [][]byte
	for len(data) > 0 {
		if len(data) < 4 {
			return nil, errors.New("BYTES data ends inside an element length")
		}
		n := binary.LittleEndian.Uint32(data)
		data = data[4:]
		if uint64(n) > uint64(len(data)) {
			return nil, fmt.Errorf("BYTES element of %d bytes runs past the end of the data", n)
		}
		out = append(out, data[:n:n])
		data = data[n:]
	}
	return out, nil
}

// countBytesElements counts the elements of BYTES data, checking its layout.
func countBytesElements(data []byte) (int64, error) {
	var n int64
	for len(data) > 0 {
		if len(data) < 4 {
			return 0, errors.New("BYTES data ends inside an element length")
		}
		l := binary.LittleEndian.Uint32(data)
		data = data[4:]
		if uint64(l) > uint64(len(data)) {
			return 0, fmt.Errorf("BYTES element of %d bytes runs past the end of the data", l)
		}
		data = data[l:]
		n++
	}
	return n, nil
}

// CheckData reports whether t's data holds exactly the elements its shape
// calls for.
func (t *Tensor) CheckData() error {
	for _, d := range t.Shape {
		if d < 0 {
			return fmt.Errorf("%s: shape %s has a negative dimension", t.label(), FormatShape(t.Shape))
		}
	}
	want := NumElements(t.Shape)
	if t.Datatype == Bytes {
		got, err := countBytesElements(t.Data)
		if err != nil {
			return fmt.Errorf("%s: %w", t.label(), err)
		}
		if got != want {
			return fmt.Errorf("%s: data has %d elements but shape %s needs %d", t.label(), got, FormatShape(t.Shape), want)
		}
		return nil
	}
	size := int64(t.Datatype.Size())
	if size == 0 {
		return fmt.Errorf("%s: invalid datatype %s", t.label(), t.Datatype)
	}
	if int64(len(t.Data)) != want*size {
		return fmt.Errorf("%s: data has %d bytes but shape %s of %s needs %d", t.label(), len(t.Data), FormatShape(t.Shape), t.Datatype, want*size)
	}
	return nil
}

func (t *Tensor) label() string { return "tensor " + strconv.Quote(t.Name) }

// FormatShape writes a shape as [1 -1 3].
func FormatShape(shape []int64) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, d := range shape {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatInt(d, 10))
	}
	b.WriteByte(']')
	return b.String()
}

// Spec describes a model input or output: its datatype and shape, with -1
// for each dimension that is dynamic.
type Spec struct {
	Name     string   `json:"name"`
	Datatype Datatype `json:"datatype"`
	// Shape has -1 for a dynamic dimension; it is empty for a scalar, and
	// nil when the model does not say (any rank).
	Shape []int64 `json:"shape"`
}

// Accepts reports why t cannot be given to an input described by s, or nil
// when it can.
func (s *Spec) Accepts(t *Tensor) error {
	if t.Datatype != s.Datatype {
		return fmt.Errorf("input %q has datatype %s, the model expects %s", t.Name, t.Datatype, s.Datatype)
	}
	if s.Shape == nil {
		return nil // the model does not say
	}
	if len(t.Shape) != len(s.Shape) {
		return fmt.Errorf("input %q has shape %s, the model expects %d dimensions %s", t.Name, FormatShape(t.Shape), len(s.Shape), FormatShape(s.Shape))
	}
	for i, d := range s.Shape {
		if d >= 0 && t.Shape[i] != d {
			return fmt.Errorf("input %q has shape %s, the model expects %s (dimension %d must be %d)", t.Name, FormatShape(t.Shape), FormatShape(s.Shape), i, d)
		}
	}
	return nil
}

// Select is the tensors of all named in names, in the order names gives
// them (a name given twice once); all of them when names is empty: the
// outputs a request asks for.
func Select(all []Tensor, names []string) []Tensor {
	if len(names) == 0 {
		return all
	}
	out := make([]Tensor, 0, len(names))
	for i, n := range names {
		if slices.Contains(names[:i], n) {
			continue
		}
		for _, t := range all {
			if t.Name == n {
				out = append(out, t)
			}
		}
	}
	return out
}
