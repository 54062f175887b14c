package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// TestPoisonJobsDeadLettered: a job that fails every attempt ends failed
// after max_attempts, with ONNX Runtime's reason, and lands in the
// model's dead letters, the good jobs around it untouched. An operator
// lists it with `inferq dlq list`, fixes the model (a new version with a
// bigger table) and replays it with `inferq dlq replay --all`: the replay
// is a new job that names the failed one, runs on the new version and
// succeeds, and the dead letter is gone.
func TestPoisonJobsDeadLettered(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the CLI as a subprocess; skipped with -short")
	}
	dir := t.TempDir()
	v1 := filepath.Join(dir, "v1.onnx")
	writeFile(t, v1, onnxbuild.LookupRows(10))
	repo := testenv.ModelRepo(t, map[string]string{
		"lookup/1/model.onnx": "@" + v1,
		"lookup/config.yaml":  "max_attempts: 3\nmax_queue_delay: 20ms\n",
	})
	s := startServe(t, repo, "--model-poll", "50ms")
	lookup := func(idx int) []byte {
		return fmt.Appendf(nil, `{"inputs":[{"name":"idx","shape":[1],"datatype":"INT64","data":[%d]}]}`, idx)
	}
	var good []string
	for i := range 5 {
		good = append(good, s.submit(t, "/v1/models/lookup/jobs", lookup(i)))
	}
	poison := s.submit(t, "/v1/models/lookup/jobs", lookup(42))
	for _, id := range good {
		if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded {
			t.Fatalf("good job beside the poison one: %+v", rec)
		}
	}
	rec := s.await(t, poison, 60*time.Second)
	if rec.Status != record.Failed || rec.Attempts != 3 || !strings.Contains(rec.Error, "idx=42") || !strings.Contains(rec.Error, "attempt 3 of 3") {
		t.Fatalf("poison job: %+v, want failed after 3 attempts with ONNX Runtime's reason", rec)
	}

	// The dead letters hold it, and only it.
	r := do(t, "GET", s.url+"/v1/models/lookup/dead-letters", nil)
	var page struct {
		DeadLetters []record.DeadLetter `json:"dead_letters"`
	}
	r.json(t, &page)
	if r.code != http.StatusOK || len(page.DeadLetters) != 1 {
		t.Fatalf("dead letters: %d %s, want the poison job alone", r.code, r.body)
	}
	if d := page.DeadLetters[0]; d.JobID != poison || d.Attempts != 3 || !strings.Contains(d.Error, "idx=42") || d.FailedAt.IsZero() {
		t.Fatalf("dead letter %+v, want job %s after 3 attempts with the reason", d, poison)
	}
	for _, args := range [][]string{{"dlq", "list", "--model", "lookup"}, {"dlq", "list"}} {
		out, errOut, code := runCLI(t, s.url, "", args...)
		if code != 0 || !strings.Contains(out, "lookup  "+poison) || !strings.Contains(out, "ONNX Runtime") || strings.Count(out, "\n") != 2 {
			t.Fatalf("%v: %d\n%s%s", args, code, out, errOut)
		}
	}

	// Replaying before the fix fails the same way, and the new failure is
	// dead-lettered in its turn, naming the job it replayed.
	out, errOut, code := runCLI(t, s.url, "", "dlq", "replay", "--model", "lookup", poison)
	f := strings.Fields(out)
	if code != 0 || len(f) != 2 || f[0] != poison {
		t.Fatalf("dlq replay: %d\n%s%s", code, out, errOut)
	}
	again := s.await(t, f[1], 60*time.Second)
	if again.Status != record.Failed || again.ReplayOf != poison {
		t.Fatalf("replay before the fix: %+v, want failed, replay_of %s", again, poison)
	}
	if got := deadLetterIDs(t, s); !slices.Equal(got, []string{again.ID}) {
		t.Fatalf("dead letters %v, want the replay %s alone", got, again.ID)
	}

	// The fix: version 2, with a table of 100 rows, moved into place.
	staged := filepath.Join(dir, "2")
	if err := os.Mkdir(staged, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(staged, "model.onnx"), onnxbuild.LookupRows(100))
	if err := os.Rename(staged, filepath.Join(repo, "lookup", "2")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "version 2 loaded", func() bool {
		return strings.Contains(string(do(t, "GET", s.url+"/v2/models/lookup", nil).body), `"2"`)
	})
	out, errOut, code = runCLI(t, s.url, "", "dlq", "replay", "--model", "lookup", "--all")
	f = strings.Fields(out)
	if code != 0 || len(f) != 2 || f[0] != again.ID {
		t.Fatalf("dlq replay --all: %d\n%s%s", code, out, errOut)
	}
	fixed := s.await(t, f[1], 30*time.Second)
	if fixed.Status != record.Succeeded || fixed.ReplayOf != again.ID || fixed.ModelVersion != "2" {
		t.Fatalf("replay after the fix: %+v, want succeeded on version 2", fixed)
	}
	res := s.result(t, fixed.ID)
	if got := res.Outputs[0].Data; !bytes.Equal(got, f32(126, 127, 128)) {
		t.Errorf("replayed job's output %v, want row 42 of the new table", res.Outputs[0])
	}
	if got := deadLetterIDs(t, s); len(got) != 0 {
		t.Errorf("dead letters %v after a successful replay, want none", got)
	}
	// A second replay of a job already replayed finds no letter.
	if r := do(t, "POST", s.url+"/v1/models/lookup/dead-letters/"+again.ID+"/replay", nil); r.code != http.StatusNotFound {
		t.Errorf("replaying twice: %d %s, want 404", r.code, r.body)
	}
	m := s.metrics(t)
	if got := m["inferq_jobs_finished_total,model=lookup,status=failed"]; got != 2 {
		t.Errorf("%v jobs failed, want 2 (the poison job and its first replay)", got)
	}
}

func deadLetterIDs(t *testing.T, s *server) []string {
	t.Helper()
	r := do(t, "GET", s.url+"/v1/models/lookup/dead-letters", nil)
	if r.code != http.StatusOK {
		t.Fatalf("dead letters: %d %s", r.code, r.body)
	}
	var page struct {
		DeadLetters []record.DeadLetter `json:"dead_letters"`
	}
	r.json(t, &page)
	var ids []string
	for _, d := range page.DeadLetters {
		ids = append(ids, d.JobID)
	}
	return ids
}

// TestNATSRestart: the external NATS server stops while jobs are queued
// and running. While it is away the API answers 503 with Retry-After and
// accepts nothing; when it is back on the same store, the API and the
// workers reconnect by themselves, every job accepted before the outage
// succeeds exactly once, and new jobs are accepted and run.
func TestNATSRestart(t *testing.T) {
	startNATS := testenv.RestartableJetStream(t)
	ns := startNATS()
	defer func() { ns.Shutdown() }()
	path := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, path, onnxbuild.Repeat(512, 100, 3)) // ~25 ms a row on one thread
	repo := testenv.ModelRepo(t, map[string]string{"slow/1/model.onnx": "@" + path, "slow/config.yaml": "max_batch_size: 4\nintra_op_threads: 1\n"})
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", t.TempDir(), "--log-level", "warn", "--ack-wait", "3s"}
	t.Setenv("ONNXRUNTIME_LIB", testenv.ORTLibrary(t))
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	defer running.Wait()
	defer cancel()
	apiAddr := make(chan string, 1)
	running.Go(func() {
		if err := serveCmd(ctx, common, testWriter{t}, modeWorker, nil); err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	running.Go(func() {
		if err := serveCmd(ctx, append([]string{"--http", "127.0.0.1:0"}, common[:len(common)-2]...), testWriter{t}, modeAPI, func(a string) { apiAddr <- a }); err != nil {
			t.Errorf("api: %v", err)
		}
	})
	var s *server
	select {
	case a := <-apiAddr:
		s = &server{url: "http://" + a}
	case <-time.After(60 * time.Second):
		t.Fatal("the API did not start")
	}
	req := requestJSON([]tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 512}, Data: make([]byte, 4*512)}})
	var accepted []string
	for range 80 {
		accepted = append(accepted, s.submit(t, "/v1/models/slow/jobs", req))
	}
	// A batch file too, whose progress is counted from the results
	// stream across the outage.
	var file bytes.Buffer
	for range 12 {
		file.Write(req)
		file.WriteByte('\n')
	}
	var batch record.BatchRecord
	if r := do(t, "POST", s.url+"/v1/models/slow/batches", file.Bytes()); r.code != http.StatusAccepted {
		t.Fatalf("batch file: %d %s", r.code, r.body)
	} else {
		r.json(t, &batch)
	}

	// NATS goes while the worker is mid-backlog.
	s.await(t, accepted[0], 30*time.Second)
	ns.Shutdown()
	eventually(t, 30*time.Second, "ready answers 503 with NATS down", func() bool {
		return do(t, "GET", s.url+"/v2/health/ready", nil).code == http.StatusServiceUnavailable
	})
	start := time.Now()
	r := do(t, "POST", s.url+"/v1/models/slow/jobs", req)
	if r.code != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("submit with NATS down: %d %v %s, want 503 with Retry-After", r.code, r.header, r.body)
	}
	t.Logf("with NATS down, a submission is refused in %v: %s", time.Since(start).Round(time.Millisecond), r.errorMessage(t))

	ns = startNATS()
	eventually(t, 60*time.Second, "the API ready again once NATS came back", func() bool {
		return do(t, "GET", s.url+"/v2/health/ready", nil).code == http.StatusOK
	})
	for range 8 {
		accepted = append(accepted, s.submit(t, "/v1/models/slow/jobs", req))
	}
	for _, id := range accepted {
		if rec := s.await(t, id, 90*time.Second); rec.Status != record.Succeeded {
			t.Fatalf("job %s after the restart: %+v", id, rec)
		}
	}
	batchWait := time.Now()
	batch = awaitBatch(t, s, batch.ID, 60*time.Second)
	t.Logf("batch final %v after the jobs", time.Since(batchWait))
	if batch.Status != record.BatchSucceeded || batch.Counts.Total != 12 || batch.Counts.Succeeded != 12 || batch.Counts.Failed != 0 {
		t.Fatalf("batch file after the restart: %+v", batch)
	}
	// Exactly once: one announcement per accepted job in the results
	// stream, which survived the restart.
	nc := testenv.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	cons, err := js.OrderedConsumer(context.Background(), jobs.ResultStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			break
		}
		var a jobs.Announcement
		if json.Unmarshal(m.Data(), &a) == nil {
			if a.Batch != "" {
				continue // the batch file's job: its output is read from storage
			}
			seen[a.ID]++
			if a.Status == record.Succeeded && len(a.Response) == 0 {
				t.Errorf("job %s announced without its response", a.ID)
			}
		}
	}
	for _, id := range accepted {
		if seen[id] != 1 {
			t.Errorf("job %s announced %d times, want once", id, seen[id])
		}
	}
	if len(seen) != len(accepted) {
		t.Errorf("%d jobs announced, %d accepted: the refused job must not run", len(seen), len(accepted))
	}
}

// TestSlowBatchNotRedelivered: a run that lasts several times the ack
// wait is not delivered again while it runs, because the worker tells
// JetStream it is still at work: each job runs once, on its first
// attempt.
func TestSlowBatchNotRedelivered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, path, onnxbuild.Repeat(512, 600, 5))
	d := openDirect(t, path)
	// Rows enough for one run to take over half a second here, measured
	// on this machine; the ack wait is a third of that. (At a third of a
	// second the ack wait, about 120 ms, was within the stalls of a
	// loaded machine under the race detector: a heartbeat late by that
	// much let a job be delivered again, once in many CI runs.)
	var in []tensor.Tensor
	var run time.Duration
	rows := 1
	for {
		in = []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{int64(rows), 512}, Data: make([]byte, 4*512*rows)}}
		start := time.Now()
		d.run(t, in)
		if run = time.Since(start); run >= 600*time.Millisecond || rows >= 4096 {
			break
		}
		rows *= 2
	}
	if run < 150*time.Millisecond {
		t.Fatalf("%d rows run in %v: too fast to outlast an ack wait worth testing", rows, run)
	}
	ackWait := run / 3
	repo := testenv.ModelRepo(t, map[string]string{
		"slow/1/model.onnx": "@" + path, "slow/config.yaml": fmt.Sprintf("max_batch_size: %d\nintra_op_threads: 1\n", rows),
		"one/1/model.onnx": "@" + path, "one/config.yaml": "max_batch_size: 1\nintra_op_threads: 1\n",
	})
	s := startServe(t, repo, "--ack-wait", ackWait.String())
	var ids []string
	for range 3 {
		ids = append(ids, s.submit(t, "/v1/models/slow/jobs", requestJSON(in)))
	}
	for _, id := range ids {
		rec := s.await(t, id, 60*time.Second)
		if rec.Status != record.Succeeded || rec.Attempts != 1 {
			t.Errorf("job %s: %+v, want succeeded on its first attempt", id, rec)
		}
	}
	m := s.metrics(t)
	if runs := m["inferq_batch_size,model=slow,stat=count"]; runs != 3 {
		t.Errorf("%v runs for 3 jobs of %d rows, each run %v against an ack wait of %v: jobs were delivered again while running", runs, rows, run.Round(time.Millisecond), ackWait)
	}

	// A model that runs one job at a time, with a queue of them: the
	// last waits many ack waits for its turn, and none may be delivered
	// twice meanwhile.
	one := []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 512}, Data: make([]byte, 4*512)}}
	var more []string
	for range 100 {
		more = append(more, s.submit(t, "/v1/models/one/jobs", requestJSON(one)))
	}
	for _, id := range more {
		if rec := s.await(t, id, 60*time.Second); rec.Status != record.Succeeded || rec.Attempts != 1 {
			t.Errorf("queued job %s: %+v, want succeeded on its first attempt", id, rec)
		}
	}
	if runs := s.metrics(t)["inferq_batch_size,model=one,stat=count"]; runs != 100 {
		t.Errorf("%v runs for 100 jobs of one row, one at a time: jobs were delivered again while they waited", runs)
	}
}

// TestShutdownFinishesSyncRequests: stopping `inferq serve` while
// synchronous infers wait stops the HTTP server first and the workers
// after it, so the requests under way are answered, each with its output,
// rather than cut off while their jobs go back to the queue.
func TestShutdownFinishesSyncRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, path, onnxbuild.Repeat(512, 600, 5))
	d := openDirect(t, path)
	// Rows enough for a run to take about a tenth of a second here.
	rows := 1
	var in []tensor.Tensor
	for {
		in = []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{int64(rows), 512}, Data: make([]byte, 4*512*rows)}}
		start := time.Now()
		d.run(t, in)
		if time.Since(start) >= 100*time.Millisecond || rows >= 4096 {
			break
		}
		rows *= 2
	}
	want := d.run(t, in)
	repo := testenv.ModelRepo(t, map[string]string{
		"slow/1/model.onnx": "@" + path, "slow/config.yaml": fmt.Sprintf("max_batch_size: %d\nintra_op_threads: 1\n", rows),
	})
	s := startServe(t, repo, "--drain-timeout", "30s")
	const n = 6
	var wg sync.WaitGroup
	answers := make([]response, n)
	for i := range n {
		wg.Go(func() {
			res, err := http.Post(s.url+"/v2/models/slow/infer", "application/json", bytes.NewReader(requestJSON(in)))
			if err != nil {
				answers[i].body = []byte(err.Error())
				return
			}
			defer res.Body.Close()
			answers[i].code = res.StatusCode
			answers[i].body, _ = io.ReadAll(res.Body)
		})
	}
	// Stop once the first run is under way, the others queued behind it.
	eventually(t, 30*time.Second, "a run under way", func() bool {
		return s.metrics(t)["inferq_queue_in_flight_jobs,model=slow"] >= 1
	})
	s.stop()
	wg.Wait()
	for i, a := range answers {
		if a.code != http.StatusOK {
			t.Errorf("request %d, in flight at shutdown: %d %s, want 200", i, a.code, a.body)
			continue
		}
		resp, err := tensor.DecodeResponse(a.body)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		assertClose(t, fmt.Sprintf("request %d", i), resp.Outputs, want)
	}
}
