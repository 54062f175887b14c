package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

func irisPath(t *testing.T) string {
	return filepath.Join(testenv.Root(t), "testdata", "models", "iris", "1", "model.onnx")
}

// TestConcurrentJobsMatchONNXRuntime: 200 jobs submitted at once all
// succeed, each with the outputs ONNX Runtime gives for its inputs alone,
// and the worker batched them.
func TestConcurrentJobsMatchONNXRuntime(t *testing.T) {
	repo := testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)})
	s := startServe(t, repo)
	ref := openDirect(t, irisPath(t))
	rng := rand.New(rand.NewPCG(7, 7))

	const n = 200
	inputs := make([][]tensor.Tensor, n)
	for i := range inputs {
		inputs[i] = randomInputs(rng, ref.sig.Inputs, 1+rng.IntN(3))
	}
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { ids[i] = s.submit(t, "/v1/models/iris/jobs", requestJSON(inputs[i])) })
	}
	wg.Wait()
	for i, id := range ids {
		rec := s.await(t, id, time.Minute)
		if rec.Status != record.Succeeded || rec.ModelVersion != "1" || rec.Attempts != 1 {
			t.Fatalf("job %d: %+v", i, rec)
		}
		res := s.result(t, id)
		if res.ID != id || res.ModelName != "iris" || res.ModelVersion != "1" {
			t.Fatalf("job %d result header: %+v", i, res)
		}
		assertClose(t, fmt.Sprintf("job %d", i), res.Outputs, ref.run(t, inputs[i]))
	}
	m := s.metrics(t)
	batches := m["inferq_batch_size,model=iris,stat=count"]
	rows := m["inferq_batch_size,model=iris,stat=sum"]
	if batches == 0 || rows/batches <= 1 {
		t.Fatalf("no batching: %v rows in %v batches", rows, batches)
	}
	if got := m["inferq_jobs_finished_total,model=iris,status=succeeded"]; got != n {
		t.Fatalf("inferq_jobs_finished_total = %v, want %d", got, n)
	}
	if got := m["inferq_jobs_accepted_total,model=iris"]; got != n {
		t.Fatalf("inferq_jobs_accepted_total = %v, want %d", got, n)
	}
	if got := m["inferq_job_messages_settled_total,how=ack,model=iris"]; got != n {
		t.Fatalf("inferq_job_messages_settled_total{how=ack} = %v, want %d: a message each, acknowledged once", got, n)
	}
	if _, ok := m["inferq_queue_depth,model=iris"]; !ok {
		t.Fatal("no inferq_queue_depth for iris")
	}
	t.Logf("%d jobs, %v rows in %v batches (%.1f rows per batch)", n, rows, batches, rows/batches)
}

// TestOutputsFilterAndVersions: a request's outputs list narrows the
// result, and a pinned version runs that version.
func TestOutputsFilterAndVersions(t *testing.T) {
	dense := filepath.Join(t.TempDir(), "dense.onnx")
	writeFile(t, dense, onnxbuild.Dense(4, 1, 3))
	repo := testenv.ModelRepo(t, map[string]string{
		"iris/1/model.onnx": "@" + irisPath(t),
		"iris/2/model.onnx": "@" + irisPath(t),
	})
	s := startServe(t, repo)
	body := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[6.3,3.3,6.0,2.5]}],"outputs":[{"name":"label"}]}`
	id := s.submit(t, "/v1/models/iris/versions/1/jobs", []byte(body))
	rec := s.await(t, id, 30*time.Second)
	if rec.ModelVersion != "1" || rec.Status != record.Succeeded {
		t.Fatalf("pinned job: %+v", rec)
	}
	res := s.result(t, id)
	if len(res.Outputs) != 1 || res.Outputs[0].Name != "label" || string(res.Outputs[0].AppendJSON(nil)) != `{"name":"label","datatype":"INT64","shape":[1],"data":[2]}` {
		t.Fatalf("filtered result: %+v", res.Outputs)
	}
	id = s.submit(t, "/v1/models/iris/jobs", []byte(body))
	if rec := s.await(t, id, 30*time.Second); rec.ModelVersion != "2" {
		t.Fatalf("default version ran %q, want the highest, 2", rec.ModelVersion)
	}
}

// TestBadInput: every bad request gets the right status and a message
// that says what is wrong, and nothing bad is queued.
func TestBadInput(t *testing.T) {
	repo := testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)})
	s := startServe(t, repo, "--max-body", "4096")
	okInput := `{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}`
	cases := []struct {
		name, method, path, body string
		code                     int
		want                     string
	}{
		{"unknown model", "POST", "/v1/models/nope/jobs", `{"inputs":[` + okInput + `]}`, 404, `"nope" is not in the repository`},
		{"unknown version", "POST", "/v1/models/iris/versions/9/jobs", `{"inputs":[` + okInput + `]}`, 404, "has no version 9"},
		{"bad version", "POST", "/v1/models/iris/versions/x/jobs", `{"inputs":[` + okInput + `]}`, 400, `version "x" is not a positive integer`},
		{"not json", "POST", "/v1/models/iris/jobs", `{"inputs":[`, 400, "not valid V2 JSON"},
		{"empty body", "POST", "/v1/models/iris/jobs", ``, 400, "not valid V2 JSON"},
		{"missing input", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"y","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400, `input "y" is not an input of model "iris" (inputs: "x")`},
		{"reserved parameters", "POST", "/v1/models/iris/jobs", `{"parameters":{"inferq_lines":[[[1,4]]]},"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400, `request parameters named inferq_line... are inferq's own`},
		{"no inputs", "POST", "/v1/models/iris/jobs", `{"inputs":[]}`, 400, "no inputs"},
		{"wrong datatype", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1,2,3,4]}]}`, 400, `input "x" has datatype FP64, the model expects FP32`},
		{"wrong shape", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"x","shape":[1,5],"datatype":"FP32","data":[1,2,3,4,5]}]}`, 400, `input "x" has shape [1 5], the model expects [-1 4] (dimension 1 must be 4)`},
		{"wrong rank", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"x","shape":[4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400, "expects 2 dimensions"},
		{"data too short", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400, "data has 4 elements but its shape needs 8"},
		{"data too long", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4,5]}]}`, 400, "more elements than the 4 its shape needs"},
		{"batch too big", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"x","shape":[33,4],"datatype":"FP32","data":[` + strings.Repeat("1,", 131) + `1]}]}`, 400, "batch dimension 33 exceeds the model's max batch size 32"},
		{"zero rows", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"x","shape":[0,4],"datatype":"FP32","data":[]}]}`, 400, "batch dimension is 0"},
		{"unknown output", "POST", "/v1/models/iris/jobs", `{"inputs":[` + okInput + `],"outputs":[{"name":"z"}]}`, 400, `output "z" is not an output of model "iris"`},
		{"not a number", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,"three",4]}]}`, 400, `element 2: FP32 elements must be numbers, got "three"`},
		{"too large", "POST", "/v1/models/iris/jobs", `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[` + strings.Repeat(" ", 5000) + `1,2,3,4]}]}`, 413, "exceeds the limit of 4096 bytes"},
		{"bad job id", "GET", "/v1/jobs/not-a-job", ``, 404, "job ids are 26-character ULIDs"},
		{"unknown job", "GET", "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV", ``, 404, "job 01ARZ3NDEKTSV4RRFFQ69G5FAV not found"},
		{"unknown job result", "GET", "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV/result", ``, 404, "not found"},
		{"bad wait", "GET", "/v1/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV?wait=soon", ``, 400, `wait="soon"`},
		{"unknown model metadata", "GET", "/v2/models/nope", ``, 404, "not in the repository"},
		{"unknown model ready", "GET", "/v2/models/nope/ready", ``, 404, "not in the repository"},
		{"no route", "GET", "/v1/nothing", ``, 404, "no route for GET /v1/nothing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := do(t, c.method, s.url+c.path, []byte(c.body))
			if r.code != c.code {
				t.Fatalf("status %d, want %d: %s", r.code, c.code, r.body)
			}
			if msg := r.errorMessage(t); !strings.Contains(msg, c.want) {
				t.Fatalf("error %q, want it to contain %q", msg, c.want)
			}
		})
	}
	m := s.metrics(t)
	if got := m["inferq_jobs_accepted_total,model=iris"]; got != 0 {
		t.Fatalf("%v bad jobs were accepted", got)
	}
	if m["inferq_jobs_rejected_total,model=iris,reason=invalid"] == 0 || m["inferq_jobs_rejected_total,model=iris,reason=too_large"] != 1 {
		t.Fatalf("rejections not counted: %v", m)
	}
}

// TestResultBeforeFinish: asking for a result too early is a 409 carrying
// the record.
func TestResultBeforeFinish(t *testing.T) {
	// A model slow enough to still be queued or running when asked.
	slow := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, slow, onnxbuild.Dense(1024, 40, 5))
	repo := testenv.ModelRepo(t, map[string]string{"slow/1/model.onnx": "@" + slow, "slow/config.yaml": "max_batch_size: 1\n"})
	s := startServe(t, repo)
	rng := rand.New(rand.NewPCG(1, 1))
	ref := openDirect(t, slow)
	var ids []string
	for range 4 {
		ids = append(ids, s.submit(t, "/v1/models/slow/jobs", requestJSON(randomInputs(rng, ref.sig.Inputs, 1))))
	}
	last := ids[len(ids)-1]
	r := do(t, "GET", s.url+"/v1/jobs/"+last+"/result", nil)
	if r.code != http.StatusConflict {
		t.Fatalf("early result: %d %s", r.code, r.body)
	}
	var rec record.Record
	r.json(t, &rec)
	if rec.ID != last || rec.Status.Final() || !strings.Contains(rec.Error, "has no result yet") {
		t.Fatalf("409 body: %s", r.body)
	}
	for _, id := range ids {
		if rec := s.await(t, id, 2*time.Minute); rec.Status != record.Succeeded {
			t.Fatalf("job %s: %+v", id, rec)
		}
	}
}

// TestHealthAndModels covers the read-only endpoints.
func TestHealthAndModels(t *testing.T) {
	repo := testenv.ModelRepo(t, map[string]string{
		"iris/1/model.onnx": "@" + irisPath(t),
		"iris/config.yaml":  "max_batch_size: 16\nmax_queue_delay: 2ms\npreferred_batch_sizes: [4, 8]\n",
		"bf16/1/model.onnx": "@" + testenv.ThirdParty(t, "onnxruntime_go/example_float16.onnx"),
	})
	s := startServe(t, repo)
	for _, p := range []string{"/v2/health/live", "/v2/health/ready", "/v2/models/iris/ready"} {
		if r := do(t, "GET", s.url+p, nil); r.code != 200 {
			t.Fatalf("%s: %d %s", p, r.code, r.body)
		}
	}
	var server struct {
		Name, Version string
		Extensions    []string
	}
	if do(t, "GET", s.url+"/v2", nil).json(t, &server); server.Name != "inferq" || server.Version != version() || !slices.Contains(server.Extensions, "binary_tensor_data") {
		t.Errorf("GET /v2: %+v", server)
	}
	var meta struct {
		Name     string   `json:"name"`
		Versions []string `json:"versions"`
		Platform string   `json:"platform"`
		Inputs   []struct {
			Name, Datatype string
			Shape          []int64
		}
	}
	do(t, "GET", s.url+"/v2/models/iris", nil).json(t, &meta)
	if meta.Name != "iris" || meta.Platform != "onnxruntime_onnx" || len(meta.Versions) != 1 || meta.Inputs[0].Datatype != "FP32" || tensor.FormatShape(meta.Inputs[0].Shape) != "[-1 4]" {
		t.Fatalf("metadata %+v", meta)
	}
	var list struct {
		Models []struct {
			Name     string
			Versions []struct {
				State, Reason string
				Config        struct {
					MaxBatchSize        int    `json:"max_batch_size"`
					MaxQueueDelay       string `json:"max_queue_delay"`
					PreferredBatchSizes []int  `json:"preferred_batch_sizes"`
				}
			}
		}
	}
	do(t, "GET", s.url+"/v1/models", nil).json(t, &list)
	if len(list.Models) != 2 {
		t.Fatalf("models %+v", list)
	}
	bf16, iris := list.Models[0], list.Models[1]
	if c := iris.Versions[0].Config; c.MaxBatchSize != 16 || c.MaxQueueDelay != "2ms" || len(c.PreferredBatchSizes) != 2 {
		t.Fatalf("iris config not applied: %+v", c)
	}
	if bf16.Versions[0].State != "unavailable" || !strings.Contains(bf16.Versions[0].Reason, `output "OutputA" has element type ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, which V2 tensors cannot carry`) {
		t.Fatalf("a BFLOAT16 model should be refused with the reason: %+v", bf16)
	}
	if r := do(t, "POST", s.url+"/v1/models/bf16/jobs", []byte(`{"inputs":[]}`)); r.code != 503 || r.header.Get("Retry-After") == "" {
		t.Fatalf("job for an unavailable model: %d %s", r.code, r.body)
	}
}

// A model whose name holds dots (as versioned names do: "iris.v1.5") is
// served beside one named like its first part, each on its own subjects
// and consumers, where the dots are written '~': jobs of both
// priorities, the synchronous call, a batch file, its announcements on
// NATS, and the queue's list of models.
func TestDottedModelName(t *testing.T) {
	const name = "iris.v1.5"
	s, nc := startServeNATS(t, testenv.ModelRepo(t, map[string]string{
		"iris/1/model.onnx":    "@" + irisPath(t),
		name + "/1/model.onnx": "@" + irisPath(t),
	}))
	if v := listedModels(t, s)[name]; len(v) != 1 || v[0].State != "ready" {
		t.Fatalf("GET /v1/models says of %s: %+v", name, v)
	}
	announced := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(jobs.ResultSubject(name), announced)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	other, err := nc.SubscribeSync(jobs.ResultSubject("iris"))
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	body := []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[6.3,3.3,6.0,2.5]}]}`)
	ids := []string{s.submit(t, "/v1/models/"+name+"/jobs", body)}
	r := do(t, "POST", s.url+"/v1/models/"+name+"/jobs", body, "Inferq-Priority", "high")
	var rec record.Record
	if r.json(t, &rec); r.code != http.StatusAccepted {
		t.Fatalf("high-priority job: %d %s", r.code, r.body)
	}
	ids = append(ids, rec.ID)
	for _, id := range ids {
		if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded || rec.Model != name {
			t.Fatalf("job %s: %+v", id, rec)
		}
		if got := s.result(t, id); got.ModelName != name || len(got.Outputs) != 2 {
			t.Fatalf("result of %s: %+v", id, got)
		}
	}
	for range ids {
		select {
		case m := <-announced:
			if m.Subject != "inferq.results.iris~v1~5" {
				t.Fatalf("announced on %q", m.Subject)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a finished job of the dotted model was not announced")
		}
	}
	if m, err := other.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("the dotted model's job was announced on iris's subject: %s", m.Data)
	}
	if r := do(t, "POST", s.url+"/v2/models/"+name+"/infer", body); r.code != http.StatusOK {
		t.Fatalf("synchronous call: %d %s", r.code, r.body)
	}
	batch := postBatch(t, s, name, strings.NewReader(string(body)+"\n"+string(body)+"\n"))
	if b := awaitBatch(t, s, batch.ID, 30*time.Second); b.Status != record.BatchSucceeded || b.Counts.Succeeded != 2 {
		t.Fatalf("batch file: %+v", b)
	}
	q, _ := openQueue(t, nc)
	if models, err := q.Models(context.Background()); err != nil || !slices.Contains(models, name) || !slices.Contains(models, "iris") || slices.ContainsFunc(models, func(m string) bool { return strings.Contains(m, "@") }) {
		t.Fatalf("the queue lists models %v (%v); want %s and iris", models, err, name)
	}
}
