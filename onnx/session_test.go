package onnx_test

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
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
