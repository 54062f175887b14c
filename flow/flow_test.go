package flow

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/tensor"
)

func rowsOf(n int64, width int64) tensor.Tensor {
	data := make([]byte, 4*n*width)
	for i := range n * width {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(i)))
	}
	return tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{n, width}, Data: data}
}

func io(name string, dims ...int64) onnx.IO {
	return onnx.IO{Spec: tensor.Spec{Name: name, Datatype: tensor.FP32, Shape: dims}}
}

// TestRows: what a step's inputs carry and what one run of its model
// takes decide whether the step is cut.
func TestRows(t *testing.T) {
	stackable := &model.Model{Inputs: []onnx.IO{io("x", -1, 4)}, Stackable: true, Batched: []bool{true}, Config: model.Config{MaxBatchSize: 2}}
	fixedOne := &model.Model{Inputs: []onnx.IO{io("x", 1, 4)}}
	flat := &model.Model{Inputs: []onnx.IO{io("x", 4)}}
	for _, c := range []struct {
		name      string
		m         *model.Model
		in        tensor.Tensor
		rows, per int
	}{
		{"stackable", stackable, rowsOf(5, 4), 5, 2},
		{"fixed at one row", fixedOne, rowsOf(3, 4), 3, 1},
		{"no row dimension", flat, tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{4}}, -1, 0},
	} {
		if rows, per := Rows(c.m, []tensor.Tensor{c.in}); rows != c.rows || per != c.per {
			t.Errorf("%s: %d rows, %d a run; want %d, %d", c.name, rows, per, c.rows, c.per)
		}
	}
}

// TestJoin: the outputs of a step's row groups, laid end to end, come
// back joined in order; a group that failed fails the step.
func TestJoin(t *testing.T) {
	groups := [][]tensor.Tensor{{rowsOf(2, 3)}, {rowsOf(1, 3)}}
	packed, shapes, err := batching.Pack(groups)
	if err != nil {
		t.Fatal(err)
	}
	joined, err := Join(packed, (&batching.Lines{Shapes: shapes}).Parameters())
	if err != nil {
		t.Fatal(err)
	}
	if tensor.FormatShape(joined[0].Shape) != "[3 3]" || len(joined[0].Data) != 36 {
		t.Fatalf("joined %s, %d bytes", tensor.FormatShape(joined[0].Shape), len(joined[0].Data))
	}
	if v := math.Float32frombits(binary.LittleEndian.Uint32(joined[0].Data[24:])); v != 0 {
		t.Errorf("the second group's first element is %g, want 0 (its own first)", v)
	}
	failed := (&batching.Lines{Shapes: shapes, Errors: map[int]string{1: "boom"}}).Parameters()
	if _, err := Join(packed, failed); err == nil {
		t.Error("a failed row group joined")
	}
	if out, err := Join(packed, nil); err != nil || len(out) != 1 {
		t.Errorf("outputs of a step not cut: %v %v", out, err)
	}
}

// TestEmptyOutputs: a model's outputs for zero rows.
func TestEmptyOutputs(t *testing.T) {
	m := &model.Model{Outputs: []onnx.IO{io("y", -1, 4), io("z", -1, -1), io("s")}}
	got := EmptyOutputs(m)
	for i, want := range []string{"[0 4]", "[0 0]", "[0]"} {
		if s := tensor.FormatShape(got[i].Shape); s != want || len(got[i].Data) != 0 {
			t.Errorf("output %s: %s, want %s and no data", got[i].Name, s, want)
		}
	}
}
