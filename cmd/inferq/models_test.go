package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
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
		"maskedsum":   onnxbuild.MaskedSum(),
		"shapeless":   onnxbuild.Shapeless(),
		"seqfirst":    onnxbuild.SeqFirst(),
		"boxes":       onnxbuild.Boxes(),
		"centered":    onnxbuild.BatchCentered(),
		"fives":       onnxbuild.FivesSum(),
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
func runAll(t *testing.T, s *server, model string, reqs [][]tensor.Tensor) ([]*record.Record, []*tensor.Response) {
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
			var rec record.Record
			r.json(t, &rec)
			ids[i] = rec.ID
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatalf("%s: submit refused: %s", model, e)
	}
	recs := make([]*record.Record, len(reqs))
	results := make([]*tensor.Response, len(reqs))
	for i, id := range ids {
		recs[i] = s.await(t, id, time.Minute)
		if recs[i].Status == record.Succeeded {
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
		"seqfirst": slow, "boxes": slow, "centered": slow, "fives": slow,
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
		// Axis names say [seq, batch, 4]: stacked along the sequence, each
		// request would sum the ones run before it.
		{"seqfirst", 12, func(d *direct, i int) []tensor.Tensor {
			return randomInputs(rng, d.sig.Inputs, 2+i%3, int64(1+i%2))
		}, false},
		// One image and any number of boxes per request: the inputs' first
		// axes differ, as their names say.
		{"boxes", 12, func(d *direct, i int) []tensor.Tensor {
			return append(randomInputs(rng, d.sig.Inputs[:1], 1), randomInputs(rng, d.sig.Inputs[1:], 1+i%4)...)
		}, false},
		// Each row less the mean of the rows it runs with: the load-time
		// run on made-up rows finds that they mix, so each request runs
		// whole, alone, and gets what ONNX Runtime gives it.
		{"centered", 12, func(d *direct, i int) []tensor.Tensor {
			return randomInputs(rng, d.sig.Inputs, 1+i%3)
		}, false},
		// Made-up rows 32 wide do not divide into fives: the signature's
		// word stands, and the model batches.
		{"fives", 30, func(d *direct, i int) []tensor.Tensor {
			return randomInputs(rng, d.sig.Inputs, 1+i%2, 10)
		}, true},
	}
	listed := listedModels(t, s)
	for model, want := range map[string]string{"centered": "its rows are not independent", "seqfirst": `names axis 1 "batch"`, "boxes": `("num_boxes") have different names`} {
		if v := listed[model]; len(v) == 0 || v[0].Batchable || !strings.Contains(v[0].Batching, want) {
			t.Errorf("GET /v1/models says of %s %+v; want it not batchable because %s", model, v, want)
		}
	}
	if v := listed["fives"]; len(v) == 0 || !v[0].Batchable || !strings.Contains(v[0].Unchecked, "does not run: ONNX Runtime") || !strings.Contains(v[0].Unchecked, "Reshape") {
		t.Errorf("GET /v1/models says of fives %+v; want it batchable, unchecked, with ONNX Runtime's reason", v)
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
				if rec.Status != record.Succeeded {
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

// A model whose input and output types give no shape at all takes
// requests of any rank, runs them one at a time (nothing says where a
// batch axis would be), and returns what ONNX Runtime gives, as jobs and
// as batch-file lines. GET /v1/models shows the shape as null and why the
// model is not batched. (ONNX Runtime reports such an input as it does a
// scalar; read as one, it refused every request that was not a scalar.)
func TestShapelessModel(t *testing.T) {
	repo, files := fixtures(t, map[string]string{"shapeless": "max_queue_delay: 50ms\n"})
	s := startServe(t, repo)
	if v := listedModels(t, s)["shapeless"]; len(v) == 0 || v[0].Batchable || !strings.Contains(v[0].Batching, `input "x" has no shape in the model`) || v[0].Inputs[0].Shape != nil {
		t.Fatalf("shapeless model described as %+v", v)
	}
	d := openDirect(t, files["shapeless"])
	rng := rand.New(rand.NewPCG(21, 22))
	reqs := make([][]tensor.Tensor, 8)
	for i := range reqs {
		shape := [][]int64{{}, {3}, {2, 2}, {1, 3, 2}}[i%4]
		x := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: shape}
		for range tensor.NumElements(shape) {
			x.Data = binary.LittleEndian.AppendUint32(x.Data, math.Float32bits(rng.Float32()))
		}
		reqs[i] = []tensor.Tensor{x}
	}
	recs, results := runAll(t, s, "shapeless", reqs)
	for i, rec := range recs {
		if rec.Status != record.Succeeded {
			t.Fatalf("job %d (shape %v): %+v", i, reqs[i][0].Shape, rec)
		}
		assertClose(t, "shapeless", results[i].Outputs, d.run(t, reqs[i]))
	}
	if runs := s.metrics(t)["inferq_batch_size,model=shapeless,stat=count"]; runs != float64(len(reqs)) {
		t.Errorf("%d jobs in %.0f runs, want one run each", len(reqs), runs)
	}
	assertBatchFile(t, s, "shapeless", reqs, d)
}

// A model whose weights are in a file beside it (ONNX external data, as
// exporters write models over 2 GB) loads from the repository and serves
// what ONNX Runtime gives; its weights are not in model.onnx at all, so a
// model loaded without them could not run. Without its weights file it is
// refused with the reason, and loaded once the file arrives.
func TestExternalData(t *testing.T) {
	model, weights := onnxbuild.DenseExternal(64, 2, 5, "model.onnx_data")
	if bytes.Count(model, []byte("model.onnx_data")) == 0 || len(model) > len(weights)/4 {
		t.Fatalf("the model (%d bytes) does not point its weights (%d bytes) at the external file", len(model), len(weights))
	}
	repo := testenv.ModelRepo(t, map[string]string{
		"ext/1/model.onnx":      string(model),
		"ext/1/model.onnx_data": string(weights),
		"ext/config.yaml":       "max_queue_delay: 50ms\n",
		"nodata/1/model.onnx":   string(model), // its weights file is missing
	})
	s := startServe(t, repo, "--model-poll", "200ms")
	d := openDirect(t, filepath.Join(repo, "ext", "1", "model.onnx"))
	rng := rand.New(rand.NewPCG(8, 8))
	if v := listedModels(t, s)["nodata"]; len(v) == 0 || v[0].State != "unavailable" || !strings.Contains(v[0].Reason, "External data path does not exist") {
		t.Fatalf("a model whose weights file is missing should be refused with the reason: %+v", v)
	}
	// Its weights arriving after it (a copy file by file) get it loaded
	// at the next scan of the repository.
	if err := os.WriteFile(filepath.Join(repo, "nodata", "1", "model.onnx_data"), weights, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := do(t, "POST", s.url+"/v1/models/nodata/jobs", requestJSON(randomInputs(rng, d.sig.Inputs, 1)))
		if r.code == http.StatusAccepted {
			var rec record.Record
			r.json(t, &rec)
			if rec = *s.await(t, rec.ID, time.Minute); rec.Status != record.Succeeded {
				t.Fatalf("job on the model once its weights arrived: %+v", rec)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the model was not loaded once its weights arrived: %d %s", r.code, r.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	reqs := make([][]tensor.Tensor, 12)
	for i := range reqs {
		reqs[i] = randomInputs(rng, d.sig.Inputs, 1+i%3)
	}
	recs, results := runAll(t, s, "ext", reqs)
	for i, rec := range recs {
		if rec.Status != record.Succeeded {
			t.Fatalf("job %d: %+v", i, rec)
		}
		assertClose(t, "ext", results[i].Outputs, d.run(t, reqs[i]))
	}
}

// A sequence model configured with padding batches requests of different
// lengths together, and each gets back exactly what ONNX Runtime gives for
// its unpadded input, as a job or as a line of a batch file.
func TestPaddingBuckets(t *testing.T) {
	repo, files := fixtures(t, map[string]string{"maskedsum": `max_queue_delay: 50ms
padding:
  buckets: [4, 8]
  inputs:
    x: {axis: 1, value: 0}
    mask: {axis: 1, value: 0}
  outputs:
    y: 1
`})
	s := startServe(t, repo)
	d := openDirect(t, files["maskedsum"])
	rng := rand.New(rand.NewPCG(6, 6))
	lengths := []int64{1, 3, 4, 2, 7, 5, 8, 6, 11, 3}
	reqs := make([][]tensor.Tensor, 30)
	for i := range reqs {
		n := lengths[i%len(lengths)]
		reqs[i] = randomInputs(rng, d.sig.Inputs, 1+i%2, n, n)
	}
	recs, results := runAll(t, s, "maskedsum", reqs)
	for i, rec := range recs {
		if rec.Status != record.Succeeded {
			t.Fatalf("job %d: %+v", i, rec)
		}
		assertClose(t, fmt.Sprintf("job %d (length %d)", i, reqs[i][0].Shape[1]), results[i].Outputs, d.run(t, reqs[i]))
	}
	m := s.metrics(t)
	// Lengths 1-4 share bucket 4, 5-8 bucket 8, and 11 runs on its own:
	// far fewer runs than the eight distinct lengths would need.
	if runs := m["inferq_batch_size,model=maskedsum,stat=count"]; runs > 5 {
		t.Errorf("%v runs for 30 jobs in three length groups", runs)
	}
	// As a batch file, lines of every length share one job, and the lines
	// of a bucket run together, padded and trimmed back.
	assertBatchFile(t, s, "maskedsum", reqs, d)
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
			if rec.Status != record.Failed || !strings.Contains(rec.Error, "ONNX Runtime: ") || !strings.Contains(rec.Error, "idx=99") {
				t.Errorf("bad job: %+v, want failed with ONNX Runtime's message", rec)
			}
			continue
		}
		if rec.Status != record.Succeeded {
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

// POST /v2/models/{model}/infer answers the V2 response of a job that went
// through the queue and batcher; concurrent calls are batched together.
func TestV2Infer(t *testing.T) {
	repo, files := fixtures(t, map[string]string{"conditioned": "max_queue_delay: 50ms\n", "lookup": "max_attempts: 1\n"})
	s := startServe(t, repo)
	d := openDirect(t, files["conditioned"])
	rng := rand.New(rand.NewPCG(8, 8))
	const n = 24
	var wg sync.WaitGroup
	for i := range n {
		in := randomInputs(rng, d.sig.Inputs, 1+i%3)
		in[1].Data, in[2].Data = f32(1.5), f32(1, 2, 3, 4) // shared by all: one group
		want := d.run(t, in)
		wg.Go(func() {
			r := do(t, "POST", s.url+"/v2/models/conditioned/infer", requestJSON(in))
			if r.code != http.StatusOK {
				t.Errorf("infer %d: %d %s", i, r.code, r.body)
				return
			}
			resp, err := tensor.DecodeResponse(r.body)
			if err != nil {
				t.Error(err)
				return
			}
			if id := r.header.Get("Inferq-Job-Id"); id == "" || resp.ID != id {
				t.Errorf("infer %d: job id header %q, response id %q", i, id, resp.ID)
			}
			assertClose(t, "infer", resp.Outputs, want)
		})
	}
	wg.Wait()
	m := s.metrics(t)
	if runs := m["inferq_batch_size,model=conditioned,stat=count"]; runs >= n {
		t.Errorf("%d synchronous calls ran in %v runs: not batched", n, runs)
	}

	tests := []struct {
		name, path, body string
		code             int
		msg              string
	}{
		{"bad input", "/v2/models/conditioned/infer", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400, "temperature"},
		{"unknown model", "/v2/models/nope/infer", `{"inputs":[]}`, 404, "nope"},
		{"job fails in ONNX Runtime", "/v2/models/lookup/infer", `{"inputs":[{"name":"idx","shape":[1],"datatype":"INT64","data":[42]}]}`, 400, "idx=42"},
		{"pinned version", "/v2/models/lookup/versions/1/infer", `{"inputs":[{"name":"idx","shape":[2],"datatype":"INT64","data":[1,2]}]}`, 200, `"data":[3,4,5,6,7,8]`},
		{"missing version", "/v2/models/lookup/versions/9/infer", `{"inputs":[]}`, 404, "no version 9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, "POST", s.url+tt.path, []byte(tt.body))
			if r.code != tt.code || !strings.Contains(string(r.body), tt.msg) {
				t.Fatalf("%d %s; want %d saying %q", r.code, r.body, tt.code, tt.msg)
			}
		})
	}
}

// New versions and models appear in a running server, are served without
// a restart, and the highest version becomes the default; removed ones
// go away.
func TestModelRepositoryReload(t *testing.T) {
	dir := t.TempDir()
	v1, v2 := filepath.Join(dir, "v1.onnx"), filepath.Join(dir, "v2.onnx")
	writeFile(t, v1, onnxbuild.Dense(4, 1, 1))
	writeFile(t, v2, onnxbuild.Dense(4, 1, 2))
	repo := testenv.ModelRepo(t, map[string]string{"m/1/model.onnx": "@" + v1})
	s := startServe(t, repo, "--model-poll", "50ms")
	d1, d2 := openDirect(t, v1), openDirect(t, v2)
	rng := rand.New(rand.NewPCG(9, 9))
	in := randomInputs(rng, d1.sig.Inputs, 2)

	// run submits in to path and checks the job ran on version want.
	run := func(path string, want string, d *direct) {
		t.Helper()
		id := s.submit(t, path, requestJSON(in))
		rec := s.await(t, id, 30*time.Second)
		if rec.Status != record.Succeeded || rec.ModelVersion != want {
			t.Fatalf("%s: %+v, want succeeded on version %s", path, rec, want)
		}
		assertClose(t, path, s.result(t, id).Outputs, d.run(t, in))
	}
	// until polls the V2 metadata of model until versions reads want.
	until := func(model, want string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			r := do(t, "GET", s.url+"/v2/models/"+model, nil)
			var meta struct{ Versions []string }
			if r.code == http.StatusOK {
				r.json(t, &meta)
			}
			if strings.Join(meta.Versions, ",") == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("model %s versions %v, want %s", model, meta.Versions, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	run("/v1/models/m/jobs", "1", d1)

	// A new version, moved into place whole, as deployments should.
	staged := filepath.Join(dir, "staged")
	if err := os.MkdirAll(staged, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(staged, "model.onnx"), onnxbuild.Dense(4, 1, 2))
	if err := os.Rename(staged, filepath.Join(repo, "m", "2")); err != nil {
		t.Fatal(err)
	}
	until("m", "2,1")
	run("/v1/models/m/jobs", "2", d2)
	run("/v1/models/m/versions/1/jobs", "1", d1)

	// A new model.
	if err := os.MkdirAll(filepath.Join(repo, "n", "1"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(repo, "n", "1", "model.onnx"), onnxbuild.Dense(4, 1, 1))
	until("n", "1")
	run("/v1/models/n/jobs", "1", d1)

	// Removing version 2 makes version 1 the default again.
	if err := os.RemoveAll(filepath.Join(repo, "m", "2")); err != nil {
		t.Fatal(err)
	}
	until("m", "1")
	run("/v1/models/m/jobs", "1", d1)
	if r := do(t, "POST", s.url+"/v1/models/m/versions/2/jobs", requestJSON(in)); r.code != http.StatusNotFound {
		t.Fatalf("job for a removed version: %d %s", r.code, r.body)
	}
}

// A model's result_retention deletes its result objects once they are
// older, and its jobs then read as expired.
func TestResultRetention(t *testing.T) {
	repo, files := fixtures(t, map[string]string{"lookup": "result_retention: 1s\n"})
	data := t.TempDir()
	s := startServe(t, repo, "--data", data)
	d := openDirect(t, files["lookup"])
	in := []tensor.Tensor{{Name: "idx", Datatype: tensor.Int64, Shape: []int64{1}, Data: binary.LittleEndian.AppendUint64(nil, 3)}}
	id := s.submit(t, "/v1/models/lookup/jobs", requestJSON(in))
	if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded {
		t.Fatalf("%+v", rec)
	}
	assertClose(t, "fresh result", s.result(t, id).Outputs, d.run(t, in))
	objects := filepath.Join(data, "objects", "results", "lookup")
	if files, _ := os.ReadDir(objects); len(files) != 1 {
		t.Fatalf("%d result objects, want 1", len(files))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		files, _ := os.ReadDir(objects)
		var rec record.Record
		do(t, "GET", s.url+"/v1/jobs/"+id, nil).json(t, &rec)
		if len(files) == 0 && rec.Status == record.Expired {
			if !strings.Contains(rec.Error, "result_retention") || rec.ResultURL != "" {
				t.Fatalf("expired record: %+v", rec)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: %d result objects, job %s", len(files), rec.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r := do(t, "GET", s.url+"/v1/jobs/"+id+"/result", nil); r.code != http.StatusConflict {
		t.Fatalf("result of an expired job: %d %s", r.code, r.body)
	}
}
