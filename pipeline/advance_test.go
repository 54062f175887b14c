package pipeline

import (
	"strings"
	"testing"

	"github.com/inferq/inferq/tensor"
)

// TestAdvance runs a pipeline of op, model, op, model, op steps as a
// queue would: ops in place, each model step handed out as a Call and
// its outputs handed back, the outputs last; values nobody reads later
// are not carried.
func TestAdvance(t *testing.T) {
	s, err := Parse([]byte(`
inputs: [{name: audio, datatype: FP32}]
steps:
  - {name: scaled, op: affine, with: {mul: 2}, inputs: {x: $audio}}
  - {name: mel, model: melspec, inputs: {input: scaled.y}}
  - {name: frames, op: window, with: {axis: 1, size: 2, stride: 1}, inputs: {x: mel.output}}
  - {name: emb, model: embed, inputs: {x: frames.y}}
  - {name: best, op: reduce, with: {op: max, axis: -1}, inputs: {x: emb.det.sigmoid_0.tmp_0}}
outputs: {score: best.y, frames: frames.y}
`))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Check(s, models, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := NewState([]tensor.Tensor{encode("audio", tensor.FP32, []int64{1, 3}, []float64{1, 2, 3})})

	call, out, err := plan.Advance(st)
	if err != nil || out != nil || call == nil || call.Step.Name != "mel" {
		t.Fatalf("first advance: %+v %v %v; want the mel model step", call, out, err)
	}
	if got := read(t, call.Inputs["input"]); !near(got, []float64{2, 4, 6}) {
		t.Errorf("mel's input %v, want the scaled audio", got)
	}
	if _, ok := st.Values["$audio"]; !ok {
		t.Error("the pipeline input was dropped")
	}
	// The melspec "model" answers its input plus one, and an output no
	// step reads, which is not carried on.
	if err := plan.Complete(st, "mel", []tensor.Tensor{encode("output", tensor.FP32, []int64{1, 3}, []float64{3, 5, 7}), encode("extra", tensor.FP32, []int64{1}, []float64{0})}); err != nil {
		t.Fatal(err)
	}
	if _, carried := st.Values["mel.extra"]; carried {
		t.Error("an output nothing reads is carried in the job's state")
	}
	call, _, err = plan.Advance(st)
	if err != nil || call == nil || call.Step.Name != "emb" {
		t.Fatalf("second advance: %+v %v; want the embed model step", call, err)
	}
	if x := call.Inputs["x"]; !near(read(t, x), []float64{3, 5, 5, 7}) || len(x.Shape) != 3 || x.Shape[0] != 2 {
		t.Errorf("emb's input %v %v, want two windows of two", x.Shape, read(t, x))
	}
	if err := plan.Complete(st, "emb", []tensor.Tensor{encode("det.sigmoid_0.tmp_0", tensor.FP32, []int64{2, 2}, []float64{0.1, 0.9, 0.8, 0.3})}); err != nil {
		t.Fatal(err)
	}
	call, outputs, err := plan.Advance(st)
	if err != nil || call != nil || len(outputs) != 2 {
		t.Fatalf("last advance: %+v %v %v; want the outputs", call, outputs, err)
	}
	if outputs[0].Name != "frames" || outputs[1].Name != "score" || !near(read(t, outputs[1]), []float64{0.9, 0.8}) {
		t.Errorf("outputs %v %v", outputs[0].Name, read(t, outputs[1]))
	}
}

func TestAdvanceErrors(t *testing.T) {
	s, _ := Parse([]byte(`
steps:
  - {name: shaped, op: reshape, with: {shape: [4]}, inputs: {x: $in}}
  - {name: mel, model: melspec, inputs: {input: shaped.y}}
outputs: {y: mel.output}
`))
	plan, err := Check(s, models, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := plan.Advance(NewState(nil)); err == nil || !strings.Contains(err.Error(), `the job has no input "in"`) {
		t.Errorf("a job without its input: %v", err)
	}
	st := NewState([]tensor.Tensor{encode("in", tensor.FP32, []int64{3}, []float64{1, 2, 3})})
	if _, _, err := plan.Advance(st); err == nil || !strings.Contains(err.Error(), "step shaped (op reshape)") {
		t.Errorf("an op that fails: %v, want it to name its step", err)
	}
	st = NewState([]tensor.Tensor{encode("in", tensor.FP32, []int64{2, 2}, []float64{1, 2, 3, 4})})
	if _, _, err := plan.Advance(st); err != nil {
		t.Fatal(err)
	}
	if err := plan.Complete(st, "mel", []tensor.Tensor{encode("other", tensor.FP32, []int64{1}, []float64{1})}); err == nil || !strings.Contains(err.Error(), `gave no output "output"`) {
		t.Errorf("a model step without the output read after it: %v", err)
	}
}
