package pipeline

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// repo is a model repository of two models, as Check sees it.
type repo map[string][2][]string

func (r repo) IONames(model string, version int64) ([]string, []string, error) {
	io, ok := r[model]
	if !ok {
		return nil, nil, fmt.Errorf("no model %q in the repository", model)
	}
	return io[0], io[1], nil
}

var models = repo{
	"melspec": {{"input"}, {"output"}},
	"embed":   {{"x"}, {"det.sigmoid_0.tmp_0"}},
}

func TestCheckOrdersSteps(t *testing.T) {
	s, err := Parse([]byte(`
inputs:
  - {name: audio, datatype: FP32, shape: [1, -1]}
steps:
  - name: frames
    op: window
    with: {axis: 2, size: 76, stride: 8}
    inputs: {x: scaled.y}
  - name: mel
    model: melspec
    inputs: {input: $audio}
  - name: scaled
    op: affine
    with: {mul: 0.1, add: 2}
    inputs: {x: mel.output}
  - name: emb
    model: embed
    inputs: {x: frames.y}
outputs: {frames: frames.y, embedding: emb.det.sigmoid_0.tmp_0}
`))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Check(s, models, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, i := range plan.Order {
		order = append(order, s.Steps[i].Name)
	}
	if !slices.Equal(order, []string{"mel", "scaled", "frames", "emb"}) {
		t.Errorf("order %v, want mel, scaled, frames, emb", order)
	}
	if len(plan.Ops) != 2 {
		t.Errorf("%d ops built, want 2", len(plan.Ops))
	}
}

// TestCheckRefusals: every reason a pipeline cannot be served is said.
func TestCheckRefusals(t *testing.T) {
	step := func(s string) string { return "steps:\n" + s + "outputs: {y: a.y}\n" }
	for _, c := range []struct {
		name, yaml, says string
	}{
		{"no steps", "outputs: {y: a.y}\n", "no steps"},
		{"an unknown field", "stepz: []\n", "field stepz not found"},
		{"an unknown model", step("  - {name: a, model: nope, inputs: {x: $in}}\n"), `no model "nope"`},
		{"a model's input not given", "steps:\n  - {name: m, model: melspec, inputs: {other: $in}}\noutputs: {y: m.output}\n", `"other" is not an input of model melspec`},
		{"an unknown op", step("  - {name: a, op: fft, inputs: {x: $in}}\n"), `unknown op "fft"`},
		{"a wrong parameter", step("  - {name: a, op: affine, with: {mull: 1}, inputs: {x: $in}}\n"), `no parameter "mull"`},
		{"an op input it does not take", step("  - {name: a, op: affine, inputs: {z: $in}}\n"), `takes x, not "z"`},
		{"a missing step", step("  - {name: a, op: affine, inputs: {x: b.y}}\n"), "b.y names no step"},
		{"a missing output", "steps:\n  - {name: m, model: melspec, inputs: {input: $in}}\noutputs: {y: m.nope}\n", `step m has no output "nope"`},
		{"an undeclared pipeline input", "inputs: [{name: audio, datatype: FP32}]\n" + step("  - {name: a, op: affine, inputs: {x: $video}}\n"), "$video is not an input of the pipeline"},
		{"a cycle", "steps:\n  - {name: a, op: affine, inputs: {x: b.y}}\n  - {name: b, op: affine, inputs: {x: a.y}}\noutputs: {y: a.y}\n", "in a cycle"},
		{"a step reading itself", step("  - {name: a, op: affine, inputs: {x: a.y}}\n"), "reads its own output"},
		{"two steps of one name", "steps:\n  - {name: a, op: affine, inputs: {x: $in}}\n  - {name: a, op: affine, inputs: {x: $in}}\noutputs: {y: a.y}\n", "two steps have that name"},
		{"model and op at once", step("  - {name: a, model: melspec, op: affine, inputs: {x: $in}}\n"), "exactly one of model, op and external"},
		{"a dotted step name", step("  - {name: a.b, op: affine, inputs: {x: $in}}\n"), "holds no '.'"},
		{"no outputs", "steps:\n  - {name: a, op: affine, inputs: {x: $in}}\n", "no outputs"},
		{"a bad reference", step("  - {name: a, op: affine, inputs: {x: nodot}}\n"), "want $input or step.output"},
		{"a bad input datatype", "inputs: [{name: in, datatype: FP33}]\n" + step("  - {name: a, op: affine, inputs: {x: $in}}\n"), `pipeline input "in"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse([]byte(c.yaml))
			if err == nil {
				_, err = Check(s, models, t.TempDir())
			}
			if err == nil || !strings.Contains(err.Error(), c.says) {
				t.Errorf("%v, want it refused saying %q", err, c.says)
			}
		})
	}
}

func TestParseRef(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Ref
		bad  bool
	}{
		{"$audio", Ref{Name: "audio"}, false},
		{"det.sigmoid_0.tmp_0", Ref{Step: "det", Name: "sigmoid_0.tmp_0"}, false},
		{"$", Ref{}, true},
		{"step", Ref{}, true},
		{".y", Ref{}, true},
		{"a.", Ref{}, true},
	} {
		got, err := ParseRef(c.in)
		if (err != nil) != c.bad || (!c.bad && got != c.want) {
			t.Errorf("ParseRef(%q) = %+v, %v", c.in, got, err)
		}
	}
}
