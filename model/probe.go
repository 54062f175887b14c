package model

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"

	"github.com/x448/float16"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/tensor"
)

// Runtime reads and runs model files; *onnx.Runtime is one.
type Runtime interface {
	Inspect(path string) (onnx.Signature, error)
	NewSession(path string, sig onnx.Signature, opts onnx.SessionOptions) (*onnx.Session, error)
}

// probeSize is the size given to the dynamic axes after the first of the
// made-up rows a probe runs: a multiple of 32, as image models often need.
const probeSize = 32

// probeRows runs a model that its signature says can be batched on two
// made-up rows, each alone and then stacked, and returns why it cannot be
// batched after all: a stacked run that fails where each row alone runs,
// outputs that do not follow the batch axis, or a row whose outputs change
// with the row beside it (a model that normalizes over the batch, or
// treats the first axis as a sequence). What a signature cannot say, the
// model's own arithmetic does. err says the probe could not run (a row
// alone failed: the made-up inputs do not suit the model), and the
// signature's word stands.
func probeRows(rt Runtime, path string, sig onnx.Signature, batched []bool) (reason string, err error) {
	s, err := rt.NewSession(path, sig, onnx.SessionOptions{IntraOpThreads: 1, InterOpThreads: 1})
	if err != nil {
		return "", err
	}
	defer s.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	rows := [2][]tensor.Tensor{}
	for i, in := range sig.Inputs {
		shape := make([]int64, len(in.Shape))
		for k, d := range in.Shape {
			switch {
			case k == 0 && batched[i]:
				shape[k] = 1
			case d < 0:
				shape[k] = probeSize
			default:
				shape[k] = d
			}
		}
		a := madeUp(rng, in.Spec, shape)
		b := a // an input the rows share
		if batched[i] {
			b = madeUp(rng, in.Spec, shape)
		}
		rows[0], rows[1] = append(rows[0], a), append(rows[1], b)
	}
	var alone [2][]tensor.Tensor
	for r := range rows {
		if alone[r], err = s.Run(rows[r]); err != nil {
			return "", fmt.Errorf("a made-up row (its dynamic axes %d long) does not run: %w", probeSize, err)
		}
	}
	stacked, err := batching.Stack(rows[:], batched)
	if err != nil {
		return "", err
	}
	out, err := s.Run(stacked)
	if err != nil {
		return fmt.Sprintf("two rows stacked fail to run where each alone runs (%v)", err), nil
	}
	split, err := batching.Split(out, []int{1, 1})
	if err != nil {
		return fmt.Sprintf("its outputs do not follow the batch axis: two rows stacked give %v", err), nil
	}
	for r := range rows {
		for k := range alone[r] {
			if !sameOutput(sig.Outputs[k], split[r][k], alone[r][k]) {
				return fmt.Sprintf("its rows are not independent: output %q of a row run stacked with another differs from the row run alone", sig.Outputs[k].Name), nil
			}
		}
	}
	return "", nil
}

// madeUp returns a tensor of shape with values that most models take:
// floats in [0, 1), integers 0 and 1 (valid as indices and masks),
// short strings.
func madeUp(rng *rand.Rand, spec tensor.Spec, shape []int64) tensor.Tensor {
	t := tensor.Tensor{Name: spec.Name, Datatype: spec.Datatype, Shape: shape}
	n := tensor.NumElements(shape)
	for range n {
		switch spec.Datatype {
		case tensor.FP32:
			t.Data = binary.LittleEndian.AppendUint32(t.Data, math.Float32bits(rng.Float32()))
		case tensor.FP64:
			t.Data = binary.LittleEndian.AppendUint64(t.Data, math.Float64bits(rng.Float64()))
		case tensor.FP16:
			t.Data = binary.LittleEndian.AppendUint16(t.Data, float16.Fromfloat32(rng.Float32()).Bits())
		case tensor.Bytes:
			t.Data = tensor.AppendBytesElement(t.Data, []byte{byte('a' + rng.IntN(26)), byte('a' + rng.IntN(26))})
		default: // booleans and integers, little-endian
			v := make([]byte, spec.Datatype.Size())
			v[0] = byte(rng.IntN(2))
			t.Data = append(t.Data, v...)
		}
	}
	return t
}

// sameOutput reports whether got, a row's output from a stacked run,
// matches want, the row's output run alone: floats to a tolerance (runs
// of different sizes may sum in a different order), sequences and maps
// (JSON) number by number, anything else exactly.
func sameOutput(io onnx.IO, got, want tensor.Tensor) bool {
	if got.Datatype != want.Datatype || !slices.Equal(got.Shape, want.Shape) {
		return false
	}
	switch {
	case io.Kind != onnx.KindTensor:
		g, err1 := tensor.SplitBytes(got.Data)
		w, err2 := tensor.SplitBytes(want.Data)
		if err1 != nil || err2 != nil || len(g) != len(w) {
			return false
		}
		for i := range w {
			var a, b any
			if json.Unmarshal(g[i], &a) != nil || json.Unmarshal(w[i], &b) != nil || !sameJSON(a, b) {
				return false
			}
		}
		return true
	case want.Datatype == tensor.FP32:
		return closeEach(got.Data, want.Data, 4, func(b []byte) float64 { return float64(math.Float32frombits(binary.LittleEndian.Uint32(b))) }, 1e-3)
	case want.Datatype == tensor.FP64:
		return closeEach(got.Data, want.Data, 8, func(b []byte) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(b)) }, 1e-3)
	case want.Datatype == tensor.FP16:
		return closeEach(got.Data, want.Data, 2, func(b []byte) float64 { return float64(float16.Frombits(binary.LittleEndian.Uint16(b)).Float32()) }, 1e-2)
	}
	return bytes.Equal(got.Data, want.Data)
}

// closeEach compares two arrays of size-byte floats element by element.
func closeEach(got, want []byte, size int, read func([]byte) float64, tol float64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := 0; i < len(want); i += size {
		if !closeTo(read(got[i:]), read(want[i:]), tol) {
			return false
		}
	}
	return true
}

// closeTo reports whether a is within tol of b, relative to b's size past
// 1; NaN matches NaN.
func closeTo(a, b, tol float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return a == b || math.Abs(a-b) <= tol*max(1, math.Abs(b))
}

// sameJSON compares decoded JSON values, numbers to a tolerance.
func sameJSON(a, b any) bool {
	switch b := b.(type) {
	case float64:
		a, ok := a.(float64)
		return ok && closeTo(a, b, 1e-3)
	case []any:
		a, ok := a.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range b {
			if !sameJSON(a[i], b[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		a, ok := a.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range b {
			if !sameJSON(a[k], v) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}
