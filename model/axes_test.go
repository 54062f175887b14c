package model

import (
	"strings"
	"testing"

	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/tensor"
)

// The names a model file gives its axes stop batching only where they
// say the batch is not the first axis, or that two first axes differ;
// names exporters number, and the usual names of the batch, do not.
func TestAxisNames(t *testing.T) {
	// io is a tensor of the given dims, each with a symbolic name: a
	// fixed dimension is given as its size ("4").
	io := func(name string, dims ...string) onnx.IO {
		v := onnx.IO{Spec: tensor.Spec{Name: name, Datatype: tensor.FP32}, Kind: onnx.KindTensor}
		for _, d := range dims {
			if d == "4" {
				v.Shape = append(v.Shape, 4)
				v.Axes = append(v.Axes, onnx.Axis{})
				continue
			}
			v.Shape = append(v.Shape, -1)
			if param, ok := strings.CutPrefix(d, "denoted:"); ok {
				v.Axes = append(v.Axes, onnx.Axis{Param: param, Denotation: "DATA_BATCH"})
			} else {
				v.Axes = append(v.Axes, onnx.Axis{Param: d})
			}
		}
		return v
	}
	tests := []struct {
		name    string
		inputs  []onnx.IO
		outputs []onnx.IO
		reason  string // "" when batchable
	}{
		{"unnamed", []onnx.IO{io("x", "", "4")}, []onnx.IO{io("y", "", "4")}, ""},
		{"same names", []onnx.IO{io("a", "batch", "4"), io("b", "batch", "seq")}, []onnx.IO{io("y", "batch", "seq")}, ""},
		{"names of the batch", []onnx.IO{io("x", "N", "4")}, []onnx.IO{io("y", "batch_size", "4"), io("z", "Batch")}, ""},
		{"Paddle2ONNX numbering", []onnx.IO{io("x", "p2o.DynamicDimension.0", "4")}, []onnx.IO{io("y", "p2o.DynamicDimension.3", "4")}, ""},
		{"tf2onnx numbering", []onnx.IO{io("a", "unk__1", "4"), io("b", "unk__7", "4")}, []onnx.IO{io("y", "unk__9")}, ""},
		{"PyTorch numbering", []onnx.IO{io("x", "x_dynamic_axes_1", "4")}, []onnx.IO{io("y", "Addy_dim_0", "4")}, ""},
		{"one named, one not", []onnx.IO{io("x", "tokens", "4")}, []onnx.IO{io("y", "", "4")}, ""},
		{"batch second", []onnx.IO{io("x", "seq", "batch", "4")}, []onnx.IO{io("y", "seq", "4")}, `input "x" ([-1 -1 4]) names axis 1 "batch"`},
		{"batch second in an output", []onnx.IO{io("x", "", "4")}, []onnx.IO{io("y", "time", "batch_size")}, `output "y" ([-1 -1]) names axis 1 "batch_size"`},
		{"denoted batch second", []onnx.IO{io("x", "", "denoted:")}, []onnx.IO{io("y", "")}, `names axis 1 "DATA_BATCH"`},
		{"batch-named twice", []onnx.IO{io("x", "batch", "batch_seq")}, []onnx.IO{io("y", "batch")}, ""},
		{"two first axes", []onnx.IO{io("a", "s0", "4"), io("b", "s1", "4")}, []onnx.IO{io("y", "s0")}, `input "a" ("s0") and input "b" ("s1")`},
		{"output of detections", []onnx.IO{io("x", "batch", "4")}, []onnx.IO{io("boxes", "num_detections", "4")}, `input "x" ("batch") and output "boxes" ("num_detections")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, reason := batchPlan(onnx.Signature{Inputs: tt.inputs, Outputs: tt.outputs})
			if tt.reason == "" && reason != "" || !strings.Contains(reason, tt.reason) {
				t.Errorf("reason %q, want %q", reason, tt.reason)
			}
		})
	}
}

// Model names may hold dots, never '~' (the dot's spelling in NATS
// subjects, which must stay unambiguous), nor anything a path or subject
// would read otherwise.
func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"iris": true, "iris.v1.5": true, "resnet50-v1_5": true, strings.Repeat("a", 64): true,
		"": false, ".hidden": false, "-x": false, "a~b": false, "a/b": false, "a b": false,
		"a*": false, "a>": false, strings.Repeat("a", 65): false,
	} {
		if ValidName(name) != want {
			t.Errorf("ValidName(%q) = %v, want %v", name, !want, want)
		}
	}
}
