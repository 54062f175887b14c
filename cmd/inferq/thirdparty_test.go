package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/tensor"
)

// TestThirdPartyModels serves models that no one here wrote, with dynamic
// batch dimensions (and, for PaddleOCR, dynamic image sizes), and checks
// that every job returns through the queue exactly what ONNX Runtime gives
// for its inputs alone. Jobs of different sizes are submitted together, so
// the worker must group them by shape.
func TestThirdPartyModels(t *testing.T) {
	type job struct {
		rows int
		dims []int64
	}
	models := []struct {
		name, file string
		jobs       []job
	}{
		// onnxruntime_go's test network: sums each row of [-1, 10].
		{"sum", "onnxruntime_go/example_dynamic_axes.onnx", []job{{1, nil}, {3, nil}, {2, nil}, {1, nil}, {4, nil}}},
		// onnxruntime_go's network of fixed shapes and mixed types:
		// UINT8 [1,1,1] and FP64 [1,2,2] in, INT16 and INT64 out. Not
		// batchable: run one job at a time.
		{"multitype", "onnxruntime_go/example_multitype.onnx", []job{{1, nil}, {1, nil}, {1, nil}}},
		// PaddleOCR text direction classifier, [-1, 3, -1, -1] -> [-1, 2].
		{"ocrcls", "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", []job{{1, []int64{48, 192}}, {2, []int64{48, 192}}, {1, []int64{48, 96}}, {1, []int64{48, 192}}}},
		// PaddleOCR text detector, [-1, 3, -1, -1] -> [-1, 1, -1, -1].
		{"ocrdet", "ppocr/ch_PP-OCRv4_det_infer.onnx", []job{{1, []int64{32, 32}}, {1, []int64{64, 96}}, {2, []int64{32, 32}}}},
		// PaddleOCR text recognizer, [-1, 3, 48, -1] -> [-1, -1, 6625].
		{"ocrrec", "ppocr/ch_PP-OCRv4_rec_infer.onnx", []job{{1, []int64{64}}, {1, []int64{96}}, {2, []int64{64}}}},
	}
	files := map[string]string{}
	for _, m := range models {
		files[m.name+"/1/model.onnx"] = "@" + testenv.ThirdParty(t, m.file)
		files[m.name+"/config.yaml"] = "max_queue_delay: 50ms\n"
	}
	s := startServe(t, testenv.ModelRepo(t, files))
	rng := rand.New(rand.NewPCG(11, 12))
	for _, m := range models {
		t.Run(m.name, func(t *testing.T) {
			ref := openDirect(t, testenv.ThirdParty(t, m.file))
			inputs := make([][]tensor.Tensor, len(m.jobs))
			ids := make([]string, len(m.jobs))
			for i, j := range m.jobs {
				inputs[i] = randomInputs(rng, ref.sig.Inputs, j.rows, j.dims...)
			}
			var wg sync.WaitGroup
			for i := range m.jobs {
				wg.Go(func() { ids[i] = s.submit(t, "/v1/models/"+m.name+"/jobs", requestJSON(inputs[i])) })
			}
			wg.Wait()
			for i, id := range ids {
				if rec := s.await(t, id, 2*time.Minute); rec.Status != jobs.Succeeded {
					t.Fatalf("job %d: %+v", i, rec)
				}
				assertClose(t, fmt.Sprintf("%s job %d", m.name, i), s.result(t, id).Outputs, ref.run(t, inputs[i]))
			}
		})
	}
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
		if rec := s.await(t, id, time.Minute); rec.Status != jobs.Succeeded {
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
}
