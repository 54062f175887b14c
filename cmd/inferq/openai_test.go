package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// A batch file written for OpenAI's Batch API runs unchanged but for its
// url: each line {"custom_id", "method", "url", "body"} is answered with
// {"id", "custom_id", "response": {"status_code", "body"}, "error"}, its
// body the V2 response ONNX Runtime gives; a line of inferq's own form
// in the same file keeps its form; a wrong method, model or version is
// that line's 400.
func TestOpenAIBatchLines(t *testing.T) {
	s := startServe(t, irisRepo(t, "iris"))
	d := openDirect(t, irisPath(t))
	flowers := [][]float32{{5.1, 3.5, 1.4, 0.2}, {6.7, 3.0, 5.2, 2.3}, {5.9, 3.0, 5.1, 1.8}}
	v2 := func(f []float32) string {
		return fmt.Sprintf(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[%g,%g,%g,%g]}]}`, f[0], f[1], f[2], f[3])
	}
	line := func(id, method, url string, f []float32) string {
		return fmt.Sprintf(`{"custom_id":%q,"method":%q,"url":%q,"body":%s}`, id, method, url, v2(f)) + "\n"
	}
	file := line("request-1", "POST", "/v2/models/iris/infer", flowers[0]) +
		`{"custom_id":"own-form",` + v2(flowers[1])[1:] + "\n" +
		line("request-3", "POST", "/v1/models/iris/versions/1/jobs", flowers[2]) +
		line("wrong-method", "GET", "/v2/models/iris/infer", flowers[0]) +
		line("wrong-model", "POST", "/v2/models/resnet/infer", flowers[0]) +
		line("wrong-version", "POST", "/v2/models/iris/versions/2/infer", flowers[0])
	rec := postBatch(t, s, "iris", strings.NewReader(file))
	if got := awaitBatch(t, s, rec.ID, 30*time.Second); got.Status != record.BatchSucceeded || got.Counts.Succeeded != 3 || got.Counts.Failed != 3 {
		t.Fatalf("batch %+v, want succeeded with 3 lines failed", got)
	}
	type openAIOut struct {
		ID       string `json:"id"`
		CustomID string `json:"custom_id"`
		Response *struct {
			StatusCode int             `json:"status_code"`
			Body       json.RawMessage `json:"body"`
		} `json:"response"`
		Error json.RawMessage `json:"error"`
	}
	want := map[int]struct {
		id, custom string
		flower     int    // -1: an error
		says       string // of an error
	}{
		0: {rec.ID + "-1", "request-1", 0, ""},
		2: {rec.ID + "-3", "request-3", 2, ""},
		3: {rec.ID + "-4", "wrong-method", -1, `method "GET"`},
		4: {rec.ID + "-5", "wrong-model", -1, "names model resnet"},
		5: {rec.ID + "-6", "wrong-version", -1, "names version 2"},
	}
	n := eachOutputLine(t, s, rec.ID, func(i int, o batchOut, raw []byte) {
		if i == 1 { // inferq's own form
			if string(o.CustomID) != `"own-form"` || len(o.Response) == 0 || strings.Contains(string(raw), `"status_code"`) {
				t.Errorf("line 2 (inferq's form): %s", raw)
			}
			return
		}
		var got openAIOut
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatalf("line %d: %s: %v", i+1, raw, err)
		}
		w := want[i]
		if got.ID != w.id || got.CustomID != w.custom || got.Response == nil || string(got.Error) != "null" {
			t.Fatalf("line %d: %s", i+1, raw)
		}
		if w.flower < 0 {
			var body struct{ Error string }
			json.Unmarshal(got.Response.Body, &body)
			if got.Response.StatusCode != 400 || !strings.Contains(body.Error, w.says) {
				t.Errorf("line %d: %s, want status 400 saying %q", i+1, raw, w.says)
			}
			return
		}
		resp, err := tensor.DecodeResponse(got.Response.Body)
		if err != nil || got.Response.StatusCode != 200 {
			t.Fatalf("line %d: %s: %v", i+1, raw, err)
		}
		f := flowers[w.flower]
		assertClose(t, w.custom, resp.Outputs, d.run(t, []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 4}, Data: f32(f...)}}))
	})
	if n != 6 {
		t.Errorf("%d output lines, want 6", n)
	}
}

// A batch whose every line failed ends failed, saying so, and its output
// (every line's reason) is served; `inferq batch` writes it and exits
// with the error. A batch with one good line among bad ones succeeds.
func TestBatchOfFailedLinesFails(t *testing.T) {
	s := startServe(t, irisRepo(t, "iris"))
	bad := `{"custom_id":"a","inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}` + "\n" +
		`{"custom_id":"b","inputs":[{"name":"y","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}` + "\n"
	rec := postBatch(t, s, "iris", strings.NewReader(bad))
	got := awaitBatch(t, s, rec.ID, 30*time.Second)
	if got.Status != record.BatchFailed || got.Counts.Failed != 2 || !strings.Contains(got.Error, "every one of its 2 lines failed") {
		t.Fatalf("batch %+v, want failed, every line failed", got)
	}
	if n := eachOutputLine(t, s, rec.ID, func(i int, o batchOut, raw []byte) {
		if o.Error == "" {
			t.Errorf("line %d: %s, want its error", i+1, raw)
		}
	}); n != 2 {
		t.Errorf("%d output lines, want 2", n)
	}

	in := filepath.Join(t.TempDir(), "bad.jsonl")
	out := filepath.Join(t.TempDir(), "out.jsonl")
	writeFile(t, in, []byte(bad))
	stdout, stderr, code := runCLI(t, s.url, "", "batch", "--model", "iris", "--output", out, in)
	written, _ := os.ReadFile(out)
	if code == 0 || !strings.Contains(stderr, "every one of its 2 lines failed") || strings.Count(string(written), "\n") != 2 {
		t.Errorf("inferq batch of failed lines: exit %d, stdout %q, stderr %q, output %q; want a failure with the output written", code, stdout, stderr, written)
	}

	rec = postBatch(t, s, "iris", strings.NewReader(bad+irisJob+"\n"))
	if got := awaitBatch(t, s, rec.ID, 30*time.Second); got.Status != record.BatchSucceeded || got.Counts.Succeeded != 1 {
		t.Fatalf("batch with one good line: %+v, want succeeded", got)
	}
}
