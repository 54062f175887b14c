package main

// The device check's tests and benchmark: they run only where
// INFERQ_GPU_DEVICE names a GPU (cuda:0), with ONNXRUNTIME_LIB at the GPU
// build of ONNX Runtime and the CUDA libraries on LD_LIBRARY_PATH, as
// deploy/gpu/check.sh sets them up (docs/gpu.md). Elsewhere they skip,
// saying so.

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// gpuDevice is the GPU the device check runs on, or skips the test.
func gpuDevice(t testing.TB) onnx.Provider {
	t.Helper()
	v := os.Getenv("INFERQ_GPU_DEVICE")
	if v == "" {
		t.Skip("no GPU here: on a machine with an NVIDIA GPU, `make gpu-check` (or deploy/gpu/check.sh) runs this with INFERQ_GPU_DEVICE=cuda:0 and the GPU build of ONNX Runtime")
	}
	p, err := onnx.ParseDevice(v)
	if err != nil {
		t.Fatalf("INFERQ_GPU_DEVICE=%q: want cuda:N or tensorrt:N (%v)", v, err)
	}
	if p.Name == onnx.ProviderCPU {
		t.Log("INFERQ_GPU_DEVICE=cpu: a dry run of the device check on the CPU, to test the check itself; it proves nothing of a GPU")
	}
	return p
}

// gpuModels are the models the device check runs: the bundled iris and
// PaddleOCR's three, real image models.
func gpuModels(t *testing.T) map[string]string {
	return map[string]string{
		"iris":   irisPath(t),
		"ocrcls": testenv.ThirdParty(t, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
		"ocrdet": testenv.ThirdParty(t, "ppocr/ch_PP-OCRv4_det_infer.onnx"),
		"ocrrec": testenv.ThirdParty(t, "ppocr/ch_PP-OCRv4_rec_infer.onnx"),
	}
}

// onGPU reports whether this process holds memory on a GPU, as
// nvidia-smi sees it: the proof that a session runs there and did not
// quietly fall back to the CPU.
func onGPU(t testing.TB) bool {
	t.Helper()
	out, err := exec.Command("nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader").Output()
	if err != nil {
		t.Fatalf("nvidia-smi: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if pid, _, ok := strings.Cut(line, ","); ok && strings.TrimSpace(pid) == strconv.Itoa(os.Getpid()) {
			return true
		}
	}
	return false
}

// closeOnGPU compares a GPU run's outputs with the CPU's: cuDNN's
// convolutions and TF32 math differ from the CPU's in the last digits.
func closeOnGPU(t *testing.T, what string, got, want []tensor.Tensor) {
	t.Helper()
	assertWithin(t, what, got, want, func(a, b float64) bool { return math.Abs(a-b) <= 0.05*(1e-2+math.Abs(b)) })
}

// On the GPU: every model's worker runs on the device asked for (its
// config has no fallback, so a provider that did not attach would leave
// it unserved), the process holds GPU memory, and each model's answers
// through the queue match ONNX Runtime's on the CPU.
func TestGPUServesOnDevice(t *testing.T) {
	dev := gpuDevice(t)
	files := map[string]string{}
	for name, path := range gpuModels(t) {
		files[name+"/1/model.onnx"] = "@" + path
		files[name+"/config.yaml"] = "execution_provider: " + dev.Name + "\ngpu:\n  device_id: " + strconv.Itoa(dev.DeviceID) + "\n"
	}
	s := startServe(t, testenv.ModelRepo(t, files))
	for name := range gpuModels(t) {
		var ws []jobs.WorkerStatus
		eventually(t, 60*time.Second, "model "+name+" reports", func() bool {
			ws = listedWorkers(t, s, name)
			return len(ws) == 1
		})
		if w := ws[0]; w.Error != "" || len(w.Versions) != 1 || w.Versions[0].Device != dev.String() {
			t.Fatalf("model %s: %+v, want it on %s", name, w, dev)
		}
	}
	if dev.Name != onnx.ProviderCPU && !onGPU(t) {
		t.Fatal("nvidia-smi shows no GPU memory held by this process: the sessions are not on the GPU")
	}
	rt := testenv.Runtime(t)
	rng := rand.New(rand.NewPCG(18, 1))
	for name, path := range gpuModels(t) {
		sig, err := rt.Inspect(path)
		if err != nil {
			t.Fatal(err)
		}
		cpu, err := rt.NewSession(path, sig, onnx.SessionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer cpu.Close()
		for i := range 3 {
			in := randomInputs(rng, sig.Inputs, 1, gpuDims(name)...)
			id := s.submit(t, "/v1/models/"+name+"/jobs", requestJSON(in))
			if rec := s.await(t, id, 120*time.Second); rec.Status != record.Succeeded {
				t.Fatalf("model %s job %d: %+v", name, i, rec)
			}
			want, err := cpu.Run(in)
			if err != nil {
				t.Fatal(err)
			}
			closeOnGPU(t, fmt.Sprintf("%s job %d", name, i), s.result(t, id).Outputs, want)
		}
	}
}

// gpuDims are the dynamic sizes of a model's image input beyond the batch:
// PaddleOCR's classifier takes 48x192, the recognizer 48x320, the detector
// 640x640.
func gpuDims(model string) []int64 {
	switch model {
	case "ocrcls":
		return []int64{48, 192}
	case "ocrdet":
		return []int64{640, 640}
	case "ocrrec":
		return []int64{320}
	}
	return nil
}

// BenchmarkGPU measures, on the GPU, for PaddleOCR's classifier with one
// row per job in V2 binary requests: ONNX Runtime's own rate on the GPU at
// its best batch size, the whole queue path's rate as a fraction of it,
// the gain of dynamic batching over max_batch_size 1, and a GPU worker
// against a CPU worker on the same model. The detector and recognizer
// report ONNX Runtime's rate per batch size.
func BenchmarkGPU(b *testing.B) {
	dev := gpuDevice(b)
	rt := testenv.Runtime(b)
	cls := testenv.ThirdParty(b, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
	sig, err := rt.Inspect(cls)
	if err != nil {
		b.Fatal(err)
	}
	direct := func(path string, s onnx.Signature, p onnx.Provider, sizes []int, dims ...int64) (best float64, at int) {
		sess, err := rt.NewSession(path, s, onnx.SessionOptions{Provider: p, Spinning: true})
		if err != nil {
			b.Fatal(err)
		}
		defer sess.Close()
		for _, n := range sizes {
			rate := directThroughputDims(b, sess, s, n, dims...)
			b.Logf("%s on %s, batch %d: %.0f rows/s", path[strings.LastIndex(path, "/")+1:], p, n, rate)
			if rate > best {
				best, at = rate, n
			}
		}
		return best, at
	}
	best, at := direct(cls, sig, dev, []int{1, 8, 32, 64, 128, 256}, 48, 192)
	b.ReportMetric(best, "direct_rows/s")
	b.ReportMetric(float64(at), "direct_best_batch")
	for _, m := range []struct {
		rel  string
		dims []int64
	}{{"ppocr/ch_PP-OCRv4_det_infer.onnx", []int64{640, 640}}, {"ppocr/ch_PP-OCRv4_rec_infer.onnx", []int64{320}}} {
		path := testenv.ThirdParty(b, m.rel)
		s, err := rt.Inspect(path)
		if err != nil {
			b.Fatal(err)
		}
		direct(path, s, dev, []int{1, 4, 16, 32}, m.dims...)
	}

	rng := rand.New(rand.NewPCG(18, 2))
	n := 20000
	if dev.Name == onnx.ProviderCPU {
		n = 1000 // a dry run
	}
	bodies, hdrs := make([][]byte, n), make([]int, n)
	for i := range n {
		req := tensor.Request{Inputs: randomInputs(rng, sig.Inputs, 1, 48, 192)}
		if bodies[i], hdrs[i], err = req.MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
	endToEnd := func(device string, maxBatch int) float64 {
		repo := testenv.ModelRepo(b, map[string]string{"cls/1/model.onnx": "@" + cls,
			"cls/config.yaml": fmt.Sprintf("max_batch_size: %d\nmax_queue_delay: 2ms\ninstances: 2\n", maxBatch)})
		s, nc := benchServer(b, repo, "--device", device)
		elapsed, _ := load(b, s, nc, "cls", bodies, hdrs, 64)
		return float64(n) / elapsed.Seconds()
	}
	batched := endToEnd(dev.String(), at)
	b.ReportMetric(batched, "e2e_jobs/s")
	b.ReportMetric(batched/best, "e2e/direct")
	single := endToEnd(dev.String(), 1)
	b.ReportMetric(batched/single, "batching_gain")
	cpu := endToEnd("cpu", 32)
	b.ReportMetric(batched/cpu, "gpu/cpu")
	b.Logf("end to end: %.0f jobs/s batched (max %d), %.0f at max batch 1, %.0f on a CPU worker; ONNX Runtime alone %.0f rows/s at batch %d",
		batched, at, single, cpu, best, at)
}

// directThroughputDims is directThroughput for one session, with the
// dynamic sizes of inputs beyond the batch given.
func directThroughputDims(b *testing.B, s *onnx.Session, sig onnx.Signature, batch int, dims ...int64) float64 {
	b.Helper()
	in := randomInputs(rand.New(rand.NewPCG(1, uint64(batch))), sig.Inputs, batch, dims...)
	if _, err := s.Run(in); err != nil { // warm up (cuDNN's search happens here)
		b.Fatal(err)
	}
	runs := 0
	start := time.Now()
	for time.Since(start) < 2*time.Second {
		if _, err := s.Run(in); err != nil {
			b.Fatal(err)
		}
		runs++
	}
	return float64(runs*batch) / time.Since(start).Seconds()
}
