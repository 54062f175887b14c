package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// doubleOne doubles x [1, 4]: a model whose first dimension is fixed at
// 1, so a step of more rows runs a row at a time.
func doubleOne() []byte {
	m := onnxbuild.New("double_one")
	m.Input("x", onnxbuild.Float, 1, 4)
	m.Output("y", onnxbuild.Float, 1, 4)
	m.Floats("two", []int64{1}, []float32{2})
	m.Node("Mul", []string{"x", "two"}, []string{"y"})
	return m.Bytes()
}

// chainYAML: a model fixed at one row, an operation, a batched model
// (max batch size 2) and an operation over what it gives.
const chainYAML = `
inputs:
  - {name: x, datatype: FP32, shape: [-1, 4]}
steps:
  - name: double
    model: one
    inputs: {x: $x}
  - name: shifted
    op: affine
    with: {mul: 1, add: 1}
    inputs: {x: double.y}
  - name: sum
    model: rowsum
    inputs: {x: shifted.y}
  - name: best
    op: topk
    with: {k: 1, axis: 0}
    inputs: {x: sum.y}
outputs: {total: sum.y, doubled: double.y, top: best.indices}
`

// TestPipelineThroughQueues serves a pipeline of two models and two
// operations, each model step a job on its model's queue: the answers
// equal the same steps run by hand (ONNX Runtime alone, the operations
// called directly), for a step fanned out a row at a time into a model
// fixed at one row, past a max batch size, and for one row.
func TestPipelineThroughQueues(t *testing.T) {
	dir := t.TempDir()
	one, sum := filepath.Join(dir, "one.onnx"), filepath.Join(dir, "rowsum.onnx")
	writeFile(t, one, doubleOne())
	writeFile(t, sum, onnxbuild.RowSum())
	repo := testenv.ModelRepo(t, map[string]string{
		"one/1/model.onnx":    "@" + one,
		"rowsum/1/model.onnx": "@" + sum,
		"rowsum/config.yaml":  "max_batch_size: 2\n",
		"chain/pipeline.yaml": chainYAML,
		"plain/pipeline.yaml": strings.Split(chainYAML, "  - name: best")[0] + "outputs: {total: sum.y}\n",
	})
	s := startServe(t, repo)
	refOne, refSum := openDirect(t, one), openDirect(t, sum)
	affine, err := pipeline.NewOp("affine", map[string]any{"mul": 1, "add": 1}, "")
	if err != nil {
		t.Fatal(err)
	}
	topk, err := pipeline.NewOp("topk", map[string]any{"k": 1, "axis": 0}, "")
	if err != nil {
		t.Fatal(err)
	}
	byHand := func(x tensor.Tensor) []tensor.Tensor {
		rows, err := batching.Split([]tensor.Tensor{x}, ones(int(x.Shape[0])))
		if err != nil {
			t.Fatal(err)
		}
		var doubled [][]tensor.Tensor
		for _, r := range rows {
			doubled = append(doubled, refOne.run(t, r))
		}
		d, err := batching.Stack(doubled, nil)
		if err != nil {
			t.Fatal(err)
		}
		shifted, err := affine.Run(map[string]tensor.Tensor{"x": d[0]})
		if err != nil {
			t.Fatal(err)
		}
		in := shifted["y"]
		in.Name = "x"
		total := refSum.run(t, []tensor.Tensor{in})[0]
		best, err := topk.Run(map[string]tensor.Tensor{"x": total})
		if err != nil {
			t.Fatal(err)
		}
		doubledOut, totalOut, top := d[0], total, best["indices"]
		doubledOut.Name, totalOut.Name, top.Name = "doubled", "total", "top"
		return []tensor.Tensor{doubledOut, top, totalOut} // sorted by name
	}
	rng := rand.New(rand.NewPCG(3, 5))
	for _, rows := range []int{5, 1, 3} {
		x := floats(rng, "x", int64(rows), 4)
		id := s.submit(t, "/v1/models/chain/jobs", requestJSON([]tensor.Tensor{x}))
		rec := s.await(t, id, time.Minute)
		if rec.Status != record.Succeeded {
			t.Fatalf("%d rows: %+v", rows, rec)
		}
		if rec.Model != "chain" || len(rec.Steps) != 2 || rec.Steps[0].Name != "double" || rec.Steps[1].Name != "sum" {
			t.Fatalf("%d rows: steps %+v", rows, rec.Steps)
		}
		for _, st := range rec.Steps {
			if st.Status != record.Succeeded || st.Attempts != 1 || st.StartedAt == nil || st.FinishedAt == nil {
				t.Errorf("%d rows: step %+v", rows, st)
			}
		}
		got := s.result(t, id)
		if got.ModelName != "chain" {
			t.Errorf("result names model %q, want the pipeline", got.ModelName)
		}
		assertClose(t, fmt.Sprintf("chain of %d rows", rows), got.Outputs, byHand(x))
	}

	// The pipeline's results stream has each job once, with its response.
	events, stop := openSSE(t, s.url+"/v1/models/chain/results?from=start", "")
	seen := map[string]bool{}
	for len(seen) < 3 {
		select {
		case ev := <-events:
			var rec struct {
				ID, Model, Status string
				Response          json.RawMessage
			}
			if err := json.Unmarshal([]byte(ev.data), &rec); err != nil || rec.Model != "chain" || rec.Status != "succeeded" || !strings.Contains(string(rec.Response), `"model_name":"chain"`) {
				t.Fatalf("event %s (%v)", ev.data, err)
			}
			if seen[rec.ID] {
				t.Fatalf("job %s streamed twice", rec.ID)
			}
			seen[rec.ID] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("the results stream of chain gave %d jobs of 3", len(seen))
		}
	}
	stop()

	// Zero rows flow on to empty outputs.
	id := s.submit(t, "/v1/models/plain/jobs", requestJSON([]tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{0, 4}, Data: []byte{}}}))
	if rec := s.await(t, id, time.Minute); rec.Status != record.Succeeded {
		t.Fatalf("zero rows: %+v", rec)
	}
	if out := s.result(t, id).Outputs; len(out) != 1 || tensor.FormatShape(out[0].Shape) != "[0]" {
		t.Fatalf("zero rows gave %+v, want total of shape [0]", out)
	}

	// The synchronous call, and the pipeline's metadata.
	x := floats(rng, "x", 2, 4)
	r := do(t, "POST", s.url+"/v2/models/chain/infer", requestJSON([]tensor.Tensor{x}))
	if r.code != http.StatusOK {
		t.Fatalf("infer: %d %s", r.code, r.body)
	}
	resp, err := tensor.DecodeResponse(r.body)
	if err != nil {
		t.Fatal(err)
	}
	assertClose(t, "infer", resp.Outputs, byHand(x))
	var meta struct {
		Inputs, Outputs []struct {
			Name, Datatype string
			Shape          []int64
		}
	}
	do(t, "GET", s.url+"/v2/models/chain", nil).json(t, &meta)
	if len(meta.Inputs) != 1 || meta.Inputs[0].Name != "x" || len(meta.Outputs) != 3 ||
		meta.Outputs[0].Name != "doubled" || meta.Outputs[0].Datatype != "FP32" || meta.Outputs[1].Datatype != "INT64" {
		t.Errorf("metadata %+v", meta)
	}

	var list struct {
		Models []struct {
			Name     string
			Versions []struct {
				State string
				Steps []struct{ Name, Model, Op string }
			}
		}
	}
	do(t, "GET", s.url+"/v1/models", nil).json(t, &list)
	var steps []string
	for _, m := range list.Models {
		if m.Name == "chain" && len(m.Versions) == 1 && m.Versions[0].State == "ready" {
			for _, st := range m.Versions[0].Steps {
				steps = append(steps, st.Name+":"+st.Model+st.Op)
			}
		}
	}
	if got := strings.Join(steps, " "); got != "double:one shifted:affine sum:rowsum best:topk" {
		t.Errorf("GET /v1/models shows chain's steps as %q", got)
	}

	// A request the declared inputs refuse is a 400 that says why.
	bad := do(t, "POST", s.url+"/v1/models/chain/jobs", requestJSON([]tensor.Tensor{floats(rng, "x", 2, 3)}))
	if bad.code != http.StatusBadRequest || !strings.Contains(string(bad.body), "dimension 1 must be 4") {
		t.Errorf("a [2, 3] input: %d %s", bad.code, bad.body)
	}
}

// TestPipelineRefusals: a pipeline that cannot be served is listed with
// the reason, as a refused model is, and its jobs are refused.
func TestPipelineRefusals(t *testing.T) {
	dir := t.TempDir()
	sum := filepath.Join(dir, "rowsum.onnx")
	writeFile(t, sum, onnxbuild.RowSum())
	cases := map[string]struct{ yaml, reason string }{
		"nomodel":  {"steps: [{name: a, model: nosuch, inputs: {x: $x}}]\noutputs: {y: a.y}\n", `"nosuch" is not in the repository`},
		"noop":     {"steps: [{name: a, op: blur, inputs: {x: $x}}]\noutputs: {y: a.y}\n", `unknown op "blur"`},
		"badparam": {"steps: [{name: a, model: rowsum, inputs: {x: $x}}, {name: b, op: affine, with: {mul: one}, inputs: {x: a.y}}]\noutputs: {y: b.y}\n", "mul"},
		"missing":  {"steps: [{name: a, model: rowsum, inputs: {x: c.y}}]\noutputs: {y: a.y}\n", "c.y names no step"},
		"cycle":    {"steps: [{name: a, model: rowsum, inputs: {x: b.y}}, {name: b, op: affine, inputs: {x: a.y}}]\noutputs: {y: b.y}\n", "cycle"},
		"opsonly":  {"steps: [{name: a, op: affine, inputs: {x: $x}}]\noutputs: {y: a.y}\n", "no model step"},
	}
	files := map[string]string{"rowsum/1/model.onnx": "@" + sum}
	for name, c := range cases {
		files[name+"/pipeline.yaml"] = c.yaml
	}
	repo := testenv.ModelRepo(t, files)
	s := startServe(t, repo, "--model-poll", "100ms")
	var list struct {
		Models []struct {
			Name     string
			Versions []struct{ State, Reason string }
		}
	}
	do(t, "GET", s.url+"/v1/models", nil).json(t, &list)
	reasons := map[string]string{}
	for _, m := range list.Models {
		if len(m.Versions) == 1 && m.Versions[0].State == "unavailable" {
			reasons[m.Name] = m.Versions[0].Reason
		}
	}
	for name, c := range cases {
		if !strings.Contains(reasons[name], c.reason) {
			t.Errorf("pipeline %s: refused for %q, want a reason with %q", name, reasons[name], c.reason)
		}
		r := do(t, "POST", s.url+"/v1/models/"+name+"/jobs", requestJSON([]tensor.Tensor{floats(rand.New(rand.NewPCG(1, 1)), "x", 1, 4)}))
		if r.code < 400 || r.code >= 500 && r.code != http.StatusServiceUnavailable {
			t.Errorf("a job of refused pipeline %s: %d %s", name, r.code, r.body)
		}
	}

	// Fixed in place, a pipeline is served without a restart.
	writeFile(t, filepath.Join(repo, "nomodel", "pipeline.yaml"), []byte("steps: [{name: a, model: rowsum, inputs: {x: $x}}]\noutputs: {y: a.y}\n"))
	eventually(t, 10*time.Second, "the fixed pipeline served", func() bool {
		r := do(t, "POST", s.url+"/v1/models/nomodel/jobs", requestJSON([]tensor.Tensor{floats(rand.New(rand.NewPCG(1, 1)), "x", 1, 4)}))
		return r.code == http.StatusAccepted
	})
}

// TestPipelineStepDeadLetterReplay: a pipeline job whose second model
// step fails is dead-lettered under the pipeline, naming its step; once
// that step's model is fixed, its replay resumes at that step, and the
// step before it does not run again.
func TestPipelineStepDeadLetterReplay(t *testing.T) {
	repo := pipelineModels(t, map[string]string{"fives/config.yaml": "max_attempts: 2\n", "pipe/pipeline.yaml": doubleThenFives})
	s := startServe(t, repo, "--model-poll", "200ms")
	x := floats(rand.New(rand.NewPCG(2, 2)), "x", 3, 4)
	id := s.submit(t, "/v1/models/pipe/jobs", requestJSON([]tensor.Tensor{x}))
	rec := s.await(t, id, time.Minute)
	if rec.Status != record.Failed || !strings.HasPrefix(rec.Error, "step fives (model fives): ") {
		t.Fatalf("want failed at step fives: %+v", rec)
	}
	if len(rec.Steps) != 2 || rec.Steps[0].Status != record.Succeeded || rec.Steps[1].Status != record.Failed || rec.Steps[1].Attempts != 2 {
		t.Fatalf("steps %+v", rec.Steps)
	}
	var letters struct {
		DeadLetters []struct {
			JobID string `json:"job_id"`
			Step  string
		} `json:"dead_letters"`
	}
	do(t, "GET", s.url+"/v1/models/pipe/dead-letters", nil).json(t, &letters)
	if len(letters.DeadLetters) != 1 || letters.DeadLetters[0].JobID != id || letters.DeadLetters[0].Step != "fives" {
		t.Fatalf("dead letters of pipe: %+v", letters)
	}
	// Fix the step's model: a row sum takes any width.
	fixed := filepath.Join(repo, "fives", "2", "model.onnx")
	writeFile(t, fixed, onnxbuild.RowSum())
	eventually(t, 10*time.Second, "version 2 of fives loaded", func() bool {
		return strings.Contains(string(do(t, "GET", s.url+"/v2/models/fives", nil).body), `"2"`)
	})
	r := do(t, "POST", s.url+"/v1/models/pipe/dead-letters/"+id+"/replay", nil)
	if r.code != http.StatusAccepted {
		t.Fatalf("replay: %d %s", r.code, r.body)
	}
	var again record.Record
	r.json(t, &again)
	done := s.await(t, again.ID, time.Minute)
	if done.Status != record.Succeeded || done.ReplayOf != id {
		t.Fatalf("replay: %+v", done)
	}
	if len(done.Steps) != 2 || done.Steps[0].Name != "double" || done.Steps[1].Name != "fives" || done.Steps[1].Attempts != 1 {
		t.Fatalf("replay steps %+v", done.Steps)
	}
	if ran := s.metrics(t)["inferq_step_finished_total,pipeline=pipe,status=succeeded,step=double"]; ran != 1 {
		t.Errorf("step double ran %v times, want once: the replay resumes after it", ran)
	}
	want := make([]float32, 3)
	for i := range 3 {
		for j := range 4 {
			want[i] += 2 * math.Float32frombits(binary.LittleEndian.Uint32(x.Data[4*(4*i+j):]))
		}
	}
	got := s.result(t, again.ID).Outputs[0]
	for i := range 3 {
		if v := math.Float32frombits(binary.LittleEndian.Uint32(got.Data[4*i:])); math.Abs(float64(v-want[i])) > 1e-4 {
			t.Fatalf("row %d: %g, want %g", i, v, want[i])
		}
	}
}

// doubleThenFives: model one, then fives, which fails the width of 4 it
// is given.
const doubleThenFives = "steps:\n  - {name: double, model: one, inputs: {x: $x}}\n  - {name: fives, model: fives, inputs: {x: double.y}}\noutputs: {y: fives.y}\n"

// pipelineModels is a model repository of files (as testenv.ModelRepo
// takes them) and the small models the pipeline tests chain: one
// (doubles [1, 4], fixed at one row), rowsum (sums each row) and fives
// (sums in fives: fails a width of 4).
func pipelineModels(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range map[string][]byte{"one": doubleOne(), "rowsum": onnxbuild.RowSum(), "fives": onnxbuild.FivesSum()} {
		path := filepath.Join(dir, name+".onnx")
		writeFile(t, path, b)
		files[name+"/1/model.onnx"] = "@" + path
	}
	return testenv.ModelRepo(t, files)
}

func ones(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = 1
	}
	return out
}

// floats is an FP32 tensor of random values.
func floats(rng *rand.Rand, name string, shape ...int64) tensor.Tensor {
	n := tensor.NumElements(shape)
	data := make([]byte, 4*n)
	for i := range n {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(rng.Float32()*2-1))
	}
	return tensor.Tensor{Name: name, Datatype: tensor.FP32, Shape: shape, Data: data}
}

// TestPipelineOfRealModels runs PaddleOCR's text direction classifier
// inside a pipeline (scaled input, the model, top-1 with labels read from
// the pipeline's folder), as jobs and as a batch file, and checks each
// answer against the same steps run by hand.
func TestPipelineOfRealModels(t *testing.T) {
	file := testenv.ThirdParty(t, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
	ref := openDirect(t, file)
	in, out := ref.sig.Inputs[0].Name, ref.sig.Outputs[0].Name
	yaml := fmt.Sprintf(`inputs: [{name: image, datatype: FP32, shape: [-1, 3, 48, 192]}]
steps:
  - {name: scale, op: affine, with: {mul: 0.5}, inputs: {x: $image}}
  - {name: cls, model: ocrcls, inputs: {%s: scale.y}}
  - {name: best, op: topk, with: {k: 1, labels: labels.txt}, inputs: {x: cls.%s}}
outputs: {probs: cls.%s, label: best.labels, score: best.values}
`, in, out, out)
	s := startServe(t, testenv.ModelRepo(t, map[string]string{
		"ocrcls/1/model.onnx":     "@" + file,
		"ocrcls/config.yaml":      "max_batch_size: 8\nmax_queue_delay: 20ms\n",
		"direction/pipeline.yaml": yaml,
		"direction/labels.txt":    "0\n180\n",
	}))
	scale, err := pipeline.NewOp("affine", map[string]any{"mul": 0.5}, "")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "labels.txt"), []byte("0\n180\n"))
	best, err := pipeline.NewOp("topk", map[string]any{"k": 1, "labels": "labels.txt"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	byHand := func(x tensor.Tensor) []tensor.Tensor {
		y, err := scale.Run(map[string]tensor.Tensor{"x": x})
		if err != nil {
			t.Fatal(err)
		}
		scaled := y["y"]
		scaled.Name = in
		probs := ref.run(t, []tensor.Tensor{scaled})[0]
		top, err := best.Run(map[string]tensor.Tensor{"x": probs})
		if err != nil {
			t.Fatal(err)
		}
		label, score := top["labels"], top["values"]
		probs.Name, label.Name, score.Name = "probs", "label", "score"
		return []tensor.Tensor{label, probs, score} // sorted by name
	}
	rng := rand.New(rand.NewPCG(7, 9))
	var inputs [][]tensor.Tensor
	var ids []string
	for _, rows := range []int64{1, 3, 1, 2} {
		x := floats(rng, "image", rows, 3, 48, 192)
		inputs = append(inputs, []tensor.Tensor{x})
		ids = append(ids, s.submit(t, "/v1/models/direction/jobs", requestJSON([]tensor.Tensor{x})))
	}
	for i, id := range ids {
		if rec := s.await(t, id, time.Minute); rec.Status != record.Succeeded {
			t.Fatalf("job %d: %+v", i, rec)
		}
		assertClose(t, fmt.Sprintf("job %d", i), s.result(t, id).Outputs, byHand(inputs[i][0]))
	}
	var file2 strings.Builder
	for _, in := range inputs {
		file2.WriteString(string(requestJSON(in)) + "\n")
	}
	rec := postBatch(t, s, "direction", strings.NewReader(file2.String()))
	if rec = awaitBatch(t, s, rec.ID, 2*time.Minute); rec.Counts.Succeeded != int64(len(inputs)) {
		t.Fatalf("batch %+v", rec)
	}
	assertOutputLines(t, s, rec.ID, len(inputs), func(i int) ([]tensor.Tensor, string) { return byHand(inputs[i][0]), "" })
}

// TestPipelineStepRetry: a model step that fails is retried by its
// model's max_attempts, and the job goes on once it succeeds; here the
// step's model is fixed (a new version) after its first failure.
func TestPipelineStepRetry(t *testing.T) {
	repo := pipelineModels(t, map[string]string{"fives/config.yaml": "max_attempts: 10\n", "pipe/pipeline.yaml": doubleThenFives})
	s := startServe(t, repo, "--model-poll", "100ms")
	id := s.submit(t, "/v1/models/pipe/jobs", requestJSON([]tensor.Tensor{floats(rand.New(rand.NewPCG(2, 3)), "x", 2, 4)}))
	eventually(t, 30*time.Second, "the step's first failure", func() bool {
		return s.metrics(t)["inferq_failed_runs_total,model=fives"] >= 1
	})
	writeFile(t, filepath.Join(repo, "fives", "2", "model.onnx"), onnxbuild.RowSum())
	rec := s.await(t, id, time.Minute)
	if rec.Status != record.Succeeded || len(rec.Steps) != 2 {
		t.Fatalf("%+v", rec)
	}
	if st := rec.Steps[1]; st.Name != "fives" || st.Attempts < 2 || st.Error != "" || rec.Steps[0].Attempts != 1 {
		t.Fatalf("steps %+v: want fives retried, double run once", rec.Steps)
	}
}

// TestPipelineCancelBetweenSteps: a pipeline job waiting for its next
// model step is queued again, and a cancel stops it there.
func TestPipelineCancelBetweenSteps(t *testing.T) {
	repo := pipelineModels(t, map[string]string{
		"pipe/pipeline.yaml": "steps:\n  - {name: double, model: one, inputs: {x: $x}}\n  - {name: sum, model: rowsum, inputs: {x: double.y}}\noutputs: {y: sum.y}\n",
	})
	// No worker serves rowsum: the job waits at its second step.
	s := startServe(t, repo, "--only", "one")
	id := s.submit(t, "/v1/models/pipe/jobs", requestJSON([]tensor.Tensor{floats(rand.New(rand.NewPCG(2, 4)), "x", 2, 4)}))
	var rec record.Record
	eventually(t, 30*time.Second, "the job waiting at step sum", func() bool {
		do(t, "GET", s.url+"/v1/jobs/"+id, nil).json(t, &rec)
		return rec.Status == record.Queued && len(rec.Steps) == 2 && rec.Steps[0].Status == record.Succeeded && rec.Steps[1].Status == record.Queued
	})
	if rec.StartedAt == nil {
		t.Errorf("a job between steps lost its start time: %+v", rec)
	}
	if r := do(t, "DELETE", s.url+"/v1/jobs/"+id, nil); r.code != http.StatusOK {
		t.Fatalf("cancel between steps: %d %s", r.code, r.body)
	}
	if got := s.await(t, id, 10*time.Second); got.Status != record.Cancelled {
		t.Fatalf("%+v", got)
	}
}

// TestPipelineWorkerKilledMidLoad: the worker process of a pipeline's
// second model is killed (SIGKILL) while it holds steps; a new one takes
// them. Every job ends succeeded, its first step run once: nothing lost,
// nothing run again that had finished.
func TestPipelineWorkerKilledMidLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes; skipped with -short")
	}
	ns := testenv.JetStream(t)
	dir := t.TempDir()
	one, slow := filepath.Join(dir, "one.onnx"), filepath.Join(dir, "slow.onnx")
	writeFile(t, one, doubleOne())
	writeFile(t, slow, onnxbuild.Repeat(4, 1000, 3)) // [-1, 4]: a few ms a run
	repo := testenv.ModelRepo(t, map[string]string{
		"one/1/model.onnx":   "@" + one,
		"slow/1/model.onnx":  "@" + slow,
		"slow/config.yaml":   "max_batch_size: 4\nintra_op_threads: 1\n",
		"pipe/pipeline.yaml": "steps:\n  - {name: double, model: one, inputs: {x: $x}}\n  - {name: slow, model: slow, inputs: {x: double.y}}\noutputs: {y: slow.y}\n",
	})
	objects := t.TempDir()
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", objects, "--log-level", "warn"}
	s := startAPI(t, common...)
	worker := append(common, "--ack-wait", "2s", "--only")
	startWorkerProcess(t, append(worker, "one")...)
	victim := startWorkerProcess(t, append(worker, "slow")...)
	rng := rand.New(rand.NewPCG(5, 5))
	ids := make([]string, 60)
	for i := range ids {
		ids[i] = s.submit(t, "/v1/models/pipe/jobs", requestJSON([]tensor.Tensor{floats(rng, "x", 1, 4)}))
	}
	eventually(t, time.Minute, "a few jobs done", func() bool {
		var rec record.Record
		do(t, "GET", s.url+"/v1/jobs/"+ids[5], nil).json(t, &rec)
		return rec.Status == record.Succeeded
	})
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	startWorkerProcess(t, append(worker, "slow")...)
	retried := 0
	for _, id := range ids {
		rec := s.await(t, id, 2*time.Minute)
		if rec.Status != record.Succeeded || len(rec.Steps) != 2 || rec.Steps[0].Attempts != 1 {
			t.Fatalf("job %s: %+v", id, rec)
		}
		if rec.Steps[1].Attempts > 1 {
			retried++
		}
	}
	t.Logf("%d of %d jobs had their second step run again after the kill", retried, len(ids))
}

// TestPipelineExternalStep: the middle step of a pipeline is run by user
// code over HTTP leases: a lease carries the step's inputs, an answer
// moves the job on; an error answer and a lease left to expire are each
// an attempt, the step offered again; a lease answered late, or made
// up, is a 404.
func TestPipelineExternalStep(t *testing.T) {
	repo := pipelineModels(t, map[string]string{
		"pipe/pipeline.yaml": `steps:
  - {name: double, model: one, inputs: {x: $x}}
  - {name: triple, external: triple, lease_timeout: 1s, max_attempts: 4, inputs: {v: double.y}}
  - {name: sum, model: rowsum, inputs: {x: triple.w}}
outputs: {total: sum.y, tripled: triple.w}
`,
	})
	s := startServe(t, repo)
	leases := s.url + "/v1/pipelines/pipe/steps/triple/leases"
	if r := do(t, "POST", leases, nil); r.code != http.StatusNoContent {
		t.Fatalf("a lease with nothing queued: %d %s", r.code, r.body)
	}
	if r := do(t, "POST", s.url+"/v1/pipelines/pipe/steps/double/leases", nil); r.code != http.StatusNotFound {
		t.Errorf("a lease of a model step: %d %s", r.code, r.body)
	}
	x := floats(rand.New(rand.NewPCG(6, 6)), "x", 3, 4)
	id := s.submit(t, "/v1/models/pipe/jobs", requestJSON([]tensor.Tensor{x}))
	type leased struct {
		Lease, Job string
		Attempt    int
		Request    json.RawMessage
	}
	take := func() leased {
		t.Helper()
		var l leased
		eventually(t, 30*time.Second, "a lease", func() bool {
			r := do(t, "POST", leases+"?wait=2s", nil)
			if r.code == http.StatusOK {
				r.json(t, &l)
				return true
			}
			if r.code != http.StatusNoContent {
				t.Fatalf("lease: %d %s", r.code, r.body)
			}
			return false
		})
		return l
	}
	// First attempt: an error.
	l := take()
	if l.Job != id || l.Attempt != 1 {
		t.Fatalf("lease %+v", l)
	}
	if r := do(t, "POST", s.url+"/v1/leases/"+l.Lease, []byte(`{"error":"out of GPU memory"}`)); r.code != http.StatusOK {
		t.Fatalf("an error answer: %d %s", r.code, r.body)
	}
	// Second: left to expire (lease_timeout 1s).
	if l = take(); l.Attempt != 2 {
		t.Fatalf("after an error answer: %+v", l)
	}
	expired := l.Lease
	// Third: answered.
	if l = take(); l.Attempt != 3 {
		t.Fatalf("after an expired lease: %+v", l)
	}
	if r := do(t, "POST", s.url+"/v1/leases/"+expired, []byte(`{"error":"late"}`)); r.code != http.StatusNotFound {
		t.Errorf("an expired lease answered: %d %s", r.code, r.body)
	}
	if r := do(t, "POST", s.url+"/v1/leases/bm90LWEtbGVhc2U", []byte(`{"error":"x"}`)); r.code != http.StatusNotFound {
		t.Errorf("a made-up lease: %d %s", r.code, r.body)
	}
	req, err := tensor.DecodeRequest(l.Request, tensor.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(req.Inputs) != 1 || req.Inputs[0].Name != "v" || tensor.FormatShape(req.Inputs[0].Shape) != "[3 4]" {
		t.Fatalf("the lease's request %+v", req.Inputs)
	}
	w := req.Inputs[0]
	w.Name, w.Data = "w", slices.Clone(w.Data)
	for i := 0; i < len(w.Data); i += 4 {
		binary.LittleEndian.PutUint32(w.Data[i:], math.Float32bits(3*math.Float32frombits(binary.LittleEndian.Uint32(w.Data[i:]))))
	}
	if r := do(t, "POST", s.url+"/v1/leases/"+l.Lease, (&tensor.Response{Outputs: []tensor.Tensor{w}}).AppendJSON(nil)); r.code != http.StatusOK {
		t.Fatalf("answer: %d %s", r.code, r.body)
	}
	rec := s.await(t, id, time.Minute)
	if rec.Status != record.Succeeded || len(rec.Steps) != 3 || rec.Steps[1].Name != "triple" || rec.Steps[1].Attempts != 3 {
		t.Fatalf("%+v", rec)
	}
	out := s.result(t, id).Outputs
	for i := range 3 {
		var want float32
		for j := range 4 {
			want += 6 * math.Float32frombits(binary.LittleEndian.Uint32(x.Data[4*(4*i+j):]))
		}
		if got := math.Float32frombits(binary.LittleEndian.Uint32(out[0].Data[4*i:])); math.Abs(float64(got-want)) > 1e-4 {
			t.Fatalf("total row %d: %g, want %g", i, got, want)
		}
	}
}
