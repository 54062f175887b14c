package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/storage"
	"github.com/inferq/inferq/tensor"
)

func s3Flags(m *testenv.MinIO, bucket string) []string {
	return []string{"--s3-endpoint", m.Endpoint, "--s3-bucket", bucket, "--s3-access-key", m.AccessKey, "--s3-secret-key", m.SecretKey, "--s3-secure=false"}
}

// With --s3-* pointed at MinIO and the job layout, each result is an
// object keyed by job id in the bucket, and result_url is a presigned URL
// that a plain HTTP GET reads.
func TestS3Results(t *testing.T) {
	m := testenv.StartMinIO(t)
	s := startServe(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)}),
		append(s3Flags(m, "results"), "--result-layout", "job")...)
	d := openDirect(t, irisPath(t))
	bucket, err := storage.NewS3(context.Background(), storage.S3Options{Endpoint: m.Endpoint, Bucket: "results", AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	in := []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 4}, Data: f32(6.3, 3.3, 6.0, 2.5)}}
	var ids []string
	for range 5 {
		ids = append(ids, s.submit(t, "/v1/models/iris/jobs", requestJSON(in)))
	}
	for _, id := range ids {
		rec := s.await(t, id, 30*time.Second)
		if rec.Status != record.Succeeded || !strings.HasPrefix(rec.ResultURL, "http://"+m.Endpoint+"/results/results/iris/"+id+".json?") {
			t.Fatalf("record %+v: want a presigned URL of the job's object", rec)
		}
		res, err := http.Get(rec.ResultURL) // no credentials: the URL carries them
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		resp, err := tensor.DecodeResponse(b)
		if res.StatusCode != 200 || err != nil {
			t.Fatalf("GET result_url: %d %s %v", res.StatusCode, b, err)
		}
		assertClose(t, "result_url", resp.Outputs, d.run(t, in))
		assertClose(t, "/result", s.result(t, id).Outputs, d.run(t, in))
	}
	keys, err := bucket.List(context.Background(), "results/iris/")
	if err != nil || len(keys) != len(ids) {
		t.Fatalf("bucket holds %v (%v), want an object per job", keys, err)
	}
}

// A request far larger than a NATS message (20 MiB, in the V2 binary
// form) is stored in MinIO, queued by reference, run, and its stored copy
// removed once it is done.
func TestLargeInputClaimCheck(t *testing.T) {
	m := testenv.StartMinIO(t)
	repo, files := fixtures(t, nil)
	s := startServe(t, repo, s3Flags(m, "large")...)
	d := openDirect(t, files["rowsum"])
	const rows, width = 5, 1 << 20 // 5 Mi floats: 20 MiB
	x := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{rows, width}, Data: make([]byte, 4*rows*width)}
	for i := range rows * width {
		binary.LittleEndian.PutUint32(x.Data[4*i:], math.Float32bits(float32(i%7)/7))
	}
	req := &tensor.Request{Inputs: []tensor.Tensor{x}}
	body, n, err := req.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	hr, _ := http.NewRequest("POST", s.url+"/v1/models/rowsum/jobs", bytes.NewReader(body))
	hr.Header.Set("Inference-Header-Content-Length", strconv.Itoa(n))
	res, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	var rec record.Record
	response{body: mustRead(t, res)}.json(t, &rec)
	if res.StatusCode != http.StatusAccepted {
		t.Fatalf("submit %d MiB: %d %+v", len(body)>>20, res.StatusCode, rec)
	}
	if got := s.await(t, rec.ID, time.Minute); got.Status != record.Succeeded {
		t.Fatalf("large job: %+v", got)
	}
	assertClose(t, "large job", s.result(t, rec.ID).Outputs, d.run(t, req.Inputs))
	bucket, _ := storage.NewS3(context.Background(), storage.S3Options{Endpoint: m.Endpoint, Bucket: "large", AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if keys, err := bucket.List(context.Background(), "payloads/"); err != nil || len(keys) != 0 {
		t.Fatalf("payloads left behind: %v %v", keys, err)
	}
}

func mustRead(t *testing.T, res *http.Response) []byte {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// MinIO stopped while jobs run and started again: no job is lost or
// failed; the workers hold back and resume.
func TestStorageOutage(t *testing.T) {
	m := testenv.StartMinIO(t)
	slow := "max_batch_size: 4\n"
	repo, files := fixtures(t, map[string]string{"lookup": slow})
	s := startServe(t, repo, s3Flags(m, "outage")...)
	d := openDirect(t, files["lookup"])
	var ids []string
	var mu sync.Mutex
	submit := func(n int) {
		for i := range n {
			id := s.submit(t, "/v1/models/lookup/jobs", lookupRequest(int64(i%10)))
			mu.Lock()
			ids = append(ids, id)
			mu.Unlock()
		}
	}
	submit(20)
	m.Stop()
	if r := do(t, "GET", s.url+"/v2/health/ready", nil); r.code != http.StatusServiceUnavailable {
		t.Errorf("ready with storage down: %d %s", r.code, r.body)
	}
	submit(30) // accepted while storage is away: they wait
	// Storage comes back once the worker has failed to write to it.
	eventually(t, time.Minute, "a result write failed while storage was down", func() bool {
		return s.metrics(t)["inferq_result_write_seconds,model=lookup,outcome=error,stat=count"] > 0
	})
	m.Start()
	for i, id := range ids {
		rec := s.await(t, id, 2*time.Minute)
		if rec.Status != record.Succeeded {
			t.Fatalf("job %d after the outage: %+v", i, rec)
		}
		if rec.Attempts > 1 {
			t.Errorf("job %d: %d attempts counted for a storage outage", i, rec.Attempts)
		}
		assertClose(t, fmt.Sprint("job ", i), s.result(t, id).Outputs, d.run(t, []tensor.Tensor{{Name: "idx", Datatype: tensor.Int64, Shape: []int64{1}, Data: binary.LittleEndian.AppendUint64(nil, uint64(i%10))}}))
	}
	if f := s.metrics(t)["inferq_jobs_finished_total,model=lookup,status=failed"]; f != 0 {
		t.Errorf("%v jobs failed during a storage outage", f)
	}
}

// An input may name a stored object instead of carrying its data: the
// worker reads it before the run. A missing object, or one that does not
// fit the input's shape, fails the job with the reason; a bad key is
// refused at submit.
func TestInputsByReference(t *testing.T) {
	data := t.TempDir()
	s := startServe(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)}), "--data", data)
	d := openDirect(t, irisPath(t))
	x := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{2, 4}, Data: f32(5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3)}
	store, err := storage.NewDir(filepath.Join(data, "objects"))
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(context.Background(), "inputs/iris/two-flowers.raw", bytes.NewReader(x.Data)); err != nil {
		t.Fatal(err)
	}
	if err := store.Put(context.Background(), "inputs/iris/short.raw", bytes.NewReader(x.Data[:12])); err != nil {
		t.Fatal(err)
	}
	ref := func(key string) []byte {
		return []byte(`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","parameters":{"inferq_object":"` + key + `"}}]}`)
	}
	id := s.submit(t, "/v1/models/iris/jobs", ref("inputs/iris/two-flowers.raw"))
	if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded {
		t.Fatalf("job by reference: %+v", rec)
	}
	assertClose(t, "by reference", s.result(t, id).Outputs, d.run(t, []tensor.Tensor{x}))

	for key, want := range map[string]string{"inputs/iris/missing.raw": "not found", "inputs/iris/short.raw": "do not fit"} {
		id := s.submit(t, "/v1/models/iris/jobs", ref(key))
		if rec := s.await(t, id, 30*time.Second); rec.Status != record.Failed || !strings.Contains(rec.Error, key) || !strings.Contains(rec.Error, want) {
			t.Errorf("%s: %+v, want failed saying %q", key, rec, want)
		}
	}
	// A folder of the store is no object: the job fails at once rather
	// than come back for ever.
	if err := store.Put(context.Background(), "inputs/iris/dir/x.raw", bytes.NewReader(x.Data)); err != nil {
		t.Fatal(err)
	}
	id = s.submit(t, "/v1/models/iris/jobs", ref("inputs/iris/dir"))
	if rec := s.await(t, id, 30*time.Second); rec.Status != record.Failed || !strings.Contains(rec.Error, "not found") {
		t.Errorf("a folder: %+v, want failed, not found", rec)
	}
	// Keys that are no keys, and keys outside the model's inputs (its
	// results, another model's inputs, the store's own folders), are
	// refused before they are queued.
	for _, key := range []string{"../etc/passwd", "results", "tensors", "inputs/iris", "inputs/iris/", "results/iris/x.jsonl", "inputs/other/x.raw", "payloads/x.bin"} {
		if r := do(t, "POST", s.url+"/v1/models/iris/jobs", ref(key)); r.code != http.StatusBadRequest || !strings.Contains(r.errorMessage(t), "inferq_object") {
			t.Errorf("key %q: %d %s", key, r.code, r.body)
		}
	}
}
