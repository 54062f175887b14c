package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// TestThirdPartyModels serves models that no one here wrote, with dynamic
// batch dimensions (and, for PaddleOCR, dynamic image sizes), and checks
// that every job returns through the queue exactly what ONNX Runtime gives
// for its inputs alone. Jobs of different sizes are submitted together, so
// the worker must group them by shape.
func TestThirdPartyModels(t *testing.T) {
	models := []struct {
		name, file string
		jobs       []sizedJob
	}{
		// onnxruntime_go's test network: sums each row of [-1, 10].
		{"sum", "onnxruntime_go/example_dynamic_axes.onnx", []sizedJob{{1, nil}, {3, nil}, {2, nil}, {1, nil}, {4, nil}}},
		// onnxruntime_go's network of fixed shapes and mixed types:
		// UINT8 [1,1,1] and FP64 [1,2,2] in, INT16 and INT64 out. Not
		// batchable: run one job at a time.
		{"multitype", "onnxruntime_go/example_multitype.onnx", []sizedJob{{1, nil}, {1, nil}, {1, nil}}},
		// PaddleOCR text direction classifier, [-1, 3, -1, -1] -> [-1, 2].
		{"ocrcls", "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", []sizedJob{{1, []int64{48, 192}}, {2, []int64{48, 192}}, {1, []int64{48, 96}}, {1, []int64{48, 192}}}},
		// PaddleOCR text detector, [-1, 3, -1, -1] -> [-1, 1, -1, -1].
		{"ocrdet", "ppocr/ch_PP-OCRv4_det_infer.onnx", []sizedJob{{1, []int64{32, 32}}, {1, []int64{64, 96}}, {2, []int64{32, 32}}}},
		// PaddleOCR text recognizer, [-1, 3, 48, -1] -> [-1, -1, 6625].
		{"ocrrec", "ppocr/ch_PP-OCRv4_rec_infer.onnx", []sizedJob{{1, []int64{64}}, {1, []int64{96}}, {2, []int64{64}}}},
	}
	files := map[string]string{}
	for _, m := range models {
		files[m.name+"/1/model.onnx"] = "@" + testenv.ThirdParty(t, m.file)
		files[m.name+"/config.yaml"] = "max_queue_delay: 50ms\n"
	}
	s := startServe(t, testenv.ModelRepo(t, files))
	rng := rand.New(rand.NewPCG(11, 12))
	for _, m := range models {
		t.Run(m.name, func(t *testing.T) { assertServed(t, s, rng, m.name, m.file, m.jobs) })
	}
}

// sizedJob is a job of random inputs: rows along the batch axis, then the
// sizes of the input's other dynamic dimensions in order.
type sizedJob struct {
	rows int
	dims []int64
}

// assertServed checks that model, served by s from the third-party file,
// returns for jobs of random inputs of the given sizes what ONNX Runtime
// gives each alone, as jobs and as batch-file lines.
func assertServed(t *testing.T, s *server, rng *rand.Rand, model, file string, jobs []sizedJob) {
	t.Helper()
	ref := openDirect(t, testenv.ThirdParty(t, file))
	inputs := make([][]tensor.Tensor, len(jobs))
	for i, j := range jobs {
		inputs[i] = randomInputs(rng, ref.sig.Inputs, j.rows, j.dims...)
	}
	assertJobs(t, s, model, inputs, ref)
	assertBatchFile(t, s, model, inputs, ref)
}

// A scikit-learn random forest (converted by skl2onnx, from onnxruntime_go's
// test data) returns its class probabilities as a sequence of maps, not a
// tensor. inferq serves it, batched, with each row's map as a JSON
// document in a BYTES output.
func TestScikitLearnSequenceOfMaps(t *testing.T) {
	file := testenv.ThirdParty(t, "onnxruntime_go/sklearn_randomforest.onnx")
	s := startServe(t, testenv.ModelRepo(t, map[string]string{
		"forest/1/model.onnx": "@" + file,
		"forest/config.yaml":  "max_queue_delay: 50ms\n",
	}))
	ref := openDirect(t, file)
	rng := rand.New(rand.NewPCG(3, 1))
	inputs := make([][]tensor.Tensor, 12)
	ids := make([]string, len(inputs))
	var wg sync.WaitGroup
	for i := range inputs {
		inputs[i] = randomInputs(rng, ref.sig.Inputs, 1+i%3)
		wg.Go(func() { ids[i] = s.submit(t, "/v1/models/forest/jobs", requestJSON(inputs[i])) })
	}
	wg.Wait()
	for i, id := range ids {
		if rec := s.await(t, id, time.Minute); rec.Status != record.Succeeded {
			t.Fatalf("job %d: %+v", i, rec)
		}
		got := s.result(t, id).Outputs
		assertClose(t, fmt.Sprintf("forest job %d", i), got, ref.run(t, inputs[i]))
		label, probs := got[0], got[1]
		if probs.Datatype != tensor.Bytes || tensor.FormatShape(probs.Shape) != fmt.Sprintf("[%d]", 1+i%3) {
			t.Fatalf("probabilities: %s %v, want BYTES with one element per row", probs.Datatype, probs.Shape)
		}
		docs, _ := probs.Strings()
		for r, doc := range docs {
			var p map[string]float64
			if err := json.Unmarshal(doc, &p); err != nil {
				t.Fatalf("row %d: %q is not a JSON object: %v", r, doc, err)
			}
			best, sum := "", 0.0
			for k, v := range p {
				sum += v
				if best == "" || v > p[best] {
					best = k
				}
			}
			want := int64(binary.LittleEndian.Uint64(label.Data[8*r:]))
			if math.Abs(sum-1) > 1e-4 || best != fmt.Sprint(want) {
				t.Errorf("row %d: probabilities %s sum to %g with argmax %s; label is %d", r, doc, sum, best, want)
			}
		}
	}
	if runs := s.metrics(t)["inferq_batch_size,model=forest,stat=count"]; runs >= float64(len(ids)) {
		t.Errorf("%d jobs in %v runs: not batched", len(ids), runs)
	}
	assertBatchFile(t, s, "forest", inputs, ref)
}

// Silero VAD, versions 4 and 5: recurrent voice-activity detectors with a
// scalar sample rate and a state laid out [2, batch, hidden], so batch on
// the second axis. Neither may be batched (v5's metadata says so only
// through its state input: its state output's shape is unknown), and
// every job, each with its own state, returns what ONNX Runtime gives for
// it alone, with no batched run tried and failed on the way.
func TestRecurrentStateModels(t *testing.T) {
	models := []struct {
		name, file string
		state      map[string][]int64 // state inputs and their shapes
		reason     string             // part of why it is not batched
	}{
		{"vad5", "silero/silero_vad_v5.onnx", map[string][]int64{"state": {2, 1, 128}}, `input "state"`},
		{"vad4", "silero/silero_vad_legacy.onnx", map[string][]int64{"h": {2, 1, 64}, "c": {2, 1, 64}}, `output "hn"`},
	}
	files := map[string]string{}
	for _, m := range models {
		files[m.name+"/1/model.onnx"] = "@" + testenv.ThirdParty(t, m.file)
	}
	s := startServe(t, testenv.ModelRepo(t, files))
	listed := listedModels(t, s)
	rng := rand.New(rand.NewPCG(5, 6))
	for _, m := range models {
		t.Run(m.name, func(t *testing.T) {
			if v := listed[m.name]; len(v) == 0 || v[0].Batchable || !strings.Contains(v[0].Batching, m.reason) {
				t.Errorf("listed as %+v, want not batchable, saying %s", v, m.reason)
			}
			ref := openDirect(t, testenv.ThirdParty(t, m.file))
			const n = 6
			inputs := make([][]tensor.Tensor, n)
			for i := range inputs {
				for _, io := range ref.sig.Inputs {
					switch {
					case io.Name == "sr":
						inputs[i] = append(inputs[i], tensor.Tensor{Name: "sr", Datatype: tensor.Int64, Shape: io.Shape, Data: i64(16000)})
					case io.Name == "input":
						inputs[i] = append(inputs[i], tensor.Tensor{Name: "input", Datatype: tensor.FP32, Shape: []int64{1, 512}, Data: f32(uniform(rng, 512, 0.5)...)})
					default:
						shape := m.state[io.Name]
						// Half the jobs start from silence, half carry on
						// from a state of their own.
						scale := float32(0)
						if i%2 == 1 {
							scale = 0.3
						}
						inputs[i] = append(inputs[i], tensor.Tensor{Name: io.Name, Datatype: tensor.FP32, Shape: shape, Data: f32(uniform(rng, int(shape[0]*shape[1]*shape[2]), scale)...)})
					}
				}
			}
			assertJobs(t, s, m.name, inputs, ref)
			// The same requests as a batch file: laid end to end, each line
			// run on its own.
			assertBatchFile(t, s, m.name, inputs, ref)
			if f := s.metrics(t)["inferq_failed_runs_total,model="+m.name]; f != 0 {
				t.Errorf("%v failed runs: a batched run was tried", f)
			}
		})
	}
}

// uniform is n values drawn from [-scale, scale).
func uniform(rng *rand.Rand, n int, scale float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = scale * (2*rng.Float32() - 1)
	}
	return v
}

func i64(vs ...int64) []byte {
	b := make([]byte, 8*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
	}
	return b
}

// More of onnxruntime_go's test networks: ONNX Runtime's string operators
// (StringNormalizer, lower and upper case, as scikit-learn text pipelines
// use them) on a batch of BYTES rows; an output of more dimensions than
// its input, with its batch axis no longer first; a fixed-shape model
// whose output drops the batch axis. Each job returns what ONNX Runtime
// gives for its inputs alone. A model with a BFLOAT16 input is refused
// with the reason.
//
// The string operators need the en_US.UTF-8 locale. `make testmodels`
// compiles it into build/locale where the machine has the locale sources;
// where it could not, the test checks instead that the model is refused
// with ONNX Runtime's reason, which names the locale.
func TestMoreThirdPartyModels(t *testing.T) {
	locale := testenv.LocaleDir(t)
	if locale != "" {
		t.Setenv("LOCPATH", locale)
	} else {
		t.Log("no en_US.UTF-8 locale compiled here: checking that the string model is refused")
	}
	models := []struct {
		name, file string
		jobs       []sizedJob
	}{
		{"strings", "onnxruntime_go/example_strings.onnx", []sizedJob{{3, nil}, {1, nil}, {2, nil}, {4, nil}}},
		{"zerodim", "onnxruntime_go/example_0_dim_output.onnx", []sizedJob{{2, nil}, {2, nil}}},
		{"fanout", "onnxruntime_go/example_big_fanout.onnx", []sizedJob{{1, nil}, {1, nil}}},
	}
	files := map[string]string{
		"bf16in/1/model.onnx": "@" + testenv.ThirdParty(t, "onnxruntime_go/example_several_inputs_and_outputs.onnx"),
	}
	for _, m := range models {
		files[m.name+"/1/model.onnx"] = "@" + testenv.ThirdParty(t, m.file)
		files[m.name+"/config.yaml"] = "max_queue_delay: 50ms\n"
	}
	s := startServe(t, testenv.ModelRepo(t, files))
	reason := map[string]string{}
	for name, v := range listedModels(t, s) {
		reason[name] = v[0].State + ": " + v[0].Reason
	}
	if want := `unavailable: input "input 3" has element type ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, which V2 tensors cannot carry`; reason["bf16in"] != want {
		t.Errorf("a BFLOAT16 input: %q, want %q", reason["bf16in"], want)
	}
	if locale == "" {
		if !strings.Contains(reason["strings"], "unavailable") || !strings.Contains(reason["strings"], "locale") {
			t.Errorf("string operators without their locale: %q, want a refusal that names the locale", reason["strings"])
		}
		models = models[1:]
	}
	rng := rand.New(rand.NewPCG(13, 14))
	for _, m := range models {
		t.Run(m.name, func(t *testing.T) { assertServed(t, s, rng, m.name, m.file, m.jobs) })
	}
}

// assertJobs submits each of inputs as a job of model, all at once, so
// that the worker may batch them, and checks that every job succeeds with
// what ONNX Runtime gives for its inputs alone.
func assertJobs(t *testing.T, s *server, model string, inputs [][]tensor.Tensor, ref *direct) {
	t.Helper()
	ids := make([]string, len(inputs))
	var wg sync.WaitGroup
	for i := range inputs {
		wg.Go(func() { ids[i] = s.submit(t, "/v1/models/"+model+"/jobs", requestJSON(inputs[i])) })
	}
	wg.Wait()
	for i, id := range ids {
		if rec := s.await(t, id, 2*time.Minute); rec.Status != record.Succeeded {
			t.Fatalf("%s job %d: %+v", model, i, rec)
		}
		assertClose(t, fmt.Sprintf("%s job %d", model, i), s.result(t, id).Outputs, ref.run(t, inputs[i]))
	}
}
