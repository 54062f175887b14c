package main

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/tensor"
)

// fixtures writes the onnxbuild fixture models to files and returns a
// repository serving them, with the given config.yaml per model, and the
// file of each model for direct runs.
func fixtures(t *testing.T, configs map[string]string) (repo string, files map[string]string) {
	t.Helper()
	models := map[string][]byte{
		"identities":  onnxbuild.Identities(),
		"conditioned": onnxbuild.Conditioned(),
		"total":       onnxbuild.Total(),
		"recurrent":   onnxbuild.Recurrent(),
		"lookup":      onnxbuild.Lookup(),
		"rowsum":      onnxbuild.RowSum(),
		"flattened":   onnxbuild.Flattened(),
	}
	dir := t.TempDir()
	files = map[string]string{}
	entries := map[string]string{}
	for name, b := range models {
		path := filepath.Join(dir, name+".onnx")
		writeFile(t, path, b)
		files[name] = path
		entries[name+"/1/model.onnx"] = "@" + path
	}
	for name, c := range configs {
		entries[name+"/config.yaml"] = c
	}
	return testenv.ModelRepo(t, entries), files
}

// runAll submits every request at once, waits for each job and returns
// its record and result, in order.
func runAll(t *testing.T, s *server, model string, reqs [][]tensor.Tensor) ([]*jobs.Record, []*tensor.Response) {
	t.Helper()
	ids := make([]string, len(reqs))
	var wg sync.WaitGroup
	errs := make(chan string, len(reqs))
	for i := range reqs {
		wg.Go(func() {
			r := do(t, "POST", s.url+"/v1/models/"+model+"/jobs", requestJSON(reqs[i]))
			if r.code != http.StatusAccepted {
				errs <- string(r.body)
				return
			}
			var rec jobs.Record
			r.json(t, &rec)
			ids[i] = rec.ID
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("%s: submit refused: %s", model, e)
	}
	recs := make([]*jobs.Record, len(reqs))
	results := make([]*tensor.Response, len(reqs))
	for i, id := range ids {
		recs[i] = s.await(t, id, time.Minute)
		if recs[i].Status == jobs.Succeeded {
			results[i] = s.result(t, id)
		}
	}
	return recs, results
}

func f32(vs ...float32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

// Every kind of model the fixtures cover returns, through the queue and
// its batching, exactly what ONNX Runtime returns for each request on its
// own.
func TestModelKindsMatchONNXRuntime(t *testing.T) {
	slow := "max_queue_delay: 50ms\n" // long enough for concurrent jobs to meet
	repo, files := fixtures(t, map[string]string{
		"identities": slow, "conditioned": slow, "rowsum": slow + "max_batch_size: 64\n", "flattened": slow,
	})
	s := startServe(t, repo)
	rng := rand.New(rand.NewPCG(4, 4))

	tests := []struct {
		model string
		n     int
		make  func(d *direct, i int) []tensor.Tensor
		// batched says batches of more than one row must form.
		batched bool
	}{
		{"identities", 30, func(d *direct, i int) []tensor.Tensor {
			return randomInputs(rng, d.sig.Inputs, 1+i%3)
		}, true},
		{"conditioned", 40, func(d *direct, i int) []tensor.Tensor {
			in := randomInputs(rng, d.sig.Inputs, 1+i%2)
			// Two temperatures and two biases: four groups that must not mix.
			in[1].Data = f32([]float32{0.5, 2}[i%2])
			in[2].Data = f32([][]float32{{0, 0, 0, 0}, {1, 2, 3, 4}}[i/2%2]...)
			return in
		}, true},
		{"total", 8, func(d *direct, i int) []tensor.Tensor {
			return randomInputs(rng, d.sig.Inputs, 1+i)
		}, false},
		{"recurrent", 8, func(d *direct, i int) []tensor.Tensor {
			return randomInputs(rng, d.sig.Inputs, 1+i%3, int64(1+i%3))
		}, false},
		{"rowsum", 45, func(d *direct, i int) []tensor.Tensor {
			return randomInputs(rng, d.sig.Inputs, 1+i%4, []int64{3, 5, 8}[i%3])
		}, true},
		{"flattened", 12, func(d *direct, i int) []tensor.Tensor {
			return randomInputs(rng, d.sig.Inputs, 1+i%2)
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			d := openDirect(t, files[tt.model])
			reqs := make([][]tensor.Tensor, tt.n)
			for i := range reqs {
				reqs[i] = tt.make(d, i)
			}
			recs, results := runAll(t, s, tt.model, reqs)
			for i, rec := range recs {
				if rec.Status != jobs.Succeeded {
					t.Fatalf("job %d: %+v", i, rec)
				}
				assertClose(t, tt.model, results[i].Outputs, d.run(t, reqs[i]))
			}
			m := s.metrics(t)
			runs := m["inferq_batch_size,model="+tt.model+",stat=count"]
			rows := m["inferq_batch_size,model="+tt.model+",stat=sum"]
			t.Logf("%d jobs, %.0f rows in %.0f runs", tt.n, rows, runs)
			if tt.batched && runs >= float64(tt.n) {
				t.Errorf("%d jobs ran in %.0f runs: no batching", tt.n, runs)
			}
			if !tt.batched && runs < float64(tt.n) {
				t.Errorf("%d jobs ran in %.0f runs: an unbatchable model was batched", tt.n, runs)
			}
		})
	}
}

// A request that makes ONNX Runtime fail inside a batch fails alone, with
// ONNX Runtime's message; the rest of its batch succeeds.
func TestFailureIsolation(t *testing.T) {
	repo, files := fixtures(t, map[string]string{"lookup": "max_queue_delay: 200ms\nmax_attempts: 1\n"})
	s := startServe(t, repo)
	d := openDirect(t, files["lookup"])
	const n, bad = 24, 7
	reqs := make([][]tensor.Tensor, n)
	for i := range reqs {
		idx := int64(i % 10)
		if i == bad {
			idx = 99 // the table has 10 rows
		}
		reqs[i] = []tensor.Tensor{{Name: "idx", Datatype: tensor.Int64, Shape: []int64{1}, Data: binary.LittleEndian.AppendUint64(nil, uint64(idx))}}
	}
	recs, results := runAll(t, s, "lookup", reqs)
	for i, rec := range recs {
		if i == bad {
			if rec.Status != jobs.Failed || !strings.Contains(rec.Error, "ONNX Runtime: ") || !strings.Contains(rec.Error, "idx=99") {
				t.Errorf("bad job: %+v, want failed with ONNX Runtime's message", rec)
			}
			continue
		}
		if rec.Status != jobs.Succeeded {
			t.Fatalf("job %d: %+v", i, rec)
		}
		assertClose(t, "lookup", results[i].Outputs, d.run(t, reqs[i]))
	}
	m := s.metrics(t)
	if f := m["inferq_failed_runs_total,model=lookup"]; f < 2 {
		t.Errorf("%v failed runs: the bad job was not run inside a batch first", f)
	}
	if got := m["inferq_jobs_finished_total,model=lookup,status=failed"]; got != 1 {
		t.Errorf("%v jobs failed, want 1", got)
	}
}
