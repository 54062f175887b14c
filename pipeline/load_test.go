package pipeline_test

import (
	"encoding/binary"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/tensor"
)

// TestLoadAndRunWithARealModel: pipelines of a real model repository are
// loaded and checked against its models (one refused, saying why), and a
// job of the served one, run step by step with the model's step on ONNX
// Runtime, answers what running the same steps by hand does.
func TestLoadAndRunWithARealModel(t *testing.T) {
	iris := filepath.Join(testenv.Root(t), "testdata/models/iris/1/model.onnx")
	repo := testenv.ModelRepo(t, map[string]string{
		"iris/1/model.onnx": "@" + iris,
		"flowers/pipeline.yaml": `
inputs: [{name: cm, datatype: FP32, shape: [-1, 4]}]
steps:
  - {name: mm, op: affine, with: {mul: 10}, inputs: {x: $cm}}
  - {name: classify, model: iris, inputs: {x: mm.y}}
  - {name: best, op: topk, with: {k: 1, labels: species.txt}, inputs: {x: classify.probabilities}}
outputs: {species: best.labels, confidence: best.values}
`,
		"flowers/species.txt":  "setosa\nversicolor\nvirginica\n",
		"broken/pipeline.yaml": "steps:\n  - {name: c, model: iris, inputs: {features: $x}}\noutputs: {y: c.label}\n",
	})
	rt := testenv.Runtime(t)
	models, err := model.Load(repo, rt)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := pipeline.Load(repo, models)
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded) != 2 || loaded[0].Name != "broken" || loaded[1].Name != "flowers" {
		t.Fatalf("loaded %d pipelines: %+v", len(loaded), loaded)
	}
	if err := loaded[0].Err; err == nil || !strings.Contains(err.Error(), `"features" is not an input of model iris`) {
		t.Errorf("the broken pipeline: %v, want it refused saying why", err)
	}
	flowers := loaded[1]
	if flowers.Err != nil {
		t.Fatal(flowers.Err)
	}
	m, err := models.Lookup("iris", 0)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := rt.NewSession(m.Path, onnx.Signature{Inputs: m.Inputs, Outputs: m.Outputs}, onnx.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	// Two flowers, given in tenths of the units iris takes: the
	// pipeline's affine step scales them back before the model.
	cm := []float32{0.51, 0.35, 0.14, 0.02, 0.67, 0.30, 0.52, 0.23}
	st := pipeline.NewState([]tensor.Tensor{f32("cm", []int64{2, 4}, cm...)})
	call, _, err := flowers.Plan.Advance(st)
	if err != nil || call == nil || call.Step.Name != "classify" {
		t.Fatalf("advance: %+v %v", call, err)
	}
	out, err := sess.Run([]tensor.Tensor{call.Inputs["x"]})
	if err != nil {
		t.Fatal(err)
	}
	if err := flowers.Plan.Complete(st, "classify", out); err != nil {
		t.Fatal(err)
	}
	call, outputs, err := flowers.Plan.Advance(st)
	if err != nil || call != nil {
		t.Fatalf("last advance: %+v %v", call, err)
	}
	// By hand: iris on the flowers scaled by ten, and the best class.
	x := make([]float32, len(cm))
	for i, v := range cm {
		x[i] = v * 10
	}
	direct, err := sess.Run([]tensor.Tensor{f32("x", []int64{2, 4}, x...)})
	if err != nil {
		t.Fatal(err)
	}
	probs := direct[0]
	var want []string
	var wantConf []float32
	names := []string{"setosa", "versicolor", "virginica"}
	for r := range 2 {
		best, conf := 0, float32(-1)
		for c := range 3 {
			if v := math.Float32frombits(binary.LittleEndian.Uint32(probs.Data[4*(r*3+c):])); v > conf {
				best, conf = c, v
			}
		}
		want, wantConf = append(want, names[best]), append(wantConf, conf)
	}
	byName := map[string]tensor.Tensor{}
	for _, o := range outputs {
		byName[o.Name] = o
	}
	species := byName["species"]
	got, _ := species.Strings()
	if len(got) != 2 || string(got[0]) != want[0] || string(got[1]) != want[1] {
		t.Errorf("species %q, want %q", got, want)
	}
	conf := byName["confidence"]
	for r := range 2 {
		if v := math.Float32frombits(binary.LittleEndian.Uint32(conf.Data[4*r:])); math.Abs(float64(v-wantConf[r])) > 1e-6 {
			t.Errorf("confidence %d: %v, want %v", r, v, wantConf[r])
		}
	}
	t.Logf("species %q, confidence as by hand", got)
}

func f32(name string, shape []int64, v ...float32) tensor.Tensor {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return tensor.Tensor{Name: name, Datatype: tensor.FP32, Shape: shape, Data: b}
}
