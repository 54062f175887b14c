package main

import (
	"fmt"
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
