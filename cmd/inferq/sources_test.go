package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// stripes is a small PNG, different for each i.
func stripes(t testing.TB, i, w, h int) []byte {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{uint8(i*7 + x), uint8(i*13 + 3*y), uint8(255 * ((x / (2 + i%5)) % 2)), 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// putObjects stores files under their keys in store, 16 at a time.
func putObjects(t testing.TB, store interface {
	Put(context.Context, string, io.Reader) error
}, files map[string][]byte) {
	t.Helper()
	var wg sync.WaitGroup
	slots := make(chan struct{}, 16)
	for k, b := range files {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			if err := store.Put(context.Background(), k, bytes.NewReader(b)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
}

// followedLine is a line of a followed batch output.
type followedLine struct {
	CustomID string          `json:"custom_id"`
	Line     int64           `json:"line"`
	Response json.RawMessage `json:"response"`
	Error    string          `json:"error"`
}

// follow reads batch id's followed output from after, at most limit lines
// (0: to its end), and hangs up.
func follow(t testing.TB, s *server, id string, after, limit int) []followedLine {
	t.Helper()
	res, err := http.Get(fmt.Sprintf("%s/v1/batches/%s/output?follow=1&after=%d", s.url, id, after))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("follow: %d %s", res.StatusCode, b)
	}
	var out []followedLine
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var l followedLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("followed line %q: %v", sc.Bytes(), err)
		}
		if l.Line == 0 {
			t.Fatalf("followed output ended with %s", sc.Bytes())
		}
		out = append(out, l)
		if len(out) == limit {
			return out
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("follow: %v", err)
	}
	return out
}

// A batch over a prefix of a bucket the operator allowed: 2,000 pictures
// through a pipeline (decode, resize, normalise, PaddleOCR's direction
// classifier), a line per object in key order, its key the custom_id.
// The followed output is dropped after 700 lines and resumed; what it
// gives is every line once, the same order when asked again after the
// end, and answers equal to the steps run by hand. Prefixes outside the
// allowed ones are refused alike, whether they exist or not.
func TestSourceBatches(t *testing.T) {
	m := testenv.StartMinIO(t)
	photos, err := storage.NewS3(context.Background(), storage.S3Options{Endpoint: m.Endpoint, Bucket: "photos", AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	files := map[string][]byte{}
	for i := range n {
		files[fmt.Sprintf("2026/%02d/img-%05d.png", i%7, i)] = stripes(t, i, 40, 16)
	}
	files["private/secret.png"] = stripes(t, 1, 40, 16)
	putObjects(t, photos, files)
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range files {
			if strings.HasPrefix(k, "2026/") && !yield(k) {
				return
			}
		}
	})

	cls := testenv.ThirdParty(t, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
	ref := openDirect(t, cls)
	in, out := ref.sig.Inputs[0].Name, ref.sig.Outputs[0].Name
	s := startServe(t, testenv.ModelRepo(t, map[string]string{
		"ocrcls/1/model.onnx":     "@" + cls,
		"direction/pipeline.yaml": directionPipeline(in, out),
	}), append(s3Flags(m, "results"), "--batch-sources", "s3://photos/2026/")...)

	for _, src := range []string{"s3://photos/private/", "s3://photos/", "s3://nosuch/2026/", "s3://photos/2026/../private/", "results/", "inputs/other/", "inputs/direction/../other/"} {
		r := do(t, "POST", s.url+"/v1/models/direction/batches?source="+src, nil)
		if r.code != http.StatusForbidden {
			t.Errorf("source %s: %d %s, want 403", src, r.code, r.body)
		}
		if msg := r.errorMessage(t); strings.Contains(msg, "exist") || strings.Contains(msg, "not found") {
			t.Errorf("source %s: the refusal %q says what exists", src, msg)
		}
	}

	r := do(t, "POST", s.url+"/v1/models/direction/batches?source=s3://photos/2026/", nil)
	if r.code != http.StatusAccepted {
		t.Fatalf("POST ?source=: %d %s", r.code, r.body)
	}
	var b record.BatchRecord
	r.json(t, &b)
	if b.Source != "s3://photos/2026/" {
		t.Fatalf("batch record %+v: want its source", b)
	}

	first := follow(t, s, b.ID, 0, 700)
	rest := follow(t, s, b.ID, 700, 0)
	lines := append(first, rest...)
	if len(lines) != n {
		t.Fatalf("followed %d + %d lines, want %d", len(first), len(rest), n)
	}
	byLine := map[int64]followedLine{}
	for _, l := range lines {
		if _, dup := byLine[l.Line]; dup {
			t.Fatalf("line %d followed twice", l.Line)
		}
		byLine[l.Line] = l
	}
	for i, key := range keys {
		l, ok := byLine[int64(i+1)]
		if !ok || l.CustomID != key || l.Error != "" {
			t.Fatalf("line %d: %+v, want %s answered", i+1, l, key)
		}
	}
	for _, i := range []int{0, 1, 500, 999, 1000, 1999} {
		resp, err := tensor.DecodeResponse(byLine[int64(i+1)].Response)
		if err != nil {
			t.Fatal(err)
		}
		want := ref.run(t, []tensor.Tensor{directionInput(t, files[keys[i]], in)})
		want[0].Name = "probs"
		assertClose(t, keys[i], resp.Outputs, want)
	}

	// Asked again once done, the followed output is the same, in the
	// same order: the order a resumed stream counts on.
	again := follow(t, s, b.ID, 0, 0)
	for i := range again {
		if again[i].Line != lines[i].Line {
			t.Fatalf("followed again, line %d of the output is input line %d, was %d", i, again[i].Line, lines[i].Line)
		}
	}
	var done record.BatchRecord
	do(t, "GET", s.url+"/v1/batches/"+b.ID, nil).json(t, &done)
	if done.Status != record.BatchSucceeded || done.Counts.Total != n || done.Counts.Succeeded != n {
		t.Fatalf("batch %+v", done)
	}
	// The plain output, in input order.
	plain := strings.Split(strings.TrimSpace(string(do(t, "GET", s.url+"/v1/batches/"+b.ID+"/output", nil).body)), "\n")
	if len(plain) != n {
		t.Fatalf("output has %d lines, want %d", len(plain), n)
	}
	for i, l := range plain {
		var ol followedLine
		if err := json.Unmarshal([]byte(l), &ol); err != nil || ol.CustomID != keys[i] || !bytes.Equal(ol.Response, byLine[int64(i+1)].Response) {
			t.Fatalf("output line %d: %.200s (%v), want %s's followed response", i+1, l, err, keys[i])
		}
	}

	// A batch file whose lines name objects of the allowed bucket (and
	// one outside it, refused on its own line).
	file := fmt.Sprintf(`{"custom_id":"a","object":"s3://photos/%s"}`+"\n"+`{"custom_id":"b","object":"s3://photos/private/secret.png"}`+"\n"+`{"custom_id":"c","object":"s3://photos/%s"}`+"\n", keys[3], keys[7])
	r = do(t, "POST", s.url+"/v1/models/direction/batches", []byte(file))
	if r.code != http.StatusAccepted {
		t.Fatalf("a batch file of object lines: %d %s", r.code, r.body)
	}
	var fb record.BatchRecord
	r.json(t, &fb)
	objLines := follow(t, s, fb.ID, 0, 0)
	slices.SortFunc(objLines, func(a, b followedLine) int { return int(a.Line - b.Line) })
	if len(objLines) != 3 || !strings.Contains(objLines[1].Error, "not among the sources") {
		t.Fatalf("object lines: %+v", objLines)
	}
	for i, line := range map[int]int64{0: 4, 2: 8} {
		got, err1 := tensor.DecodeResponse(objLines[i].Response)
		want, err2 := tensor.DecodeResponse(byLine[line].Response)
		if err1 != nil || err2 != nil {
			t.Fatalf("object line %d: %v %v", i+1, err1, err2)
		}
		assertClose(t, fmt.Sprintf("object line %d", i+1), got.Outputs, want.Outputs)
	}

	// The Parquet output, read by DuckDB: a row per line, the outputs
	// as lists with their shapes, equal to the JSON output's.
	pq := do(t, "GET", s.url+"/v1/batches/"+b.ID+"/output?format=parquet", nil)
	if pq.code != http.StatusOK {
		t.Fatalf("format=parquet: %d %.300s", pq.code, pq.body)
	}
	cols, rows := readParquet(t, pq.body)
	if want := map[string]string{"line": "BIGINT", "custom_id": "VARCHAR", "error": "VARCHAR", "probs": "FLOAT[]", "probs_shape": "BIGINT[]"}; !maps.Equal(cols, want) {
		t.Fatalf("DuckDB reads columns %v, want %v", cols, want)
	}
	if len(rows) != n {
		t.Fatalf("DuckDB reads %d rows, want %d", len(rows), n)
	}
	for i, row := range rows {
		var r struct {
			Line       string
			CustomID   string `json:"custom_id"`
			Error      *string
			Probs      []float32
			ProbsShape []string `json:"probs_shape"`
		}
		if err := json.Unmarshal(row, &r); err != nil {
			t.Fatal(err)
		}
		resp, err := tensor.DecodeResponse(byLine[int64(i+1)].Response)
		if err != nil {
			t.Fatal(err)
		}
		want := resp.Outputs[0]
		got := tensor.Tensor{Name: "probs", Datatype: tensor.FP32, Data: f32(r.Probs...)}
		for _, d := range r.ProbsShape {
			n, _ := strconv.ParseInt(d, 10, 64)
			got.Shape = append(got.Shape, n)
		}
		if r.Line != strconv.Itoa(i+1) || r.CustomID != keys[i] || r.Error != nil {
			t.Fatalf("Parquet row %d: %s", i+1, row)
		}
		assertClose(t, fmt.Sprintf("Parquet row %d", i+1), []tensor.Tensor{got}, []tensor.Tensor{want})
	}
}

// readParquet reads a Parquet file with DuckDB (`make duckdb`), a reader
// independent of the writer: its column types, and its rows by line, as
// JSON.
func readParquet(t testing.TB, file []byte) (map[string]string, []json.RawMessage) {
	t.Helper()
	script := filepath.Join(testenv.Root(t), "build", "peers", "duckdb", "parquet.mjs")
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("no DuckDB reader at %s: run `make duckdb` (make test does)", script)
	}
	p := filepath.Join(t.TempDir(), "out.parquet")
	writeFile(t, p, file)
	out, err := exec.Command("node", script, p).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("DuckDB: %v\n%s", err, stderr)
	}
	lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
	var head struct{ Columns map[string]string }
	if err := json.Unmarshal(lines[0], &head); err != nil {
		t.Fatalf("DuckDB printed %q: %v", lines[0], err)
	}
	rows := make([]json.RawMessage, len(lines)-1)
	for i, l := range lines[1:] {
		rows[i] = l
	}
	return head.Columns, rows
}

// Limits of a batch over a prefix of the store's inputs: a prefix of
// more objects than --max-batch-lines is refused with the count, an empty
// one too; an object over --max-body fails its line, not the batch.
func TestSourceBatchLimits(t *testing.T) {
	cls := testenv.ThirdParty(t, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
	ref := openDirect(t, cls)
	in, out := ref.sig.Inputs[0].Name, ref.sig.Outputs[0].Name
	objects := t.TempDir()
	s := startServe(t, testenv.ModelRepo(t, map[string]string{
		"ocrcls/1/model.onnx":     "@" + cls,
		"direction/pipeline.yaml": directionPipeline(in, out),
	}), "--storage", objects, "--max-batch-lines", "50", "--max-body", "4000")
	write := func(key string, b []byte) {
		p := filepath.Join(objects, filepath.FromSlash(key))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, p, b)
	}
	for i := range 60 {
		write(fmt.Sprintf("inputs/direction/many/%03d.png", i), stripes(t, i, 20, 8))
	}
	big := make([]byte, 5000)
	copy(big, stripes(t, 3, 20, 8))
	if len(big) <= 4000 {
		t.Fatalf("the big picture is %d bytes: not over --max-body", len(big))
	}
	for i := range 10 {
		b := stripes(t, i, 20, 8)
		if i == 4 {
			b = big
		}
		write(fmt.Sprintf("inputs/direction/some/%03d.png", i), b)
	}

	r := do(t, "POST", s.url+"/v1/models/direction/batches?source=inputs/direction/many/", nil)
	if r.code != http.StatusBadRequest || !strings.Contains(r.errorMessage(t), "holds 60 objects, more than the 50") {
		t.Errorf("60 objects, 50 lines at most: %d %s", r.code, r.body)
	}
	r = do(t, "POST", s.url+"/v1/models/direction/batches?source=inputs/direction/none/", nil)
	if r.code != http.StatusBadRequest || !strings.Contains(r.errorMessage(t), "holds no objects") {
		t.Errorf("an empty prefix: %d %s", r.code, r.body)
	}
	r = do(t, "POST", s.url+"/v1/models/direction/batches?source=inputs/direction/some/", []byte("{}\n"))
	if r.code != http.StatusBadRequest {
		t.Errorf("a source and a body: %d %s", r.code, r.body)
	}
	r = do(t, "POST", s.url+"/v1/models/ocrcls/batches?source=inputs/ocrcls/", nil)
	if r.code != http.StatusBadRequest || !strings.Contains(r.errorMessage(t), "one BYTES input") {
		t.Errorf("a model of a tensor input: %d %s", r.code, r.body)
	}

	r = do(t, "POST", s.url+"/v1/models/direction/batches?source=inputs/direction/some/", nil)
	if r.code != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.code, r.body)
	}
	var b record.BatchRecord
	r.json(t, &b)
	lines := follow(t, s, b.ID, 0, 0)
	if len(lines) != 10 {
		t.Fatalf("followed %d lines, want 10", len(lines))
	}
	for _, l := range lines {
		tooBig := l.CustomID == "inputs/direction/some/004.png"
		if tooBig != (l.Error != "") || tooBig && !strings.Contains(l.Error, "--max-body") {
			t.Errorf("line %d (%s): error %q", l.Line, l.CustomID, l.Error)
		}
	}
	var done record.BatchRecord
	do(t, "GET", s.url+"/v1/batches/"+b.ID, nil).json(t, &done)
	if done.Status != record.BatchSucceeded || done.Counts != (record.BatchCounts{Total: 10, Succeeded: 9, Failed: 1}) {
		t.Fatalf("batch %+v", done)
	}

	// The same from the command line: followed, and as Parquet.
	stdout, stderr, code := runCLI(t, s.url, "", "batch", "--model", "direction", "--source", "inputs/direction/some/", "--follow", "--quiet")
	if got := strings.Count(stdout, "\n"); code != 0 || got != 10 || strings.Count(stdout, `"line":`) != 10 {
		t.Fatalf("inferq batch --source --follow: exit %d, %d lines:\n%s\n%s", code, got, stdout, stderr)
	}
	file := filepath.Join(t.TempDir(), "out.parquet")
	if _, stderr, code := runCLI(t, s.url, "", "batch", "--model", "direction", "--source", "inputs/direction/some/", "--format", "parquet", "--output", file); code != 0 || !strings.Contains(stderr, "9 succeeded, 1 failed") {
		t.Fatalf("inferq batch --format parquet: exit %d\n%s", code, stderr)
	}
	pq, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if _, rows := readParquet(t, pq); len(rows) != 10 || !strings.Contains(string(rows[4]), "--max-body") {
		t.Fatalf("the Parquet output has %d rows; the fifth: %s", len(rows), rows[4])
	}
}

// Objects that disappear between the listing and the run fail their own
// lines, saying which object and why; the others are answered. The API
// lists and queues the batch before any worker runs, the objects are
// then deleted, and only then does a worker start.
func TestSourceGoneMidBatch(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a worker process; skipped with -short")
	}
	ns := testenv.JetStream(t)
	repo := loudnessRepo(t, nil)
	objects := t.TempDir()
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", objects, "--log-level", "warn"}
	s := startAPI(t, common...)
	dir := filepath.Join(objects, "inputs", "loudness", "clips")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pcm := binary.LittleEndian.AppendUint16(nil, 1000)
	for i := range 10 {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("%02d.wav", i)), wavBytes(16000, pcm))
	}
	r := do(t, "POST", s.url+"/v1/models/loudness/batches?source=inputs/loudness/clips/", nil)
	if r.code != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.code, r.body)
	}
	var b record.BatchRecord
	r.json(t, &b)
	if !testenv.Poll(30*time.Second, func() bool {
		do(t, "GET", s.url+"/v1/batches/"+b.ID, nil).json(t, &b)
		return b.Read()
	}) {
		t.Fatalf("the listing did not end: %+v", b)
	}
	gone := map[string]bool{}
	for _, i := range []int{1, 4, 5, 9} {
		key := fmt.Sprintf("inputs/loudness/clips/%02d.wav", i)
		gone[key] = true
		if err := os.Remove(filepath.Join(objects, filepath.FromSlash(key))); err != nil {
			t.Fatal(err)
		}
	}
	startWorkerProcess(t, common...)
	lines := follow(t, s, b.ID, 0, 0)
	if len(lines) != 10 {
		t.Fatalf("followed %d lines, want 10", len(lines))
	}
	for _, l := range lines {
		if gone[l.CustomID] != (l.Error != "") || gone[l.CustomID] && !(strings.Contains(l.Error, l.CustomID) && strings.Contains(l.Error, "not found")) {
			t.Errorf("line %d (%s, gone %v): error %q", l.Line, l.CustomID, gone[l.CustomID], l.Error)
		}
	}
	do(t, "GET", s.url+"/v1/batches/"+b.ID, nil).json(t, &b)
	if b.Counts != (record.BatchCounts{Total: 10, Succeeded: 6, Failed: 4}) {
		t.Errorf("batch %+v", b)
	}
}
