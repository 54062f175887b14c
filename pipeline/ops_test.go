package pipeline

import (
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/inferq/inferq/tensor"
)

func fp32(shape []int64, v ...float64) tensor.Tensor {
	return encode("x", tensor.FP32, shape, v)
}

func read(t *testing.T, x tensor.Tensor) []float64 {
	t.Helper()
	v, err := values(x)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func near(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(a[i]-b[i]) > 1e-5 {
			return false
		}
	}
	return true
}

// TestOps checks each operation against values worked out by hand (as
// numpy gives them).
func TestOps(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "labels.txt"), []byte("cat\ndog\nbird\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "dict.txt"), []byte("a\nb\nc\n"), 0o644)
	for _, c := range []struct {
		name  string
		op    string
		with  map[string]any
		x     tensor.Tensor
		out   string
		shape []int64
		want  []float64
		dt    tensor.Datatype
	}{
		{"affine", "affine", map[string]any{"mul": 0.1, "add": 2}, fp32([]int64{1, 3}, 10, 20, -30), "y", []int64{1, 3}, []float64{3, 4, -1}, tensor.FP32},
		{"affine of integers", "affine", map[string]any{"mul": 2}, encode("x", tensor.Int64, []int64{2}, []float64{3, -4}), "y", []int64{2}, []float64{6, -8}, tensor.FP32},
		{"reshape with -1", "reshape", map[string]any{"shape": []any{3, -1}}, fp32([]int64{2, 3}, 1, 2, 3, 4, 5, 6), "y", []int64{3, 2}, []float64{1, 2, 3, 4, 5, 6}, tensor.FP32},
		{"transpose 2-D", "transpose", map[string]any{"perm": []any{1, 0}}, fp32([]int64{2, 3}, 1, 2, 3, 4, 5, 6), "y", []int64{3, 2}, []float64{1, 4, 2, 5, 3, 6}, tensor.FP32},
		{"transpose 3-D", "transpose", map[string]any{"perm": []any{2, 0, 1}}, fp32([]int64{2, 1, 2}, 1, 2, 3, 4), "y", []int64{2, 2, 1}, []float64{1, 3, 2, 4}, tensor.FP32},
		{"cast to INT32 truncates", "cast", map[string]any{"to": "INT32"}, fp32([]int64{3}, 1.7, -1.7, 3), "y", []int64{3}, []float64{1, -1, 3}, tensor.Int32},
		{"cast to UINT8 clamps", "cast", map[string]any{"to": "UINT8"}, fp32([]int64{3}, -5, 300, 7), "y", []int64{3}, []float64{0, 255, 7}, tensor.Uint8},
		{"window", "window", map[string]any{"axis": 1, "size": 2, "stride": 2}, fp32([]int64{1, 5}, 1, 2, 3, 4, 5), "y", []int64{2, 1, 2}, []float64{1, 2, 3, 4}, tensor.FP32},
		{"window of a middle axis", "window", map[string]any{"axis": 1, "size": 2, "stride": 1}, fp32([]int64{2, 3, 1}, 1, 2, 3, 4, 5, 6), "y", []int64{2, 2, 2, 1}, []float64{1, 2, 4, 5, 2, 3, 5, 6}, tensor.FP32},
		{"window shorter than its size", "window", map[string]any{"axis": 1, "size": 8}, fp32([]int64{1, 5}, 1, 2, 3, 4, 5), "y", []int64{0, 1, 8}, nil, tensor.FP32},
		{"reduce max", "reduce", map[string]any{"op": "max", "axis": 1}, fp32([]int64{2, 3}, 1, 5, 2, -1, -3, -2), "y", []int64{2}, []float64{5, -1}, tensor.FP32},
		{"reduce mean of axis 0", "reduce", map[string]any{"op": "mean", "axis": 0}, fp32([]int64{2, 2}, 1, 2, 3, 6), "y", []int64{2}, []float64{2, 4}, tensor.FP32},
		{"reduce sum, negative axis", "reduce", map[string]any{"op": "sum", "axis": -1}, fp32([]int64{2, 2}, 1, 2, 3, 6), "y", []int64{2}, []float64{3, 9}, tensor.FP32},
		{"softmax", "softmax", nil, fp32([]int64{1, 3}, 1, 2, 3), "y", []int64{1, 3}, []float64{0.09003057, 0.24472847, 0.66524096}, tensor.FP32},
		{"softmax of large values", "softmax", map[string]any{"axis": 0}, fp32([]int64{2}, 1000, 1000), "y", []int64{2}, []float64{0.5, 0.5}, tensor.FP32},
		{"topk values", "topk", map[string]any{"k": 2}, fp32([]int64{2, 3}, 0.1, 0.7, 0.2, 0.5, 0.3, 0.9), "values", []int64{2, 2}, []float64{0.7, 0.2, 0.9, 0.5}, tensor.FP32},
		{"topk indices", "topk", map[string]any{"k": 2}, fp32([]int64{2, 3}, 0.1, 0.7, 0.2, 0.5, 0.3, 0.9), "indices", []int64{2, 2}, []float64{1, 2, 2, 0}, tensor.Int64},
		{"topk along axis 0", "topk", map[string]any{"k": 1, "axis": 0}, fp32([]int64{2, 2}, 1, 4, 3, 2), "indices", []int64{1, 2}, []float64{1, 0}, tensor.Int64},
		{"ctc score", "ctc_decode", map[string]any{"dict": "dict.txt"}, fp32([]int64{1, 4, 4}, 0.1, 0.8, 0.05, 0.05, 0.1, 0.6, 0.2, 0.1, 0.9, 0.05, 0.03, 0.02, 0.1, 0.1, 0.1, 0.7), "score", []int64{1}, []float64{0.75}, tensor.FP32},
	} {
		t.Run(c.name, func(t *testing.T) {
			op, err := NewOp(c.op, c.with, dir)
			if err != nil {
				t.Fatal(err)
			}
			out, err := op.Run(map[string]tensor.Tensor{"x": c.x})
			if err != nil {
				t.Fatal(err)
			}
			y, ok := out[c.out]
			if !ok {
				t.Fatalf("no output %q: %v", c.out, out)
			}
			if !slices.Equal(y.Shape, c.shape) || y.Datatype != c.dt {
				t.Fatalf("%s %v, want %s %v", y.Datatype, y.Shape, c.dt, c.shape)
			}
			if got := read(t, y); !near(got, c.want) {
				t.Errorf("got %v, want %v", got, c.want)
			}
		})
	}
}

func TestTopKLabelsAndCTCText(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "labels.txt"), []byte("cat\ndog\nbird\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "dict.txt"), []byte("a\nb\nc\n"), 0o644)
	op, err := NewOp("topk", map[string]any{"k": 1, "labels": "labels.txt"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	out, err := op.Run(map[string]tensor.Tensor{"x": fp32([]int64{2, 3}, 0.1, 0.7, 0.2, 0.5, 0.3, 0.9)})
	if err != nil {
		t.Fatal(err)
	}
	lt := out["labels"]
	labels, _ := lt.Strings()
	if len(labels) != 2 || string(labels[0]) != "dog" || string(labels[1]) != "bird" {
		t.Errorf("labels %q, want dog, bird", labels)
	}
	// Greedy CTC: steps b, b, blank, b, c -> "bb c"-less: repeats collapse
	// only when adjacent; a blank between two b's keeps both.
	for _, c := range []struct {
		name string
		with map[string]any
		best []int // the best class at each step
		want string
	}{
		{"repeats collapse", map[string]any{"dict": "dict.txt"}, []int{2, 2, 3, 3}, "bc"},
		{"a blank splits a repeat", map[string]any{"dict": "dict.txt"}, []int{2, 0, 2, 1}, "bba"},
		{"all blank", map[string]any{"dict": "dict.txt"}, []int{0, 0}, ""},
		{"space as the last class", map[string]any{"dict": "dict.txt", "space": true}, []int{1, 4, 3}, "a c"},
	} {
		t.Run(c.name, func(t *testing.T) {
			op, err := NewOp("ctc_decode", c.with, dir)
			if err != nil {
				t.Fatal(err)
			}
			classes := 5
			v := make([]float64, len(c.best)*classes)
			for s, b := range c.best {
				v[s*classes+b] = 1
			}
			shape := []int64{1, int64(len(c.best)), int64(classes)}
			// FP32 is read in place, other types converted: both alike.
			for _, x := range []tensor.Tensor{fp32(shape, v...), encode("x", tensor.FP64, shape, v)} {
				out, err := op.Run(map[string]tensor.Tensor{"x": x})
				if err != nil {
					t.Fatal(err)
				}
				tt := out["text"]
				text, _ := tt.Strings()
				if len(text) != 1 || string(text[0]) != c.want {
					t.Errorf("%s: text %q, want %q", x.Datatype, text, c.want)
				}
			}
		})
	}
}

// TestOpRefusals: every way an op's declaration can be wrong says which.
func TestOpRefusals(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		op   string
		with map[string]any
		says string
	}{
		{"fft", nil, `unknown op "fft"`},
		{"affine", map[string]any{"mull": 2}, `no parameter "mull"`},
		{"affine", map[string]any{"mul": "two"}, "mul: want a number"},
		{"reshape", nil, "shape is required"},
		{"reshape", map[string]any{"shape": []any{-1, -1}}, "at most one -1"},
		{"transpose", map[string]any{"perm": []any{0, 0}}, "not a permutation"},
		{"cast", map[string]any{"to": "BYTES"}, "numeric V2 datatype"},
		{"window", map[string]any{"axis": 1, "size": 0}, "must be positive"},
		{"window", map[string]any{"size": 3}, "axis is required"},
		{"reduce", map[string]any{"op": "median", "axis": 0}, "want one of max, min, mean, sum"},
		{"topk", map[string]any{"k": 0}, "k 0 must be positive"},
		{"topk", map[string]any{"k": 1, "labels": "../etc/passwd"}, "inside the pipeline's folder"},
		{"ctc_decode", nil, "dict is required"},
		{"ctc_decode", map[string]any{"dict": "missing.txt"}, "no such file"},
	} {
		_, err := NewOp(c.op, c.with, dir)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("op %s with %v: %v, want it refused saying %q", c.op, c.with, err, c.says)
		}
	}
}

// TestOpRunErrors: inputs an op cannot take are errors, never a panic.
func TestOpRunErrors(t *testing.T) {
	bytesIn := tensor.Tensor{Name: "x", Datatype: tensor.Bytes, Shape: []int64{1}, Data: tensor.AppendBytesElement(nil, []byte("hi"))}
	for _, c := range []struct {
		op   string
		with map[string]any
		x    tensor.Tensor
	}{
		{"affine", nil, bytesIn},
		{"reshape", map[string]any{"shape": []any{4}}, fp32([]int64{3}, 1, 2, 3)},
		{"transpose", map[string]any{"perm": []any{1, 0}}, fp32([]int64{3}, 1, 2, 3)},
		{"window", map[string]any{"axis": 3, "size": 2}, fp32([]int64{3}, 1, 2, 3)},
		{"reduce", map[string]any{"op": "max", "axis": 0}, fp32([]int64{0})},
		{"softmax", map[string]any{"axis": 2}, fp32([]int64{3}, 1, 2, 3)},
		{"ctc_decode", map[string]any{"dict": "d"}, fp32([]int64{3}, 1, 2, 3)},
		{"ctc_decode", map[string]any{"dict": "d"}, fp32([]int64{1, 2, 0})},
		{"ctc_decode", map[string]any{"dict": "d"}, tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 2, 2}, Data: make([]byte, 12)}},
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "d"), []byte("a\n"), 0o644)
		op, err := NewOp(c.op, c.with, dir)
		if err != nil {
			t.Fatalf("%s: %v", c.op, err)
		}
		if _, err := op.Run(map[string]tensor.Tensor{"x": c.x}); err == nil {
			t.Errorf("%s of %s %v: no error", c.op, c.x.Datatype, c.x.Shape)
		}
	}
}
