package main

// GPU and CPU workers, tested where there is no GPU: a GPU provider that
// cannot be attached is refused with the reason, or falls back to the CPU
// where the config says so; a worker's --device and batch overrides; and
// workers of different settings sharing one queue, the code path a GPU
// worker takes beside CPU ones. On a machine with a GPU and the GPU build
// of ONNX Runtime, `make gpu-check` runs the same paths on the GPU.

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// listedWorkers returns GET /v1/models's workers of model.
func listedWorkers(t *testing.T, s *server, model string) []jobs.WorkerStatus {
	t.Helper()
	var list struct {
		Models []struct {
			Name    string
			Workers []jobs.WorkerStatus
		}
	}
	do(t, "GET", s.url+"/v1/models", nil).json(t, &list)
	for _, m := range list.Models {
		if m.Name == model {
			return m.Workers
		}
	}
	t.Fatalf("model %s not listed", model)
	return nil
}

// skipWhereGPU skips a test of the CPU-only paths on a machine where the
// GPU provider attaches: there the device check covers it.
func skipWhereGPU(t *testing.T, workers []jobs.WorkerStatus) {
	t.Helper()
	for _, w := range workers {
		for _, v := range w.Versions {
			if strings.HasPrefix(v.Device, "cuda") || strings.HasPrefix(v.Device, "tensorrt") {
				t.Skipf("the GPU provider attached here (%s): this test is of machines without one; make gpu-check covers this one", v.Device)
			}
		}
	}
}

// A model asking for a GPU where none can be had is not served by that
// worker, which says why in GET /v1/models and the log, and serves its
// other models; its jobs wait in the queue for a worker that can run
// them. With fallback: cpu, or under --device cpu, it runs on the CPU, and
// GET /v1/models says so.
func TestProviderRefusedOrFallsBack(t *testing.T) {
	repo := testenv.ModelRepo(t, map[string]string{
		"gpuonly/1/model.onnx": "@" + irisPath(t), "gpuonly/config.yaml": "execution_provider: cuda\n",
		"falls/1/model.onnx": "@" + irisPath(t), "falls/config.yaml": "execution_provider: cuda\nfallback: cpu\ngpu:\n  device_id: 0\n  cudnn_conv_algo_search: heuristic\n",
		"iris/1/model.onnx": "@" + irisPath(t),
	})
	s, nc := startServeNATS(t, repo)
	var refused []jobs.WorkerStatus
	eventually(t, 20*time.Second, "the workers report", func() bool {
		refused = listedWorkers(t, s, "gpuonly")
		return len(refused) == 1
	})
	skipWhereGPU(t, append(refused, listedWorkers(t, s, "falls")...))
	if w := refused[0]; w.Replicas != 0 || !strings.Contains(w.Error, "cuda:0 cannot be attached") || !strings.Contains(w.Error, "fallback: cpu") {
		t.Errorf("the GPU-only model's worker status: %+v, want the reason and the way out", w)
	}
	id := s.submit(t, "/v1/models/gpuonly/jobs", []byte(irisJob))
	// Nothing here takes it: it waits in the queue, delivered to nobody,
	// for a GPU worker.
	q, _ := openQueue(t, nc)
	if d, err := q.Depth(context.Background(), "gpuonly"); err != nil || d.Pending != 1 || d.InFlight != 0 {
		t.Errorf("the queue of the model no worker here can run: %+v (%v); want its job waiting, delivered to none", d, err)
	}
	if r := do(t, "GET", s.url+"/v1/jobs/"+id, nil); !strings.Contains(string(r.body), `"status":"queued"`) {
		t.Errorf("a job of the model no worker here can run: %s, want it queued for a GPU worker", r.body)
	}

	falls := listedWorkers(t, s, "falls")
	if len(falls) != 1 || len(falls[0].Versions) != 1 || falls[0].Versions[0].Device != "cpu" || !strings.Contains(falls[0].Versions[0].Fallback, "cannot be attached") {
		t.Fatalf("the falling-back model's worker status: %+v, want cpu with the reason", falls)
	}
	d := openDirect(t, irisPath(t))
	x := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 4}, Data: f32(5.1, 3.5, 1.4, 0.2)}
	for _, m := range []string{"falls", "iris"} {
		id := s.submit(t, "/v1/models/"+m+"/jobs", []byte(irisJob))
		if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded {
			t.Fatalf("model %s: %+v", m, rec)
		}
		assertClose(t, m, s.result(t, id).Outputs, d.run(t, []tensor.Tensor{x}))
	}

	// A CPU worker runs the GPU model, and the waiting job, on the CPU.
	s.stop()
	s = startServe(t, repo, "--device", "cpu", "--max-batch-size", "8", "--instances", "2")
	var cpu []jobs.WorkerStatus
	eventually(t, 20*time.Second, "the CPU worker reports", func() bool {
		cpu = listedWorkers(t, s, "gpuonly")
		return len(cpu) == 1 && cpu[0].Replicas == 1
	})
	if w := cpu[0]; w.Error != "" || w.Versions[0].Device != "cpu" || w.Versions[0].Fallback != "" || w.MaxBatchSize != 8 || w.Instances != 2 {
		t.Errorf("under --device cpu: %+v, want cpu with the worker's batch settings", w)
	}
}

// Workers of one model with different settings, a small-batch CPU worker
// and one with large batches (as a GPU worker would be, and on a GPU
// machine is: it asks for cuda and falls back here), share the model's
// queue: every job runs once with the right answer, both take a share,
// and GET /v1/models shows each with its own settings and device.
func TestMixedWorkersShareQueue(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes; skipped with -short")
	}
	ns := testenv.JetStream(t)
	path := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, path, onnxbuild.Repeat(256, 50, 3))
	repo := testenv.ModelRepo(t, map[string]string{"slow/1/model.onnx": "@" + path,
		"slow/config.yaml": "max_batch_size: 16\nintra_op_threads: 1\nexecution_provider: cuda\nfallback: cpu\n"})
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", t.TempDir(), "--log-level", "warn"}
	cpuPid := startWorkerProcess(t, append(common, "--device", "cpu", "--max-batch-size", "2")...)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	bigPid := startWorkerProcess(t, append(common, "--max-batch-size", "64", "--max-queue-delay", "20ms", "--metrics", metricsAddr)...)
	s := startAPI(t, common...)
	var workers []jobs.WorkerStatus
	eventually(t, 60*time.Second, "both workers report", func() bool {
		workers = listedWorkers(t, s, "slow")
		return len(workers) == 2 && workers[0].Replicas == 1 && workers[1].Replicas == 1
	})
	settings := map[string]int{}
	for _, w := range workers {
		settings[w.Worker] = w.MaxBatchSize
		if len(w.Versions) != 1 {
			t.Fatalf("worker %+v", w)
		}
		if dev := w.Versions[0].Device; dev != "cpu" && !strings.HasPrefix(dev, "cuda") {
			t.Errorf("worker %s runs on %q", w.Worker, dev)
		}
	}
	byPid := func(pid int) string {
		for name := range settings {
			if strings.HasSuffix(name, ":"+strconv.Itoa(pid)) {
				return name
			}
		}
		t.Fatalf("no worker of pid %d in %v", pid, settings)
		return ""
	}
	small, big := byPid(cpuPid), byPid(bigPid)
	if settings[small] != 2 || settings[big] != 64 {
		t.Errorf("max batch sizes %v, want 2 for %s and 64 for %s", settings, small, big)
	}

	d := openDirect(t, path)
	rng := randSource(18)
	const n = 240
	ids := make([]string, n)
	inputs := make([][]tensor.Tensor, n)
	for i := range n {
		inputs[i] = randomInputs(rng, d.sig.Inputs, 1)
		ids[i] = s.submit(t, "/v1/models/slow/jobs", requestJSON(inputs[i]))
	}
	ran := map[string]int{}
	for i, id := range ids {
		rec := s.await(t, id, 120*time.Second)
		if rec.Status != record.Succeeded || rec.Attempts != 1 {
			t.Fatalf("job %d: %+v", i, rec)
		}
		ran[rec.Worker]++
		assertClose(t, "job", s.result(t, id).Outputs, d.run(t, inputs[i]))
	}
	if ran[small] == 0 || ran[big] == 0 || ran[small]+ran[big] != n {
		t.Errorf("jobs run by worker: %v, want both of %s and %s to take a share of %d", ran, small, big, n)
	}
	// The worker's own metrics, as Prometheus scrapes them (--metrics).
	if got := (&server{url: "http://" + metricsAddr}).metrics(t)["inferq_jobs_finished_total,model=slow,status=succeeded"]; int(got) != ran[big] {
		t.Errorf("the large-batch worker's /metrics counts %v jobs finished, its records %d", got, ran[big])
	}
	t.Logf("jobs run: %v", ran)
}
