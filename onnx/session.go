package onnx

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/inferq/inferq/tensor"
)

// Kind is what sort of value an input or output is.
type Kind string

// Kinds of values. Only tensors travel as V2 tensors.
const (
	KindTensor   Kind = "tensor"
	KindSequence Kind = "sequence"
	KindMap      Kind = "map"
	KindOther    Kind = "other"
)

// IO describes one input or output of a model.
type IO struct {
	tensor.Spec
	Kind Kind
	// ElementType is ONNX Runtime's name for the element type, kept for
	// error messages about types V2 cannot carry.
	ElementType string
	// Axes are what the model file says of each axis of Shape beyond its
	// size; nil when it says nothing or could not be read.
	Axes []Axis
}

// Axis is what a model file says of one axis of a tensor beyond its size:
// the symbolic name of a dynamic axis (its dim_param: "batch",
// "seq_len"), and its denotation (ONNX's "DATA_BATCH" and the like),
// each empty when not given.
type Axis struct {
	Param      string
	Denotation string
}

// Signature is a model's inputs and outputs, in the model's order.
type Signature struct {
	Inputs  []IO
	Outputs []IO
}

var datatypes = map[ort.TensorElementDataType]tensor.Datatype{
	ort.TensorElementDataTypeBool:    tensor.Bool,
	ort.TensorElementDataTypeUint8:   tensor.Uint8,
	ort.TensorElementDataTypeUint16:  tensor.Uint16,
	ort.TensorElementDataTypeUint32:  tensor.Uint32,
	ort.TensorElementDataTypeUint64:  tensor.Uint64,
	ort.TensorElementDataTypeInt8:    tensor.Int8,
	ort.TensorElementDataTypeInt16:   tensor.Int16,
	ort.TensorElementDataTypeInt32:   tensor.Int32,
	ort.TensorElementDataTypeInt64:   tensor.Int64,
	ort.TensorElementDataTypeFloat16: tensor.FP16,
	ort.TensorElementDataTypeFloat:   tensor.FP32,
	ort.TensorElementDataTypeDouble:  tensor.FP64,
	ort.TensorElementDataTypeString:  tensor.Bytes,
}

func elementType(d tensor.Datatype) ort.TensorElementDataType {
	for k, v := range datatypes {
		if v == d {
			return k
		}
	}
	return ort.TensorElementDataTypeUndefined
}

func convertIO(infos []ort.InputOutputInfo) []IO {
	out := make([]IO, len(infos))
	for i, in := range infos {
		io := IO{Spec: tensor.Spec{Name: in.Name}, ElementType: in.DataType.String()}
		switch in.OrtValueType {
		case ort.ONNXTypeTensor:
			io.Kind = KindTensor
			io.Datatype = datatypes[in.DataType]
			io.Shape = make([]int64, len(in.Dimensions))
			for j, d := range in.Dimensions {
				if d < 0 {
					d = -1
				}
				io.Shape[j] = d
			}
		case ort.ONNXTypeSequence:
			// Sequences (of maps, as scikit-learn classifiers give their
			// probabilities, or of tensors) travel as BYTES, one JSON
			// document per item, an item per batch row.
			io.Kind = KindSequence
			io.Datatype, io.Shape = tensor.Bytes, []int64{-1}
		case ort.ONNXTypeMap:
			io.Kind = KindMap
			io.Datatype, io.Shape = tensor.Bytes, []int64{1}
		default:
			io.Kind = KindOther
		}
		out[i] = io
	}
	return out
}

// Inspect reads the inputs and outputs of the model at path.
func (r *Runtime) Inspect(path string) (Signature, error) {
	in, out, err := ort.GetInputOutputInfo(path)
	if err != nil {
		return Signature{}, fmt.Errorf("read model %s: %w", path, err)
	}
	sig := Signature{Inputs: convertIO(in), Outputs: convertIO(out)}
	// A tensor whose shape the model leaves out entirely has no rank:
	// its Shape is nil, where a scalar's is empty. Where the file cannot
	// be read this way, each such tensor stays a scalar, as ONNX Runtime
	// reports it, and no axis has a name.
	if shapes, err := declaredShapes(path); err == nil {
		for _, ios := range [][]IO{sig.Inputs, sig.Outputs} {
			for i := range ios {
				d, ok := shapes[ios[i].Name]
				if !ok || ios[i].Kind != KindTensor {
					continue
				}
				if len(ios[i].Shape) == 0 && !d.ranked {
					ios[i].Shape = nil
				}
				if len(d.axes) == len(ios[i].Shape) && slices.ContainsFunc(d.axes, func(a Axis) bool { return a != Axis{} }) {
					ios[i].Axes = d.axes
				}
			}
		}
	}
	return sig, nil
}

// SessionOptions configure one session. The zero value lets ONNX Runtime
// choose its thread counts.
type SessionOptions struct {
	// IntraOpThreads and InterOpThreads size ONNX Runtime's thread pools;
	// 0 leaves ONNX Runtime's default.
	IntraOpThreads int
	InterOpThreads int
	// Spinning lets ONNX Runtime's pool threads spin, waiting for work,
	// between the parts of a run and between runs. ONNX Runtime spins by
	// default, which wins a little latency on cores of its own and burns
	// the cores it shares with the API, NATS and other sessions; the zero
	// value turns it off.
	Spinning bool
	// Provider is where the session runs; the zero value, the CPU.
	Provider Provider
}

// Session is a loaded model. Run may be called from several goroutines at
// once; Close must not overlap with Run.
type Session struct {
	sess    *ort.DynamicAdvancedSession
	inputs  []IO
	outputs []IO
	// runOpts are every run's options, through which Terminate ends the
	// runs under way.
	runOpts *ort.RunOptions
}

// NewSession loads the model at path with the given signature (from
// Inspect); Run takes inputs in the signature's order and returns every
// output in its order.
func (r *Runtime) NewSession(path string, sig Signature, opts SessionOptions) (*Session, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("create session options: %w", err)
	}
	defer so.Destroy()
	if opts.IntraOpThreads > 0 {
		if err := so.SetIntraOpNumThreads(opts.IntraOpThreads); err != nil {
			return nil, fmt.Errorf("set intra-op threads: %w", err)
		}
	}
	if opts.InterOpThreads > 0 {
		if err := so.SetInterOpNumThreads(opts.InterOpThreads); err != nil {
			return nil, fmt.Errorf("set inter-op threads: %w", err)
		}
	}
	spin := "0"
	if opts.Spinning {
		spin = "1"
	}
	for _, key := range []string{"session.intra_op.allow_spinning", "session.inter_op.allow_spinning"} {
		if err := so.AddSessionConfigEntry(key, spin); err != nil {
			return nil, fmt.Errorf("set %s: %w", key, err)
		}
	}
	if err := opts.Provider.attach(so); err != nil {
		return nil, err
	}
	names := func(ios []IO) []string {
		n := make([]string, len(ios))
		for i, io := range ios {
			n[i] = io.Name
		}
		return n
	}
	s, err := ort.NewDynamicAdvancedSession(path, names(sig.Inputs), names(sig.Outputs), so)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	ro, err := ort.NewRunOptions()
	if err != nil {
		s.Destroy()
		return nil, fmt.Errorf("load model %s: create run options: %w", path, err)
	}
	return &Session{sess: s, inputs: sig.Inputs, outputs: sig.Outputs, runOpts: ro}, nil
}

// Close releases the session. No run may be under way.
func (s *Session) Close() error {
	s.runOpts.Destroy()
	return s.sess.Destroy()
}

// Terminate makes the runs under way, and every later one, fail soon
// with an error instead of finishing: for a worker that must stop while
// a run is stuck or far from done. It is safe to call concurrently with
// Run.
func (s *Session) Terminate() error {
	if err := s.runOpts.Terminate(); err != nil {
		return fmt.Errorf("terminate runs: %w", err)
	}
	return nil
}

// Run runs the model once on inputs, given in the signature's order, and
// returns its outputs in the signature's order. Output data is owned by
// the caller.
func (s *Session) Run(inputs []tensor.Tensor) ([]tensor.Tensor, error) {
	if len(inputs) != len(s.inputs) {
		return nil, fmt.Errorf("run: got %d inputs, the model takes %d", len(inputs), len(s.inputs))
	}
	in := make([]ort.Value, len(inputs))
	defer func() {
		for _, v := range in {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	for i := range inputs {
		v, err := newValue(&inputs[i])
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", inputs[i].Name, err)
		}
		in[i] = v
	}
	out := make([]ort.Value, len(s.outputs))
	defer func() {
		for _, v := range out {
			if v != nil {
				v.Destroy()
			}
		}
	}()
	if err := s.sess.RunWithOptions(in, out, s.runOpts); err != nil {
		return nil, fmt.Errorf("ONNX Runtime: %s", strings.TrimPrefix(err.Error(), "Error running network: "))
	}
	result := make([]tensor.Tensor, len(out))
	for i, v := range out {
		t, err := fromValue(v)
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", s.outputs[i].Name, err)
		}
		t.Name = s.outputs[i].Name
		result[i] = t
	}
	return result, nil
}

func newValue(t *tensor.Tensor) (ort.Value, error) {
	shape := ort.NewShape(t.Shape...)
	if t.Datatype == tensor.Bytes {
		elems, err := t.Strings()
		if err != nil {
			return nil, err
		}
		st, err := ort.NewStringTensor(shape)
		if err != nil {
			return nil, err
		}
		strs := make([]string, len(elems))
		for i, e := range elems {
			strs[i] = string(e)
		}
		if err := st.SetContents(strs); err != nil {
			st.Destroy()
			return nil, err
		}
		return st, nil
	}
	et := elementType(t.Datatype)
	if et == ort.TensorElementDataTypeUndefined {
		return nil, fmt.Errorf("datatype %s has no ONNX Runtime equivalent", t.Datatype)
	}
	if len(t.Data) == 0 {
		return nil, errors.New("empty tensors cannot be passed to ONNX Runtime")
	}
	return ort.NewCustomDataTensor(shape, t.Data, et)
}

// bytesOf views a typed slice as its bytes, which stay valid as long as the
// slice does.
func bytesOf[T any](s []T) []byte {
	if len(s) == 0 {
		return nil
	}
	var zero T
	return unsafe.Slice((*byte)(unsafe.Pointer(&s[0])), len(s)*int(unsafe.Sizeof(zero)))
}

func fromValue(v ort.Value) (tensor.Tensor, error) {
	switch x := v.(type) {
	case *ort.Sequence:
		items, err := x.GetValues()
		if err != nil {
			return tensor.Tensor{}, err
		}
		t := tensor.Tensor{Datatype: tensor.Bytes, Shape: []int64{int64(len(items))}}
		for _, item := range items {
			doc, err := appendValueJSON(nil, item)
			if err != nil {
				return t, err
			}
			t.Data = tensor.AppendBytesElement(t.Data, doc)
		}
		return t, nil
	case *ort.Map:
		doc, err := appendValueJSON(nil, x)
		if err != nil {
			return tensor.Tensor{}, err
		}
		return tensor.Tensor{Datatype: tensor.Bytes, Shape: []int64{1}, Data: tensor.AppendBytesElement(nil, doc)}, nil
	}
	t := tensor.Tensor{Shape: []int64(v.GetShape().Clone())}
	switch x := v.(type) {
	case *ort.Tensor[float32]:
		t.Datatype, t.Data = tensor.FP32, bytesOf(x.GetData())
	case *ort.Tensor[float64]:
		t.Datatype, t.Data = tensor.FP64, bytesOf(x.GetData())
	case *ort.Tensor[int8]:
		t.Datatype, t.Data = tensor.Int8, bytesOf(x.GetData())
	case *ort.Tensor[int16]:
		t.Datatype, t.Data = tensor.Int16, bytesOf(x.GetData())
	case *ort.Tensor[int32]:
		t.Datatype, t.Data = tensor.Int32, bytesOf(x.GetData())
	case *ort.Tensor[int64]:
		t.Datatype, t.Data = tensor.Int64, bytesOf(x.GetData())
	case *ort.Tensor[uint8]:
		t.Datatype, t.Data = tensor.Uint8, bytesOf(x.GetData())
	case *ort.Tensor[uint16]:
		t.Datatype, t.Data = tensor.Uint16, bytesOf(x.GetData())
	case *ort.Tensor[uint32]:
		t.Datatype, t.Data = tensor.Uint32, bytesOf(x.GetData())
	case *ort.Tensor[uint64]:
		t.Datatype, t.Data = tensor.Uint64, bytesOf(x.GetData())
	case *ort.Tensor[bool]:
		t.Datatype, t.Data = tensor.Bool, bytesOf(x.GetData())
	case *ort.StringTensor:
		strs, err := x.GetContents()
		if err != nil {
			return t, err
		}
		t.Datatype = tensor.Bytes
		for _, s := range strs {
			t.Data = tensor.AppendBytesElement(t.Data, []byte(s))
		}
	case *ort.CustomDataTensor:
		dt, ok := datatypes[ort.TensorElementDataType(x.DataType())]
		if !ok {
			return t, fmt.Errorf("element type %v cannot be returned as a V2 tensor", ort.TensorElementDataType(x.DataType()))
		}
		t.Datatype = dt
		t.Data = x.GetData()
	default:
		return t, fmt.Errorf("a %v output cannot be returned as a V2 tensor", v.GetONNXType())
	}
	if err := t.CheckData(); err != nil {
		return t, fmt.Errorf("ONNX Runtime returned inconsistent data: %w", err)
	}
	return t, nil
}

// appendValueJSON renders a value of a non-tensor output as JSON: a map as
// an object (keys as strings, as JSON requires), a sequence as an array, a
// scalar as a number or string, and any other tensor as an object with its
// datatype, shape and flat data.
func appendValueJSON(buf []byte, v ort.Value) ([]byte, error) {
	switch x := v.(type) {
	case *ort.Sequence:
		items, err := x.GetValues()
		if err != nil {
			return buf, err
		}
		buf = append(buf, '[')
		for i, item := range items {
			if i > 0 {
				buf = append(buf, ',')
			}
			if buf, err = appendValueJSON(buf, item); err != nil {
				return buf, err
			}
		}
		return append(buf, ']'), nil
	case *ort.Map:
		kv, vv, err := x.GetKeysAndValues()
		if err != nil {
			return buf, err
		}
		keys, err := fromValue(kv)
		if err != nil {
			return buf, fmt.Errorf("map keys: %w", err)
		}
		vals, err := fromValue(vv)
		if err != nil {
			return buf, fmt.Errorf("map values: %w", err)
		}
		ks, vs := elements(&keys), elements(&vals)
		if len(ks) != len(vs) {
			return buf, fmt.Errorf("map has %d keys and %d values", len(ks), len(vs))
		}
		buf = append(buf, '{')
		for i := range ks {
			if i > 0 {
				buf = append(buf, ',')
			}
			k := ks[i].AppendDataJSON(nil)
			if keys.Datatype != tensor.Bytes {
				k = strconv.AppendQuote(nil, string(k)) // numbers become "0", "1", ...
			}
			buf = append(buf, k...)
			buf = append(buf, ':')
			buf = vs[i].AppendDataJSON(buf)
		}
		return append(buf, '}'), nil
	}
	t, err := fromValue(v)
	if err != nil {
		return buf, err
	}
	if len(t.Shape) == 0 {
		return t.AppendDataJSON(buf), nil
	}
	buf = append(buf, `{"datatype":"`...)
	buf = append(buf, t.Datatype.String()...)
	buf = append(buf, `","shape":`...)
	buf = append(buf, strings.ReplaceAll(tensor.FormatShape(t.Shape), " ", ",")...)
	buf = append(buf, `,"data":[`...)
	buf = t.AppendDataJSON(buf)
	return append(buf, "]}"...), nil
}

// elements splits a tensor into one-element tensors.
func elements(t *tensor.Tensor) []tensor.Tensor {
	if t.Datatype == tensor.Bytes {
		strs, _ := t.Strings()
		out := make([]tensor.Tensor, len(strs))
		for i, s := range strs {
			out[i] = tensor.Tensor{Datatype: tensor.Bytes, Data: tensor.AppendBytesElement(nil, s)}
		}
		return out
	}
	size := t.Datatype.Size()
	out := make([]tensor.Tensor, 0, len(t.Data)/max(size, 1))
	for i := 0; i+size <= len(t.Data); i += size {
		out = append(out, tensor.Tensor{Datatype: t.Datatype, Data: t.Data[i : i+size]})
	}
	return out
}
