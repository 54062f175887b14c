package onnx_test

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/tensor"
)

func floats(vs ...float32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func TestIrisClassifies(t *testing.T) {
	rt := testenv.Runtime(t)
	path := filepath.Join(testenv.Root(t), "testdata", "models", "iris", "1", "model.onnx")
	sig, err := rt.Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(sig.Inputs) != 1 || sig.Inputs[0].Name != "x" || tensor.FormatShape(sig.Inputs[0].Shape) != "[-1 4]" {
		t.Fatalf("unexpected inputs %+v", sig.Inputs)
	}
	s, err := rt.NewSession(path, sig, onnx.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// One flower of each species from Fisher's data.
	x := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{3, 4},
		Data: floats(5.1, 3.5, 1.4, 0.2, 6.4, 3.2, 4.5, 1.5, 6.3, 3.3, 6.0, 2.5)}
	out, err := s.Run([]tensor.Tensor{x})
	if err != nil {
		t.Fatal(err)
	}
	if out[0].Name != "probabilities" || tensor.FormatShape(out[0].Shape) != "[3 3]" {
		t.Fatalf("probabilities: %+v", out[0])
	}
	label := out[1]
	if label.Datatype != tensor.Int64 || tensor.FormatShape(label.Shape) != "[3]" {
		t.Fatalf("label: %+v", label)
	}
	for i := range 3 {
		if got := int64(binary.LittleEndian.Uint64(label.Data[8*i:])); got != int64(i) {
			t.Errorf("flower %d classified as %d", i, got)
		}
	}
}

func TestRunErrors(t *testing.T) {
	rt := testenv.Runtime(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "dense.onnx")
	if err := os.WriteFile(path, onnxbuild.Dense(8, 2, 1), 0o644); err != nil {
		t.Fatal(err)
	}
	sig, err := rt.Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := rt.NewSession(path, sig, onnx.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bad := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 4}, Data: floats(1, 2, 3, 4)}
	if _, err := s.Run([]tensor.Tensor{bad}); err == nil || !strings.Contains(err.Error(), "dimension") {
		t.Fatalf("a wrongly shaped input ran: %v", err)
	}
	if _, err := rt.Inspect(filepath.Join(dir, "missing.onnx")); err == nil {
		t.Fatal("inspecting a missing file succeeded")
	}
}

func TestFindLibraryExplainsWhereItLooked(t *testing.T) {
	t.Setenv("LD_LIBRARY_PATH", "")
	_, err := onnx.FindLibrary("", []string{"/nonexistent/inferq/libonnxruntime.so.1"})
	if err != nil && !errors.Is(err, onnx.ErrLibraryNotFound) {
		t.Fatal(err)
	}
	if err != nil {
		for _, want := range []string{"/nonexistent/inferq/libonnxruntime.so.1", "ONNXRUNTIME_LIB", "make build"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message does not mention %q:\n%v", want, err)
			}
		}
	}
	_, err = onnx.FindLibrary("/nonexistent/lib.so", nil)
	if !errors.Is(err, onnx.ErrLibraryNotFound) || !strings.Contains(err.Error(), "ONNXRUNTIME_LIB=/nonexistent/lib.so") {
		t.Fatalf("explicit missing library: %v", err)
	}
}

// load writes model to a file and opens a session on it.
func load(t *testing.T, rt *onnx.Runtime, model []byte) (*onnx.Session, onnx.Signature) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.onnx")
	if err := os.WriteFile(path, model, 0o644); err != nil {
		t.Fatal(err)
	}
	sig, err := rt.Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := rt.NewSession(path, sig, onnx.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, sig
}

// Every V2 datatype goes into ONNX Runtime and comes back bit for bit,
// FP16 and strings included.
func TestEveryDatatypeRoundTrips(t *testing.T) {
	rt := testenv.Runtime(t)
	s, sig := load(t, rt, onnxbuild.Identities())
	var in []tensor.Tensor
	for i, io := range sig.Inputs {
		want := onnxbuild.Elems()[i].V2
		if io.Datatype.String() != want || tensor.FormatShape(io.Shape) != "[-1 2]" {
			t.Fatalf("input %d read as %s %v, want %s [-1 2]", i, io.Datatype, io.Shape, want)
		}
		x := tensor.Tensor{Name: io.Name, Datatype: io.Datatype, Shape: []int64{3, 2}}
		for e := range 6 {
			switch io.Datatype {
			case tensor.Bytes:
				x.Data = tensor.AppendBytesElement(x.Data, []byte(strings.Repeat("ab", e)))
			case tensor.Bool:
				x.Data = append(x.Data, byte(e%2))
			default:
				for b := range io.Datatype.Size() {
					x.Data = append(x.Data, byte(17*e+b+1))
				}
			}
		}
		in = append(in, x)
	}
	out, err := s.Run(in)
	if err != nil {
		t.Fatal(err)
	}
	for i := range in {
		got := out[i]
		if got.Datatype != in[i].Datatype || tensor.FormatShape(got.Shape) != "[3 2]" || string(got.Data) != string(in[i].Data) {
			t.Errorf("%s: got %s %v %x, want %s [3 2] %x", in[i].Name, got.Datatype, got.Shape, got.Data, in[i].Datatype, in[i].Data)
		}
	}
}

// Scalars go in and come out: a scalar input beside a batched one, and a
// scalar output.
func TestScalars(t *testing.T) {
	rt := testenv.Runtime(t)
	s, sig := load(t, rt, onnxbuild.Conditioned())
	if got := tensor.FormatShape(sig.Inputs[1].Shape); got != "[]" {
		t.Fatalf("temperature read as shape %s, want []", got)
	}
	out, err := s.Run([]tensor.Tensor{
		{Name: "x", Datatype: tensor.FP32, Shape: []int64{2, 4}, Data: floats(1, 2, 3, 4, 5, 6, 7, 8)},
		{Name: "temperature", Datatype: tensor.FP32, Shape: []int64{}, Data: floats(0.5)},
		{Name: "bias", Datatype: tensor.FP32, Shape: []int64{4}, Data: floats(10, 20, 30, 40)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := floats(10.5, 21, 31.5, 42, 12.5, 23, 33.5, 44); string(out[0].Data) != string(want) {
		t.Errorf("y = %x, want %x", out[0].Data, want)
	}

	s, sig = load(t, rt, onnxbuild.Total())
	if got := tensor.FormatShape(sig.Outputs[0].Shape); got != "[]" {
		t.Fatalf("sum read as shape %s, want []", got)
	}
	out, err = s.Run([]tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{2, 3}, Data: floats(1, 2, 3, 4, 5, 6)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out[0].Shape) != 0 || string(out[0].Data) != string(floats(21)) {
		t.Errorf("sum = %v %x, want a scalar 21", out[0].Shape, out[0].Data)
	}
}

// A tensor whose type gives no shape reads as nil (any rank), told apart
// from a scalar (empty) by reading the model file; the model runs on
// inputs of any rank.
func TestShapeless(t *testing.T) {
	rt := testenv.Runtime(t)
	s, sig := load(t, rt, onnxbuild.Shapeless())
	if sig.Inputs[0].Shape != nil || sig.Outputs[0].Shape != nil {
		t.Fatalf("shapeless x and y read as %v and %v, want nil", sig.Inputs[0].Shape, sig.Outputs[0].Shape)
	}
	if _, sig := load(t, rt, onnxbuild.Conditioned()); sig.Inputs[1].Shape == nil {
		t.Fatal("the scalar temperature read as shapeless")
	}
	// The graph's inputs come after its initializers in the file: past a
	// megabyte of them, the reader seeks instead of reading, and still
	// finds the inputs.
	big := onnxbuild.New("ballast")
	big.InputAnyShape("x", onnxbuild.Float)
	big.OutputAnyShape("y", onnxbuild.Float)
	big.Floats("ballast", []int64{1 << 18}, make([]float32, 1<<18))
	big.Floats("two", nil, []float32{2})
	big.Node("Mul", []string{"x", "two"}, []string{"y"})
	if _, sig := load(t, rt, big.Bytes()); sig.Inputs[0].Shape != nil || sig.Outputs[0].Shape != nil {
		t.Fatalf("behind a megabyte of initializers, x and y read as %v and %v, want nil", sig.Inputs[0].Shape, sig.Outputs[0].Shape)
	}
	for _, shape := range [][]int64{{}, {3}, {1, 2, 2}} {
		in := make([]float32, tensor.NumElements(shape))
		for i := range in {
			in[i] = float32(i)
		}
		out, err := s.Run([]tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: shape, Data: floats(in...)}})
		if err != nil {
			t.Fatal(err)
		}
		for i := range in {
			in[i] *= 2
		}
		if tensor.FormatShape(out[0].Shape) != tensor.FormatShape(shape) || string(out[0].Data) != string(floats(in...)) {
			t.Errorf("x of shape %v: y = %v %x", shape, out[0].Shape, out[0].Data)
		}
	}
}

// Inspect reads the symbolic names of a model's axes from its file, which
// ONNX Runtime does not report; a tensor whose axes have none has no Axes.
func TestAxisNamesRead(t *testing.T) {
	rt := testenv.Runtime(t)
	_, sig := load(t, rt, onnxbuild.Boxes())
	want := map[string][]onnx.Axis{
		"image": {{Param: "batch"}, {}},
		"boxes": {{Param: "num_boxes"}, {}},
		"y":     {{Param: "num_boxes"}, {}},
	}
	for _, io := range append(sig.Inputs, sig.Outputs...) {
		if !slices.Equal(io.Axes, want[io.Name]) {
			t.Errorf("%s: axes %+v, want %+v", io.Name, io.Axes, want[io.Name])
		}
	}
	m := onnxbuild.New("unnamed")
	m.InputNamed("x", onnxbuild.Float, []string{""}, -1, 4)
	m.Output("y", onnxbuild.Float, 2)
	m.Node("Shape", []string{"x"}, []string{"s"})
	m.Node("Cast", []string{"s"}, []string{"y"}, onnxbuild.Int("to", onnxbuild.Float))
	if _, sig := load(t, rt, m.Bytes()); sig.Inputs[0].Axes != nil || sig.Outputs[0].Axes != nil {
		t.Errorf("axes without names read as %+v and %+v, want none", sig.Inputs[0].Axes, sig.Outputs[0].Axes)
	}
}

// A GPU provider that cannot be attached (no GPU, or this ONNX Runtime
// build has no CUDA) is an error that says so and what to do, and that
// callers tell from a broken model: ErrProviderUnavailable.
func TestProviderUnavailable(t *testing.T) {
	rt := testenv.Runtime(t)
	path := filepath.Join(testenv.Root(t), "testdata", "models", "iris", "1", "model.onnx")
	sig, err := rt.Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []onnx.Provider{{Name: onnx.ProviderCUDA}, {Name: onnx.ProviderTensorRT, DeviceID: 1}} {
		s, err := rt.NewSession(path, sig, onnx.SessionOptions{Provider: p})
		if err == nil {
			s.Close()
			t.Skipf("%s attached: this machine has a GPU and a GPU build of ONNX Runtime; the device check covers it", p)
		}
		if !errors.Is(err, onnx.ErrProviderUnavailable) || !strings.Contains(err.Error(), p.String()) || !strings.Contains(err.Error(), "fallback: cpu") {
			t.Errorf("%s: %v, want ErrProviderUnavailable naming it and the way out", p, err)
		}
		if testing.Verbose() {
			t.Log(err)
		}
	}
	if _, err := rt.NewSession(path, sig, onnx.SessionOptions{Provider: onnx.Provider{Name: "tpu"}}); err == nil || errors.Is(err, onnx.ErrProviderUnavailable) {
		t.Errorf("an unknown provider: %v", err)
	}
}

func TestParseDevice(t *testing.T) {
	for _, tt := range []struct {
		in, want, err string
	}{
		{"cpu", "cpu", ""},
		{"cuda", "cuda:0", ""},
		{"cuda:3", "cuda:3", ""},
		{"tensorrt:1", "tensorrt:1", ""},
		{"cpu:1", "", "takes no number"},
		{"cuda:x", "", "not a GPU number"},
		{"cuda:-1", "", "not a GPU number"},
		{"gpu", "", "want cpu, cuda"},
	} {
		p, err := onnx.ParseDevice(tt.in)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("ParseDevice(%q) = %v, %v; want an error saying %q", tt.in, p, err, tt.err)
		case tt.err == "" && (err != nil || p.String() != tt.want):
			t.Errorf("ParseDevice(%q) = %v, %v; want %s", tt.in, p, err, tt.want)
		}
	}
}
