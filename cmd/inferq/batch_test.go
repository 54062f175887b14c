package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"runtime/metrics"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// postBatch uploads a JSON Lines body and returns the batch record.
func postBatch(t *testing.T, s *server, model string, body io.Reader) record.BatchRecord {
	t.Helper()
	res, err := http.Post(s.url+"/v1/models/"+model+"/batches", "application/jsonl", body)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusAccepted || res.Header.Get("Location") == "" {
		t.Fatalf("POST batches: %d %s", res.StatusCode, b)
	}
	var rec record.BatchRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// awaitBatch polls a batch until it is final.
func awaitBatch(t *testing.T, s *server, id string, within time.Duration) record.BatchRecord {
	t.Helper()
	var rec record.BatchRecord
	eventually(t, within, "batch "+id+" finished", func() bool {
		rec = record.BatchRecord{}
		do(t, "GET", s.url+"/v1/batches/"+id, nil).json(t, &rec)
		return rec.Final()
	})
	return rec
}

// eachOutputLine streams a batch's output and calls fn with each line,
// numbered from 0, and returns how many there were.
func eachOutputLine(t *testing.T, s *server, id string, fn func(i int, o batchOut, raw []byte)) int {
	t.Helper()
	res, err := http.Get(s.url + "/v1/batches/" + id + "/output")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	r := bufio.NewReader(res.Body)
	i := 0
	for ; ; i++ {
		line, err := r.ReadBytes('\n') // lines of any length
		if err == io.EOF && len(line) == 0 {
			return i
		}
		if err != nil {
			t.Fatalf("output line %d: %v", i, err)
		}
		var o batchOut
		if err := json.Unmarshal(line, &o); err != nil {
			t.Fatalf("output line %d: %.200s: %v", i, line, err)
		}
		fn(i, o, line)
	}
}

type batchOut struct {
	CustomID json.RawMessage `json:"custom_id"`
	Response json.RawMessage `json:"response"`
	Error    string          `json:"error"`
}

// A batch file with good and bad lines: every line gets an output line, in
// input order, with its custom_id, and the good ones equal what ONNX
// Runtime gives for the line alone.
func TestBatchFile(t *testing.T) {
	s := startServe(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)}))
	d := openDirect(t, irisPath(t))
	rng := rand.New(rand.NewPCG(2, 9))
	const n = 1000
	var body strings.Builder
	inputs := make([][]tensor.Tensor, n)
	bad := map[int]string{17: `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]`, 500: `not json`, 999: `{"inputs":[{"name":"y","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`}
	for i := range n {
		if l, ok := bad[i]; ok {
			body.WriteString(strings.Replace(l, "{", fmt.Sprintf(`{"custom_id":"row-%d",`, i), 1) + "\n")
			continue
		}
		inputs[i] = randomInputs(rng, d.sig.Inputs, 1+i%3)
		line := string(requestJSON(inputs[i]))
		body.WriteString(`{"custom_id":"row-` + fmt.Sprint(i) + `",` + line[1:] + "\n")
		if i%100 == 0 {
			body.WriteString("\n") // blank lines are skipped
		}
	}
	rec := postBatch(t, s, "iris", strings.NewReader(body.String()))
	if rec.Jobs >= n/2 {
		t.Errorf("%d lines made %d jobs: lines were not packed", n, rec.Jobs)
	}
	rec = awaitBatch(t, s, rec.ID, time.Minute)
	if rec.Status != record.BatchSucceeded || rec.Counts.Total != n || rec.Counts.Failed != int64(len(bad)) || rec.Counts.Succeeded != n-int64(len(bad)) {
		t.Fatalf("batch %+v", rec)
	}
	i := eachOutputLine(t, s, rec.ID, func(i int, o batchOut, raw []byte) {
		want := fmt.Sprintf(`"row-%d"`, i)
		if i == 500 {
			want = "null" // a line that is not JSON has no custom_id to echo
		}
		if string(o.CustomID) != want {
			t.Fatalf("output line %d has custom_id %s, want %s", i, o.CustomID, want)
		}
		if _, isBad := bad[i]; isBad {
			if o.Error == "" || o.Response != nil {
				t.Fatalf("bad line %d: %s", i, raw)
			}
			return
		}
		resp, err := tensor.DecodeResponse(o.Response)
		if err != nil {
			t.Fatalf("line %d: %v: %s", i, err, raw)
		}
		assertClose(t, fmt.Sprintf("line %d", i), resp.Outputs, d.run(t, inputs[i]))
	})
	if i != n {
		t.Fatalf("%d output lines, want %d", i, n)
	}
	// The failed lines alone, each with its line number.
	r := do(t, "GET", s.url+"/v1/batches/"+rec.ID+"/output?only=errors", nil)
	var got []string
	for l := range strings.Lines(string(r.body)) {
		var o struct {
			CustomID json.RawMessage `json:"custom_id"`
			Line     int             `json:"line"`
			Error    string          `json:"error"`
			Response json.RawMessage `json:"response"`
		}
		if err := json.Unmarshal([]byte(l), &o); err != nil || o.Error == "" || o.Response != nil {
			t.Fatalf("error line %q: %v", l, err)
		}
		got = append(got, fmt.Sprintf("%d %s", o.Line, o.CustomID))
	}
	if want := []string{`18 "row-17"`, `501 null`, `1000 "row-999"`}; r.code != http.StatusOK || !slices.Equal(got, want) {
		t.Fatalf("?only=errors: %d, lines %q, want %q", r.code, got, want)
	}
	if r := do(t, "GET", s.url+"/v1/batches/"+rec.ID+"/output?only=responses", nil); r.code != http.StatusBadRequest || !strings.Contains(r.errorMessage(t), "only=errors") {
		t.Fatalf("?only=responses: %d %s", r.code, r.body)
	}
	if r := do(t, "DELETE", s.url+"/v1/batches/"+rec.ID, nil); r.code != http.StatusConflict {
		t.Fatalf("cancelling a finished batch: %d %s", r.code, r.body)
	}
}

// A batch file that cannot be read to its end fails as a whole, with the
// line it stopped at, wherever in the file that is (lines are read and
// parsed ahead of the line being packed).
func TestBatchFileReadErrors(t *testing.T) {
	s := startServe(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)}),
		"--max-body", "4096", "--max-batch-bytes", "200000")
	line := func(i int) string {
		return fmt.Sprintf(`{"custom_id":%d,"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`+"\n", i)
	}
	tests := []struct {
		name  string
		lines int
		long  int // the line (from 1) made longer than --max-body; 0 for none
		code  int
		want  string
	}{
		{"a line too long", 1000, 700, http.StatusRequestEntityTooLarge, "failed after 699 lines: reading line 700: a line is longer than 4096 bytes"},
		{"a line too long first", 10, 1, http.StatusRequestEntityTooLarge, "failed after 0 lines: reading line 1: a line is longer than 4096 bytes"},
		{"a file too large", 3000, 0, http.StatusRequestEntityTooLarge, "the batch file exceeds the limit of 200000 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body strings.Builder
			for i := 1; i <= tt.lines; i++ {
				if i == tt.long {
					body.WriteString(`{"custom_id":"long","pad":"` + strings.Repeat("x", 5000) + `"}` + "\n")
					continue
				}
				body.WriteString(line(i))
			}
			r := do(t, "POST", s.url+"/v1/models/iris/batches", []byte(body.String()))
			if r.code != tt.code || !strings.Contains(r.errorMessage(t), tt.want) {
				t.Fatalf("%d %s, want %d and %q", r.code, r.body, tt.code, tt.want)
			}
			id := strings.Fields(r.errorMessage(t))[1]
			var rec record.BatchRecord
			if do(t, "GET", s.url+"/v1/batches/"+id, nil).json(t, &rec); rec.Status != record.BatchFailed {
				t.Fatalf("batch %+v, want failed", rec)
			}
		})
	}
}

// A model whose outputs depend on which rows share a run is served with
// max_batch_size 1. A batch file still packs its lines into jobs, so that
// they share the costs of a job, and the worker runs such a job a row at a
// time: every line gets the model's output for that line alone. Requests
// over HTTP are held to one row.
func TestBatchFileMaxBatchOne(t *testing.T) {
	path := filepath.Join(t.TempDir(), "centered.onnx")
	writeFile(t, path, onnxbuild.BatchCentered())
	s := startServe(t, testenv.ModelRepo(t, map[string]string{
		"centered/1/model.onnx": "@" + path,
		"centered/config.yaml":  "max_batch_size: 1\n",
	}))
	d := openDirect(t, path)
	rng := rand.New(rand.NewPCG(3, 1))
	// Stacked, two rows change each other's outputs: the test can tell.
	if two := d.run(t, randomInputs(rng, d.sig.Inputs, 2)); tensor.NumElements(two[0].Shape) != 8 || slices.Equal(two[0].Data, make([]byte, 32)) {
		t.Fatalf("two rows in one run gave %v; the fixture should mix them", two[0])
	}
	const n = 600
	var body strings.Builder
	inputs := make([][]tensor.Tensor, n)
	for i := range n {
		inputs[i] = randomInputs(rng, d.sig.Inputs, 1)
		line := string(requestJSON(inputs[i]))
		body.WriteString(`{"custom_id":` + fmt.Sprint(i) + `,` + line[1:] + "\n")
	}
	rec := postBatch(t, s, "centered", strings.NewReader(body.String()))
	if rec.Jobs > n/100 {
		t.Errorf("%d lines made %d jobs: lines were not packed", n, rec.Jobs)
	}
	rec = awaitBatch(t, s, rec.ID, time.Minute)
	if rec.Status != record.BatchSucceeded || rec.Counts.Succeeded != n {
		t.Fatalf("batch %+v", rec)
	}
	assertOutputLines(t, s, rec.ID, n, func(i int) ([]tensor.Tensor, string) { return d.run(t, inputs[i]), "" })
	r := do(t, "POST", s.url+"/v1/models/centered/jobs", requestJSON(randomInputs(rng, d.sig.Inputs, 2)))
	if r.code != http.StatusBadRequest || !strings.Contains(r.errorMessage(t), "max batch size 1") {
		t.Fatalf("a two-row request: %d %s", r.code, r.body)
	}
}

// Batch-file lines share jobs: stacked along the batch dimension, or laid
// end to end whatever their shapes, for models that run one request at a
// time (state on the second axis, a scalar output: each runs alone) and
// for lines whose shapes differ (those of one shape run together).
// Every line gets ONNX Runtime's own answer for it, with the outputs it
// asked for, and a line that ONNX Runtime fails on fails alone, whichever
// way its job was packed.
func TestBatchFilePackedLines(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{}
	for name, b := range map[string][]byte{"recurrent": onnxbuild.Recurrent(), "total": onnxbuild.Total(), "lookup": onnxbuild.Lookup(), "rowsum": onnxbuild.RowSum(), "tablelookup": onnxbuild.TableLookup()} {
		path := filepath.Join(dir, name+".onnx")
		writeFile(t, path, b)
		files[name+"/1/model.onnx"] = "@" + path
	}
	s := startServe(t, testenv.ModelRepo(t, files))
	rng := rand.New(rand.NewPCG(4, 2))
	for _, c := range []struct {
		model    string
		n        int
		line     func(i int, ios []onnx.IO) ([]tensor.Tensor, string) // inputs, outputs asked for
		bad, ort map[int]bool                                         // refused at upload; failing in ONNX Runtime
	}{
		{"recurrent", 300, func(i int, ios []onnx.IO) ([]tensor.Tensor, string) {
			in := randomInputs(rng, ios, 1+i%3, int64(1+i%3))
			switch {
			case i == 42:
				in[0].Shape[1] = 5 // x [b, 5]: not what the model takes
			case i == 17:
				in[1] = randomInputs(rng, ios, 3, 3)[1] // x [3, 4] against h [1, 3, 4]: fails in the run
				in[0] = randomInputs(rng, ios, 2, 2)[0]
			case i >= 100 && i < 150:
				return in, "h_next"
			}
			return in, ""
		}, map[int]bool{42: true}, map[int]bool{17: true}},
		{"total", 100, func(i int, ios []onnx.IO) ([]tensor.Tensor, string) {
			return randomInputs(rng, ios, 1+i%4), ""
		}, nil, nil},
		{"lookup", 600, func(i int, ios []onnx.IO) ([]tensor.Tensor, string) {
			in := randomInputs(rng, ios, 1+i%3)
			if i == 57 || i == 400 {
				in[0].Data[0] = 42 // no such row in the table: fails in the run
			}
			return in, ""
		}, nil, map[int]bool{57: true, 400: true}},
		{"tablelookup", 300, func(i int, ios []onnx.IO) ([]tensor.Tensor, string) {
			in := randomInputs(rng, ios, 1+i%3)
			in[0].Data = slices.Repeat([]byte{0, 0, 128, 63}, 30) // one table (all 1.0) for every line: shared by the job
			if i == 77 {
				in[1].Data[0] = 42 // no such row: fails in the run
			}
			return in, ""
		}, nil, map[int]bool{77: true}},
		{"rowsum", 500, func(i int, ios []onnx.IO) ([]tensor.Tensor, string) {
			return randomInputs(rng, ios, 1+i%2, int64(2+i%3)), "" // widths 2, 3, 4 in turn
		}, nil, nil},
	} {
		t.Run(c.model, func(t *testing.T) {
			d := openDirect(t, filepath.Join(dir, c.model+".onnx"))
			var body strings.Builder
			inputs := make([][]tensor.Tensor, c.n)
			wants := make([]string, c.n)
			for i := range c.n {
				inputs[i], wants[i] = c.line(i, d.sig.Inputs)

				line := string(requestJSON(inputs[i]))
				if wants[i] != "" {
					line = line[:len(line)-1] + `,"outputs":[{"name":"` + wants[i] + `"}]}`
				}
				body.WriteString(`{"custom_id":` + fmt.Sprint(i) + `,` + line[1:] + "\n")
			}
			rec := postBatch(t, s, c.model, strings.NewReader(body.String()))
			// Up to 256 rows a job; a model with shared inputs, at most its
			// max batch size (32).
			most := int64(8)
			if c.model == "tablelookup" {
				most = 25
			}
			if rec.Jobs > most {
				t.Errorf("%d lines made %d jobs: lines were not packed", c.n, rec.Jobs)
			}
			rec = awaitBatch(t, s, rec.ID, time.Minute)
			failed := int64(len(c.bad) + len(c.ort))
			if rec.Status != record.BatchSucceeded || rec.Counts.Succeeded != int64(c.n)-failed || rec.Counts.Failed != failed {
				t.Fatalf("batch %+v", rec)
			}
			errs := do(t, "GET", s.url+"/v1/batches/"+rec.ID+"/output?only=errors", nil)
			if n := strings.Count(string(errs.body), "\n"); errs.code != http.StatusOK || n != int(failed) {
				t.Errorf("?only=errors: %d, %d lines, want %d: %s", errs.code, n, failed, errs.body)
			}
			assertOutputLines(t, s, rec.ID, c.n, func(i int) ([]tensor.Tensor, string) {
				switch {
				case c.bad[i]:
					return nil, fmt.Sprintf("line %d: ", i+1)
				case c.ort[i]:
					return nil, "ONNX Runtime"
				}
				want := d.run(t, inputs[i])
				if wants[i] != "" {
					want = slices.DeleteFunc(want, func(t tensor.Tensor) bool { return t.Name != wants[i] })
				}
				return want, ""
			})
		})
	}
}

// assertOutputLines reads a finished batch's output and checks its n
// lines in order: line i's response against want(i)'s outputs, or where
// those are nil, an error line that says want(i)'s failure, and no
// response. A line's response stands on its own: no packing parameters.
func assertOutputLines(t *testing.T, s *server, id string, n int, want func(i int) (outputs []tensor.Tensor, failure string)) {
	t.Helper()
	got := eachOutputLine(t, s, id, func(i int, o batchOut, raw []byte) {
		w, failure := want(i)
		if w == nil {
			if o.Error == "" || o.Response != nil || !strings.Contains(o.Error, failure) {
				t.Fatalf("line %d should have failed (saying %q): %s", i, failure, raw)
			}
			return
		}
		resp, err := tensor.DecodeResponse(o.Response)
		if err != nil || len(resp.Parameters) > 0 {
			t.Fatalf("line %d: %v: %s", i, err, raw)
		}
		assertClose(t, fmt.Sprintf("line %d", i), resp.Outputs, w)
	})
	if got != n {
		t.Fatalf("%d output lines, want %d", got, n)
	}
}

// assertBatchFile sends inputs as the lines of one batch file and checks
// that each line's output is what ONNX Runtime gives for it alone.
func assertBatchFile(t *testing.T, s *server, model string, inputs [][]tensor.Tensor, ref *direct) {
	t.Helper()
	var file strings.Builder
	for i := range inputs {
		file.WriteString(string(requestJSON(inputs[i])) + "\n")
	}
	rec := postBatch(t, s, model, strings.NewReader(file.String()))
	if rec = awaitBatch(t, s, rec.ID, 2*time.Minute); rec.Counts.Succeeded != int64(len(inputs)) {
		t.Fatalf("batch %+v", rec)
	}
	assertOutputLines(t, s, rec.ID, len(inputs), func(i int) ([]tensor.Tensor, string) { return ref.run(t, inputs[i]), "" })
}

// A large batch file is read as it arrives: the server's heap stays far
// below the file's size, and the output comes back complete and in order.
func TestBatchFileStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("uploads 100,000 lines (about 250 MB); skipped with -short")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "wide.onnx")
	writeFile(t, path, onnxbuild.Dense(256, 1, 3))
	s := startServe(t, testenv.ModelRepo(t, map[string]string{"wide/1/model.onnx": "@" + path}))
	const n = 100_000
	// One line, repeated with its custom_id: 256 floats, about 2.5 KB.
	row := make([]string, 256)
	for i := range row {
		row[i] = fmt.Sprintf("%.6f", float64(i)/300)
	}
	tail := `"inputs":[{"name":"x","shape":[1,256],"datatype":"FP32","data":[` + strings.Join(row, ",") + `]}]}` + "\n"
	var sent atomic.Int64
	pr, pw := io.Pipe()
	go func() {
		w := bufio.NewWriterSize(pw, 1<<20)
		for i := range n {
			m, _ := fmt.Fprintf(w, `{"custom_id":%d,`, i)
			k, _ := w.WriteString(tail)
			sent.Add(int64(m + k))
		}
		w.Flush()
		pw.Close()
	}()
	// The live heap, as of the last collection, is what the process
	// holds; the heap in use also counts garbage not yet collected, which
	// grows with how fast the upload allocates rather than with what it
	// keeps. It includes the embedded NATS server's, whose caches of the
	// stream grow with the backlog the upload builds up.
	var peak atomic.Uint64
	stop := make(chan struct{})
	go func() {
		live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			metrics.Read(live)
			if v := live[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
		}
	}()
	rec := postBatch(t, s, "wide", pr)
	rec = awaitBatch(t, s, rec.ID, 5*time.Minute)
	close(stop)
	if rec.Status != record.BatchSucceeded || rec.Counts.Succeeded != n {
		t.Fatalf("batch %+v", rec)
	}
	t.Logf("%d lines, %d MB uploaded in %d jobs; live heap peaked at %d MB", n, sent.Load()>>20, rec.Jobs, peak.Load()>>20)
	if peak.Load() > uint64(sent.Load())/2 {
		t.Errorf("live heap peaked at %d MB for a %d MB file: the upload is not streamed", peak.Load()>>20, sent.Load()>>20)
	}
	i := eachOutputLine(t, s, rec.ID, func(i int, o batchOut, raw []byte) {
		if string(o.CustomID) != fmt.Sprint(i) || len(o.Response) == 0 {
			t.Fatalf("output line %d: %.200s", i, raw)
		}
	})
	if i != n {
		t.Fatalf("%d output lines, want %d", i, n)
	}
}

// Cancelling a batch cancels its queued jobs: workers that come later skip
// them, and the output says so line by line.
func TestBatchCancel(t *testing.T) {
	repo := testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)})
	data := t.TempDir()
	s := startServe(t, repo, "--data", data, "--only", "none")
	var body strings.Builder
	for i := range 200 {
		fmt.Fprintf(&body, `{"custom_id":%d,"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`+"\n", i)
	}
	rec := postBatch(t, s, "iris", strings.NewReader(body.String()))
	if rec.Status != record.BatchRunning || rec.Counts.Total != 200 {
		t.Fatalf("batch %+v", rec)
	}
	if r := do(t, "GET", s.url+"/v1/batches/"+rec.ID+"/output", nil); r.code != http.StatusConflict {
		t.Fatalf("output of a running batch: %d %s", r.code, r.body)
	}
	r := do(t, "DELETE", s.url+"/v1/batches/"+rec.ID, nil)
	r.json(t, &rec)
	if r.code != http.StatusOK || rec.Status != record.BatchCancelled {
		t.Fatalf("cancel: %d %s", r.code, r.body)
	}
	s.stop()
	s = startServe(t, repo, "--data", data)
	testenv.Poll(30*time.Second, func() bool {
		do(t, "GET", s.url+"/v1/batches/"+rec.ID, nil).json(t, &rec)
		return rec.Counts.Cancelled >= 200
	})
	if rec.Status != record.BatchCancelled || rec.Counts.Cancelled != 200 || rec.Counts.Succeeded != 0 {
		t.Fatalf("batch after cancel: %+v", rec)
	}
	r = do(t, "GET", s.url+"/v1/batches/"+rec.ID+"/output", nil)
	lines := strings.Split(strings.TrimSpace(string(r.body)), "\n")
	if r.code != http.StatusOK || len(lines) != 200 || !strings.Contains(lines[0], "cancelled") {
		t.Fatalf("output: %d, %d lines, first %s", r.code, len(lines), lines[0])
	}
}
