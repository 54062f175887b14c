// Package tensor holds inferq's tensors in the shape of the Open Inference
// Protocol v2 (KServe, Triton): datatypes, requests and responses, their JSON
// codec, and the compact binary form a request takes in the queue.
//
// A Tensor keeps its elements as raw little-endian bytes, the layout ONNX
// Runtime reads and writes, so that a request decoded once at the edge is
// never converted again on its way to a model.
package tensor

import "fmt"

// Datatype is a V2 tensor element type.
type Datatype uint8

// The V2 datatypes.
const (
	Invalid Datatype = iota
	Bool
	Uint8
	Uint16
	Uint32
	Uint64
	Int8
	Int16
	Int32
	Int64
	FP16
	FP32
	FP64
	Bytes
)

var datatypeNames = [...]string{
	Invalid: "INVALID",
	Bool:    "BOOL",
	Uint8:   "UINT8",
	Uint16:  "UINT16",
	Uint32:  "UINT32",
	Uint64:  "UINT64",
	Int8:    "INT8",
	Int16:   "INT16",
	Int32:   "INT32",
	Int64:   "INT64",
	FP16:    "FP16",
	FP32:    "FP32",
	FP64:    "FP64",
	Bytes:   "BYTES",
}

var datatypeSizes = [...]int{
	Bool: 1, Uint8: 1, Uint16: 2, Uint32: 4, Uint64: 8,
	Int8: 1, Int16: 2, Int32: 4, Int64: 8,
	FP16: 2, FP32: 4, FP64: 8,
}

// ParseDatatype returns the datatype with V2 name s, such as "FP32".
func ParseDatatype(s string) (Datatype, error) {
	for i, n := range datatypeNames {
		if i != int(Invalid) && n == s {
			return Datatype(i), nil
		}
	}
	return Invalid, fmt.Errorf("unknown datatype %q (want one of BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES)", s)
}

// String returns the V2 name of d.
func (d Datatype) String() string {
	if int(d) < len(datatypeNames) {
		return datatypeNames[d]
	}
	return fmt.Sprintf("Datatype(%d)", uint8(d))
}

// Size is the number of bytes of one element, or 0 for BYTES, whose
// elements vary in length.
func (d Datatype) Size() int {
	if int(d) < len(datatypeSizes) {
		return datatypeSizes[d]
	}
	return 0
}

// MarshalText encodes d as its V2 name.
func (d Datatype) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText decodes a V2 name.
func (d *Datatype) UnmarshalText(b []byte) error {
	v, err := ParseDatatype(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}
