// Package onnxbuild writes small ONNX models from Go, so that the bundled
// example model and the models tests and benchmarks need are made by the
// project's own code. It encodes the ONNX protobuf schema (onnx.proto3)
// directly with protowire; only the fields inferq's models use are covered.
package onnxbuild

import (
	"encoding/binary"
	"math"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// ONNX element types (TensorProto.DataType).
const (
	Float   = 1
	Uint8   = 2
	Int8    = 3
	Uint16  = 4
	Int16   = 5
	Int32   = 6
	Int64   = 7
	String  = 8
	Bool    = 9
	Float16 = 10
	Double  = 11
	Uint32  = 12
	Uint64  = 13
)

// Model is an ONNX model under construction: one graph, opset 17.
type Model struct {
	Name string
	Doc  string
	// External, when set, is the name of a file beside the model that
	// holds the initializers' data (ONNX external data, as exporters write
	// for large models): the model then points into it, and ExternalData
	// returns what the file must hold.
	External string
	nodes    [][]byte
	inits    [][]byte
	inputs   [][]byte
	outputs  [][]byte
	nodeSeq  int
	Producer string
	ext      []byte
}

// ExternalData is the contents of the file named by External.
func (m *Model) ExternalData() []byte { return m.ext }

// New starts a model whose graph is called name.
func New(name string) *Model { return &Model{Name: name, Producer: "inferq onnxbuild"} }

// Input declares a graph input. A dimension of -1 is dynamic, named
// "batch" when first and "d<i>" after.
func (m *Model) Input(name string, elemType int, dims ...int64) {
	m.inputs = append(m.inputs, valueInfo(name, elemType, dims, nil))
}

// Output declares a graph output.
func (m *Model) Output(name string, elemType int, dims ...int64) {
	m.outputs = append(m.outputs, valueInfo(name, elemType, dims, nil))
}

// InputNamed declares a graph input whose dynamic dimensions have the
// given symbolic names, in order ("" for none), in place of Input's.
func (m *Model) InputNamed(name string, elemType int, names []string, dims ...int64) {
	m.inputs = append(m.inputs, valueInfo(name, elemType, dims, names))
}

// OutputNamed is InputNamed for a graph output.
func (m *Model) OutputNamed(name string, elemType int, names []string, dims ...int64) {
	m.outputs = append(m.outputs, valueInfo(name, elemType, dims, names))
}

// InputAnyShape declares a graph input whose type gives no shape at all
// (no rank), as some exporters and hand-built graphs leave it.
func (m *Model) InputAnyShape(name string, elemType int) {
	m.inputs = append(m.inputs, valueInfoNoShape(name, elemType))
}

// OutputAnyShape declares a graph output with no shape.
func (m *Model) OutputAnyShape(name string, elemType int) {
	m.outputs = append(m.outputs, valueInfoNoShape(name, elemType))
}

// Floats adds a float32 initializer (a constant weight).
func (m *Model) Floats(name string, dims []int64, data []float32) {
	raw := make([]byte, 0, 4*len(data))
	for _, f := range data {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	m.inits = append(m.inits, m.initializer(name, Float, dims, raw))
}

// Int64s adds an int64 initializer.
func (m *Model) Int64s(name string, dims []int64, data []int64) {
	raw := make([]byte, 0, 8*len(data))
	for _, v := range data {
		raw = binary.LittleEndian.AppendUint64(raw, uint64(v))
	}
	m.inits = append(m.inits, m.initializer(name, Int64, dims, raw))
}

// Attr is a node attribute.
type Attr []byte

// Int is an integer attribute.
func Int(name string, v int64) Attr {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, name)
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(v))
	b = protowire.AppendTag(b, 20, protowire.VarintType)
	b = protowire.AppendVarint(b, 2) // INT
	return b
}

// Float is a float attribute.
func FloatAttr(name string, v float32) Attr {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, name)
	b = protowire.AppendTag(b, 2, protowire.Fixed32Type)
	b = protowire.AppendFixed32(b, math.Float32bits(v))
	b = protowire.AppendTag(b, 20, protowire.VarintType)
	b = protowire.AppendVarint(b, 1) // FLOAT
	return b
}

// Ints is an integer list attribute.
func Ints(name string, vs ...int64) Attr {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, name)
	for _, v := range vs {
		b = protowire.AppendTag(b, 8, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(v))
	}
	b = protowire.AppendTag(b, 20, protowire.VarintType)
	b = protowire.AppendVarint(b, 7) // INTS
	return b
}

// Node adds an operator node of the default ONNX domain.
func (m *Model) Node(op string, inputs, outputs []string, attrs ...Attr) {
	m.nodeSeq++
	var b []byte
	for _, in := range inputs {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, in)
	}
	for _, out := range outputs {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, out)
	}
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendString(b, op+"_"+itoa(m.nodeSeq))
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	b = protowire.AppendString(b, op)
	for _, a := range attrs {
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, a)
	}
	m.nodes = append(m.nodes, b)
}

// Bytes encodes the model.
func (m *Model) Bytes() []byte {
	var g []byte
	for _, n := range m.nodes {
		g = protowire.AppendTag(g, 1, protowire.BytesType)
		g = protowire.AppendBytes(g, n)
	}
	g = protowire.AppendTag(g, 2, protowire.BytesType)
	g = protowire.AppendString(g, m.Name)
	for _, t := range m.inits {
		g = protowire.AppendTag(g, 5, protowire.BytesType)
		g = protowire.AppendBytes(g, t)
	}
	if m.Doc != "" {
		g = protowire.AppendTag(g, 10, protowire.BytesType)
		g = protowire.AppendString(g, m.Doc)
	}
	for _, v := range m.inputs {
		g = protowire.AppendTag(g, 11, protowire.BytesType)
		g = protowire.AppendBytes(g, v)
	}
	for _, v := range m.outputs {
		g = protowire.AppendTag(g, 12, protowire.BytesType)
		g = protowire.AppendBytes(g, v)
	}
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 8) // IR version 8
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, m.Producer)
	b = protowire.AppendTag(b, 7, protowire.BytesType)
	b = protowire.AppendBytes(b, g)
	var opset []byte
	opset = protowire.AppendTag(opset, 2, protowire.VarintType)
	opset = protowire.AppendVarint(opset, 17)
	b = protowire.AppendTag(b, 8, protowire.BytesType)
	b = protowire.AppendBytes(b, opset)
	return b
}

func valueInfoNoShape(name string, elemType int) []byte {
	var tt []byte
	tt = protowire.AppendTag(tt, 1, protowire.VarintType)
	tt = protowire.AppendVarint(tt, uint64(elemType))
	return wrapValueInfo(name, tt)
}

func valueInfo(name string, elemType int, dims []int64, names []string) []byte {
	var shape []byte
	for i, d := range dims {
		var dim []byte
		if d < 0 {
			param := "batch"
			if i > 0 {
				param = "d" + itoa(i)
			}
			if names != nil {
				param, names = names[0], names[1:]
			}
			if param != "" {
				dim = protowire.AppendTag(dim, 2, protowire.BytesType)
				dim = protowire.AppendString(dim, param)
			}
		} else {
			dim = protowire.AppendTag(dim, 1, protowire.VarintType)
			dim = protowire.AppendVarint(dim, uint64(d))
		}
		shape = protowire.AppendTag(shape, 1, protowire.BytesType)
		shape = protowire.AppendBytes(shape, dim)
	}
	var tt []byte
	tt = protowire.AppendTag(tt, 1, protowire.VarintType)
	tt = protowire.AppendVarint(tt, uint64(elemType))
	tt = protowire.AppendTag(tt, 2, protowire.BytesType)
	tt = protowire.AppendBytes(tt, shape)
	return wrapValueInfo(name, tt)
}

// wrapValueInfo makes a ValueInfoProto of a name and a TypeProto.Tensor.
func wrapValueInfo(name string, tt []byte) []byte {
	var typ []byte
	typ = protowire.AppendTag(typ, 1, protowire.BytesType)
	typ = protowire.AppendBytes(typ, tt)
	var v []byte
	v = protowire.AppendTag(v, 1, protowire.BytesType)
	v = protowire.AppendString(v, name)
	v = protowire.AppendTag(v, 2, protowire.BytesType)
	v = protowire.AppendBytes(v, typ)
	return v
}

// initializer encodes a constant, with its data inline or, when the model
// has an External file, at the end of that file.
func (m *Model) initializer(name string, elemType int, dims []int64, raw []byte) []byte {
	if m.External == "" {
		return tensorProto(name, elemType, dims, raw)
	}
	t := tensorProto(name, elemType, dims, nil)
	for _, kv := range [][2]string{{"location", m.External}, {"offset", itoa(len(m.ext))}, {"length", itoa(len(raw))}} {
		var e []byte
		e = protowire.AppendTag(e, 1, protowire.BytesType)
		e = protowire.AppendString(e, kv[0])
		e = protowire.AppendTag(e, 2, protowire.BytesType)
		e = protowire.AppendString(e, kv[1])
		t = protowire.AppendTag(t, 13, protowire.BytesType) // external_data
		t = protowire.AppendBytes(t, e)
	}
	t = protowire.AppendTag(t, 14, protowire.VarintType) // data_location
	t = protowire.AppendVarint(t, 1)                     // EXTERNAL
	m.ext = append(m.ext, raw...)
	return t
}

func tensorProto(name string, elemType int, dims []int64, raw []byte) []byte {
	var t []byte
	for _, d := range dims {
		t = protowire.AppendTag(t, 1, protowire.VarintType)
		t = protowire.AppendVarint(t, uint64(d))
	}
	t = protowire.AppendTag(t, 2, protowire.VarintType)
	t = protowire.AppendVarint(t, uint64(elemType))
	t = protowire.AppendTag(t, 8, protowire.BytesType)
	t = protowire.AppendString(t, name)
	if raw != nil {
		t = protowire.AppendTag(t, 9, protowire.BytesType)
		t = protowire.AppendBytes(t, raw)
	}
	return t
}

func itoa(i int) string { return strconv.Itoa(i) }

// Dense returns a compute-bound model for benchmarks and tests: an input
// x[batch, width] through depth layers of MatMul, Add and Relu to an
// output y[batch, width], with weights drawn from a fixed seed so every
// build is the same. One row costs about 2*depth*width*width flops.
func Dense(width, depth int, seed uint64) []byte {
	return dense(width, depth, seed, false, "").Bytes()
}

// DenseExternal is Dense with its weights in a file beside the model,
// named file: it returns the model and that file's contents.
func DenseExternal(width, depth int, seed uint64, file string) (model, data []byte) {
	m := dense(width, depth, seed, false, file)
	return m.Bytes(), m.ExternalData()
}

// Repeat is Dense with one layer's weights applied depth times: the
// compute of a deep model in the file size of one layer, for tests that
// need a model slow enough to catch mid-run.
func Repeat(width, depth int, seed uint64) []byte {
	return dense(width, depth, seed, true, "").Bytes()
}

func dense(width, depth int, seed uint64, shared bool, external string) *Model {
	m := New("dense")
	m.External = external
	m.Input("x", Float, -1, int64(width))
	m.Output("y", Float, -1, int64(width))
	rng := seed | 1
	next := func() float32 { // xorshift64*, scaled to keep activations bounded
		rng ^= rng >> 12
		rng ^= rng << 25
		rng ^= rng >> 27
		return (float32((rng*2685821657736338717)>>40)/float32(1<<24) - 0.5) * 2 / float32(math.Sqrt(float64(width)))
	}
	cur := "x"
	for l := range depth {
		ln := "l" + itoa(l)
		wn, bn := ln+"_w", ln+"_b"
		if shared {
			wn, bn = "l0_w", "l0_b"
		}
		if !shared || l == 0 {
			w := make([]float32, width*width)
			for i := range w {
				w[i] = next()
			}
			b := make([]float32, width)
			for i := range b {
				b[i] = next()
			}
			m.Floats(wn, []int64{int64(width), int64(width)}, w)
			m.Floats(bn, []int64{int64(width)}, b)
		}
		m.Node("MatMul", []string{cur, wn}, []string{ln + "_mm"})
		m.Node("Add", []string{ln + "_mm", bn}, []string{ln + "_add"})
		out := ln + "_relu"
		if l == depth-1 {
			out = "y"
		}
		m.Node("Relu", []string{ln + "_add"}, []string{out})
		cur = out
	}
	return m
}
