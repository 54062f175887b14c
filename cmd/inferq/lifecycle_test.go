package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/client"
	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
	"github.com/inferq/inferq/webhook"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

type sseEvent struct{ id, name, data string }

// openSSE opens an event stream and delivers its events on a channel,
// closed when the stream ends. Closing the returned function drops the
// connection. headers are name, value pairs.
func openSSE(t *testing.T, url, lastID string, headers ...string) (<-chan sseEvent, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(res.Body)
		t.Fatalf("GET %s: %d %s %s", url, res.StatusCode, res.Header.Get("Content-Type"), b)
	}
	ch := make(chan sseEvent, 1024)
	go func() {
		defer close(ch)
		defer res.Body.Close()
		events := client.NewEventReader(res.Body)
		for {
			ev, err := events.Next()
			if err != nil {
				return
			}
			ch <- sseEvent{id: ev.ID, name: ev.Name, data: string(ev.Data)}
		}
	}()
	return ch, cancel
}

func lookupRequest(idx int64) []byte {
	return requestJSON([]tensor.Tensor{{Name: "idx", Datatype: tensor.Int64, Shape: []int64{1}, Data: binary.LittleEndian.AppendUint64(nil, uint64(idx))}})
}

// A client of GET /v1/models/{model}/results that drops the connection and
// comes back with Last-Event-ID gets every result exactly once.
func TestResultStreamResumes(t *testing.T) {
	repo, _ := fixtures(t, nil)
	s := startServe(t, repo)
	events, drop := openSSE(t, s.url+"/v1/models/lookup/results", "")
	want := map[string]bool{}
	for i := range 20 {
		want[s.submit(t, "/v1/models/lookup/jobs", lookupRequest(int64(i%10)))] = true
	}
	seen := map[string]int{}
	lastID := ""
	read := func(ch <-chan sseEvent, n int) {
		t.Helper()
		for range n {
			select {
			case ev, ok := <-ch:
				if !ok {
					t.Fatal("stream ended")
				}
				if ev.name != "result" || ev.id == "" {
					t.Fatalf("event %+v", ev)
				}
				var a jobs.Announcement
				if err := json.Unmarshal([]byte(ev.data), &a); err != nil {
					t.Fatal(err)
				}
				if a.Status != record.Succeeded || len(a.Response) == 0 || a.ResultURL == "" || a.Result != nil {
					t.Fatalf("announcement %s", ev.data)
				}
				resp, err := tensor.DecodeResponse(a.Response)
				if err != nil || resp.ID != a.ID {
					t.Fatalf("inline response %s: %v", a.Response, err)
				}
				seen[a.ID]++
				lastID = ev.id
			case <-time.After(30 * time.Second):
				t.Fatalf("only %d results within 30s", len(seen))
			}
		}
	}
	read(events, 8)
	drop()
	// Jobs that finish while the client is away.
	for i := range 20 {
		id := s.submit(t, "/v1/models/lookup/jobs", lookupRequest(int64(i%10)))
		want[id] = true
		s.await(t, id, 30*time.Second)
	}
	events, drop = openSSE(t, s.url+"/v1/models/lookup/results", lastID)
	defer drop()
	read(events, 40-8)
	for id := range want {
		if seen[id] != 1 {
			t.Errorf("job %s seen %d times", id, seen[id])
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%d jobs seen, want %d", len(seen), len(want))
	}
	select {
	case ev := <-events:
		t.Errorf("an extra event after all %d: %+v", len(want), ev)
	case <-time.After(200 * time.Millisecond):
	}
}

// GET /v1/jobs/{id}/events sends the record at each change of state and
// ends after the final one. The job runs for a while, as the record
// bucket keeps only each job's newest state: a state that lasts a
// millisecond may be gone before the stream reads it, and its record says
// running once it has run for --running-after.
func TestJobEvents(t *testing.T) {
	path := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, path, onnxbuild.Repeat(512, 3000, 5))
	repo := testenv.ModelRepo(t, map[string]string{"slow/1/model.onnx": "@" + path, "slow/config.yaml": "max_queue_delay: 300ms\n"})
	s := startServe(t, repo, "--running-after", "10ms")
	in := []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 512}, Data: make([]byte, 4*512)}}
	id := s.submit(t, "/v1/models/slow/jobs", requestJSON(in))
	events, drop := openSSE(t, s.url+"/v1/jobs/"+id+"/events", "")
	defer drop()
	var states []string
	for ev := range events {
		var rec record.Record
		if err := json.Unmarshal([]byte(ev.data), &rec); err != nil || rec.ID != id || string(rec.Status) != ev.name {
			t.Fatalf("event %+v: %v", ev, err)
		}
		states = append(states, ev.name)
	}
	if !slices.Equal(states, []string{"queued", "running", "succeeded"}) {
		t.Fatalf("states %v, want queued, running, succeeded and the end of the stream", states)
	}
}

// Jobs queued while no worker runs: a cancelled one is skipped when the
// workers come, one past its deadline expires, high-priority ones are run
// ahead of normal ones, and a repeated Idempotency-Key answers the same
// job.
func TestQueuedJobLifecycle(t *testing.T) {
	repo, _ := fixtures(t, map[string]string{"lookup": "max_batch_size: 1\n"})
	data := t.TempDir()
	// First only an API: no worker for lookup.
	s := startServe(t, repo, "--data", data, "--only", "none")
	post := func(idx int64, header ...string) (int, record.Record, http.Header) {
		t.Helper()
		req, _ := http.NewRequest("POST", s.url+"/v1/models/lookup/jobs", strings.NewReader(string(lookupRequest(idx))))
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var rec record.Record
		json.NewDecoder(res.Body).Decode(&rec)
		return res.StatusCode, rec, res.Header
	}

	_, cancelled, _ := post(1)
	r := do(t, "DELETE", s.url+"/v1/jobs/"+cancelled.ID, nil)
	var rec record.Record
	r.json(t, &rec)
	if r.code != http.StatusOK || rec.Status != record.Cancelled {
		t.Fatalf("cancel: %d %s", r.code, r.body)
	}
	if r := do(t, "DELETE", s.url+"/v1/jobs/"+cancelled.ID, nil); r.code != http.StatusConflict {
		t.Fatalf("cancelling twice: %d %s", r.code, r.body)
	}

	_, expiring, _ := post(2, "Inferq-Timeout", "100ms")
	if expiring.Deadline == nil {
		t.Fatalf("no deadline in %+v", expiring)
	}

	code, first, _ := post(3, "Idempotency-Key", "order-42")
	code2, again, h := post(3, "Idempotency-Key", "order-42")
	if code != 202 || code2 != 202 || again.ID != first.ID || h.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("idempotent repeat: %d %s, %d %s %v", code, first.ID, code2, again.ID, h)
	}
	if code, _, _ := post(4, "Idempotency-Key", "order-42"); code != http.StatusUnprocessableEntity {
		t.Fatalf("the same key with another request: %d, want 422", code)
	}
	if _, other, _ := post(3, "Idempotency-Key", "order-43"); other.ID == first.ID {
		t.Fatal("a different key answered the same job")
	}

	var normal, high []string
	for i := range 30 {
		_, rec, _ := post(int64(i % 10))
		normal = append(normal, rec.ID)
	}
	for i := range 6 {
		code, rec, _ := post(int64(i%10), "Inferq-Priority", "high")
		if code != 202 || rec.Priority != record.High {
			t.Fatalf("high-priority job: %d %+v", code, rec)
		}
		high = append(high, rec.ID)
	}
	for _, bad := range [][]string{{"Inferq-Priority", "urgent"}, {"Inferq-Timeout", "soon"}, {"Inferq-Deadline", "tomorrow"}, {"Inferq-Webhook", "ftp://x"}} {
		if code, _, _ := post(1, bad...); code != http.StatusBadRequest {
			t.Errorf("%s: %s accepted (%d)", bad[0], bad[1], code)
		}
	}
	time.Sleep(150 * time.Millisecond) // past the deadline
	s.stop()

	// Now with workers, on the same data.
	s = startServe(t, repo, "--data", data)
	if rec := s.await(t, cancelled.ID, 30*time.Second); rec.Status != record.Cancelled || rec.Attempts != 0 {
		t.Errorf("cancelled job: %+v", rec)
	}
	if rec := s.await(t, expiring.ID, 30*time.Second); rec.Status != record.Expired || !strings.Contains(rec.Error, "deadline") {
		t.Errorf("job past its deadline: %+v", rec)
	}
	finished := func(id string) time.Time {
		rec := s.await(t, id, 30*time.Second)
		if rec.Status != record.Succeeded {
			t.Fatalf("%+v", rec)
		}
		return *rec.FinishedAt
	}
	var lastHigh time.Time
	for _, id := range high {
		if f := finished(id); f.After(lastHigh) {
			lastHigh = f
		}
	}
	before := 0
	for _, id := range normal {
		if finished(id).Before(lastHigh) {
			before++
		}
	}
	// Up to 4 high jobs run per normal one, and a few normal jobs were
	// already fetched when the high ones arrived.
	if before > 12 {
		t.Errorf("%d of 30 normal jobs finished before the last of 6 high-priority ones", before)
	}
	t.Logf("%d of 30 normal jobs finished before the last high-priority one", before)
}

// A job's webhook is called when it finishes, signed, and retried until the
// receiver takes it.
func TestWebhook(t *testing.T) {
	type call struct {
		body []byte
		sig  string
	}
	calls := make(chan call, 10)
	failures := 2
	var mu sync.Mutex
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		calls <- call{b, r.Header.Get(webhook.SignatureHeader)}
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			http.Error(w, "not now", http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer receiver.Close()
	repo, _ := fixtures(t, nil)
	secret := "s3cret"
	s := startServe(t, repo, "--webhook-secret", secret, "--webhook-backoff", "50ms", "--webhook-allow", "127.0.0.1")
	req, _ := http.NewRequest("POST", s.url+"/v1/models/lookup/jobs", strings.NewReader(string(lookupRequest(5))))
	req.Header.Set("Inferq-Webhook", receiver.URL+"/hook")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var rec record.Record
	json.NewDecoder(res.Body).Decode(&rec)
	res.Body.Close()
	for i := range 3 {
		select {
		case c := <-calls:
			var a jobs.Announcement
			if err := json.Unmarshal(c.body, &a); err != nil || a.ID != rec.ID || a.Status != record.Succeeded || len(a.Response) == 0 {
				t.Fatalf("call %d: %s (%v)", i, c.body, err)
			}
			// Verify the signature as a receiver would.
			var ts int64
			var mac string
			if _, err := fmt.Sscanf(strings.Replace(c.sig, ",v1=", " ", 1), "t=%d %s", &ts, &mac); err != nil {
				t.Fatalf("signature %q: %v", c.sig, err)
			}
			if want := webhook.Sign([]byte(secret), c.body, time.Unix(ts, 0)); want != c.sig || time.Since(time.Unix(ts, 0)) > time.Minute {
				t.Fatalf("signature %q, want %q", c.sig, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("webhook called %d times, want 3 (two failures, then delivered)", i)
		}
	}
	select {
	case c := <-calls:
		t.Fatalf("called again after a 2xx: %s", c.body)
	case <-time.After(300 * time.Millisecond):
	}
	if got := s.metrics(t)["inferq_webhook_deliveries_total,outcome=delivered"]; got != 1 {
		t.Errorf("%v deliveries counted", got)
	}
}

// With API tokens, every path but health and metrics needs one; a model's
// queue at --max-queued refuses more jobs with 429 and Retry-After, and
// keeps the ones it holds.
func TestTokensAndFullQueue(t *testing.T) {
	repo, _ := fixtures(t, nil)
	s := startServe(t, repo, "--api-tokens", "t1,t2", "--max-queued", "5", "--only", "none")
	call := func(method, path, token, body string) response {
		t.Helper()
		req, _ := http.NewRequest(method, s.url+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return response{code: res.StatusCode, header: res.Header, body: mustRead(t, res)}
	}
	for _, c := range []struct {
		path, token string
		code        int
	}{
		{"/v1/models", "", 401}, {"/v1/models", "wrong", 401}, {"/v1/models", "t2", 200},
		{"/v2/health/live", "", 200}, {"/metrics", "", 200}, {"/openapi.json", "", 401},
	} {
		if r := call("GET", c.path, c.token, ""); r.code != c.code {
			t.Errorf("GET %s with token %q: %d %s, want %d", c.path, c.token, r.code, r.body, c.code)
		}
	}
	if r := call("GET", "/v1/models", "", ""); !strings.Contains(r.errorMessage(t), "Bearer") {
		t.Errorf("401 says %s", r.body)
	}
	for i := range 5 {
		if r := call("POST", "/v1/models/lookup/jobs", "t1", string(lookupRequest(int64(i)))); r.code != http.StatusAccepted {
			t.Fatalf("job %d: %d %s", i, r.code, r.body)
		}
	}
	r := call("POST", "/v1/models/lookup/jobs", "t1", string(lookupRequest(1)))
	if r.code != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" || !strings.Contains(r.errorMessage(t), "full") {
		t.Fatalf("sixth job: %d %v %s", r.code, r.header, r.body)
	}
	if m := s.metrics(t); m["inferq_queue_pending_jobs,model=lookup"] != 5 {
		t.Errorf("pending %v, want the 5 accepted jobs kept", m["inferq_queue_pending_jobs,model=lookup"])
	}
	// Another model's queue is not affected.
	if r := call("POST", "/v1/models/total/jobs", "t1", `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`); r.code != http.StatusAccepted {
		t.Fatalf("another model: %d %s", r.code, r.body)
	}
}

// --max-queued-bytes bounds the bytes waiting: past it, submissions get
// 429 and what was accepted stays queued.
func TestQueueBytesBound(t *testing.T) {
	repo, _ := fixtures(t, nil)
	s := startServe(t, repo, "--max-queued-bytes", "4096", "--only", "none")
	accepted := 0
	var r response
	for range 100 {
		r = do(t, "POST", s.url+"/v1/models/lookup/jobs", lookupRequest(3))
		if r.code != http.StatusAccepted {
			break
		}
		accepted++
	}
	if r.code != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" || !strings.Contains(r.errorMessage(t), "full") {
		t.Fatalf("after %d jobs: %d %v %s, want 429 with Retry-After", accepted, r.code, r.header, r.body)
	}
	if accepted == 0 || accepted >= 100 {
		t.Fatalf("%d jobs accepted under a 4 KiB bound", accepted)
	}
	if m := s.metrics(t); m["inferq_queue_pending_jobs,model=lookup"] != float64(accepted) {
		t.Errorf("pending %v, want the %d accepted jobs kept", m["inferq_queue_pending_jobs,model=lookup"], accepted)
	}
}

// A quick job's record is written twice, queued and final: the running
// record waits for --running-after, and the job is done before it. With
// --running-after 0 each run is marked first, a write more. The writes
// are counted as JetStream stores them, from a subscriber on the bucket's
// subjects.
func TestRunningRecordWrittenOnlyForSlowRuns(t *testing.T) {
	for _, tc := range []struct {
		runningAfter string
		want         []string // each job's statuses, as written
	}{
		{"1h", []string{"queued", "succeeded"}},
		{"0", []string{"queued", "running", "succeeded"}},
	} {
		t.Run("running-after="+tc.runningAfter, func(t *testing.T) {
			repo, _ := fixtures(t, map[string]string{"lookup": "max_batch_size: 4\n"})
			s, nc := startServeNATS(t, repo, "--running-after", tc.runningAfter)
			var mu sync.Mutex
			written := map[string][]string{}
			sub, err := nc.Subscribe("$KV."+jobs.RecordBucket+".>", func(m *nats.Msg) {
				var rec record.Record
				if err := json.Unmarshal(m.Data, &rec); err != nil {
					t.Errorf("record %s: %v", m.Subject, err)
					return
				}
				mu.Lock()
				written[rec.ID] = append(written[rec.ID], string(rec.Status))
				mu.Unlock()
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			var ids []string
			for i := range 12 {
				id := s.submit(t, "/v1/models/lookup/jobs", lookupRequest(int64(i%10)))
				ids = append(ids, id)
			}
			for _, id := range ids {
				if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded || rec.StartedAt == nil || rec.Attempts != 1 {
					t.Fatalf("job %s: %s, started %v, attempts %d", id, rec.Status, rec.StartedAt, rec.Attempts)
				}
			}
			eventually(t, 10*time.Second, "every final record seen", func() bool {
				mu.Lock()
				defer mu.Unlock()
				for _, id := range ids {
					if w := written[id]; len(w) == 0 || w[len(w)-1] != "succeeded" {
						return false
					}
				}
				return true
			})
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				if !slices.Equal(written[id], tc.want) {
					t.Errorf("job %s written %v, want %v", id, written[id], tc.want)
				}
			}
		})
	}
}

// TestDrainTimeoutBoundsAStuckBatch: a worker told to stop while a batch
// runs far longer than --drain-timeout stops soon after the timeout, not
// when the batch would have finished, and hands its job back to the
// queue at once (not after its ack wait), where another worker finds it.
func TestDrainTimeoutBoundsAStuckBatch(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a slow model; skipped with -short")
	}
	ns := testenv.JetStream(t)
	path := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, path, onnxbuild.Repeat(2048, 2000, 3)) // about a quarter of a second a row
	repo := testenv.ModelRepo(t, map[string]string{"slow/1/model.onnx": "@" + path, "slow/config.yaml": "max_batch_size: 512\nintra_op_threads: 1\n"})
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", t.TempDir(), "--log-level", "warn"}
	s := startAPI(t, common...)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- serveCmd(ctx, append([]string{"--drain-timeout", "1s", "--running-after", "0", "--ack-wait", "10m"}, common...), testWriter{t}, modeWorker, nil)
	}()
	d := openDirect(t, path)
	// A single job of 256 rows: a run of a minute or more on one thread.
	id := s.submit(t, "/v1/models/slow/jobs", requestJSON(randomInputs(randSource(1), d.sig.Inputs, 256)))
	eventually(t, time.Minute, "the job runs", func() bool {
		var rec record.Record
		do(t, "GET", s.url+"/v1/jobs/"+id, nil).json(t, &rec)
		return rec.Status == record.Running
	})
	stopped := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("worker: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the worker did not stop within 30s of being told to, with a drain timeout of 1s")
	}
	t.Logf("the worker stopped %v after it was told to", time.Since(stopped).Round(time.Millisecond))
	js, err := jetstream.New(testenv.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	// The job can be taken again now, not after its ack wait (10m).
	c, err := js.Consumer(context.Background(), jobs.RequestStream, jobs.ConsumerName("slow", record.Normal))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for m := range b.Messages() {
		got = append(got, m.Headers().Get(jobs.HeaderJobID))
	}
	if len(got) != 1 || got[0] != id {
		t.Fatalf("after the stop the queue of slow gave %v; want job %s back at once", got, id)
	}
	var rec record.Record
	do(t, "GET", s.url+"/v1/jobs/"+id, nil).json(t, &rec)
	if rec.Status.Final() {
		t.Fatalf("the stopped worker ended the job: %+v", rec)
	}
}

// TestCancelledJobAnnouncedOnce: a job cancelled while queued is
// announced by the API; the worker that later takes its message finds it
// cancelled and, past the duplicate window (where a repeat would no
// longer be dropped), does not announce it again.
func TestCancelledJobAnnouncedOnce(t *testing.T) {
	ns := testenv.JetStream(t)
	const window = time.Second
	common := []string{"--nats", ns.ClientURL(), "--models", filepath.Join(testenv.Root(t), "testdata/models"), "--storage", t.TempDir(), "--log-level", "warn", "--duplicate-window", window.String()}
	s := startAPI(t, common...)
	id := s.submit(t, "/v1/models/iris/jobs", []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`))
	if r := do(t, "DELETE", s.url+"/v1/jobs/"+id, nil); r.code != http.StatusOK {
		t.Fatalf("cancel: %d %s", r.code, r.body)
	}
	var rec record.Record
	do(t, "GET", s.url+"/v1/jobs/"+id, nil).json(t, &rec)
	if rec.Status != record.Cancelled || rec.FinishedAt == nil {
		t.Fatalf("after cancel: %+v", rec)
	}
	// The window passes before any worker takes the message.
	time.Sleep(time.Until(rec.FinishedAt.Add(window + 100*time.Millisecond)))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveCmd(ctx, common, testWriter{t}, modeWorker, nil) }()
	defer func() { cancel(); <-done }()
	js, err := jetstream.New(testenv.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the worker takes the cancelled job's message", func() bool {
		c, err := js.Consumer(context.Background(), jobs.RequestStream, jobs.ConsumerName("iris", record.Normal))
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.AckFloor.Stream >= 1 && info.NumAckPending == 0 && info.NumPending == 0
	})
	cons, err := js.OrderedConsumer(context.Background(), jobs.ResultStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{jobs.ResultSubject("iris")}})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			break
		}
		if m.Headers().Get(jobs.HeaderJobID) == id {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the cancelled job was announced %d times; want once", n)
	}
}

// TestResultEventIDsRevealNothing: the event ids two tenants see on their
// models' result streams are not positions in the results stream all
// models share (whose gaps told one tenant the other's volume): each
// resumes only its own model's stream, and another model's id is refused.
func TestResultEventIDsRevealNothing(t *testing.T) {
	s := startServe(t, irisRepo(t, "alpha", "beta"))
	collect := func(model string, n int) []sseEvent {
		events, stop := openSSE(t, s.url+"/v1/models/"+model+"/results?from=start", "")
		defer stop()
		var got []sseEvent
		for len(got) < n {
			select {
			case ev := <-events:
				got = append(got, ev)
			case <-time.After(30 * time.Second):
				t.Fatalf("%d of %d events of %s", len(got), n, model)
			}
		}
		return got
	}
	for i := range 6 {
		s.submit(t, "/v1/models/"+[]string{"alpha", "beta"}[i%2]+"/jobs", []byte(irisJob))
	}
	alpha, beta := collect("alpha", 3), collect("beta", 3)
	for _, ev := range append(alpha, beta...) {
		if _, err := strconv.ParseUint(ev.id, 10, 64); err == nil {
			t.Errorf("event id %q is a number: a position in the stream every model shares", ev.id)
		}
	}
	// alpha's first id resumes alpha's stream after it, and is refused on
	// beta's.
	events, stop := openSSE(t, s.url+"/v1/models/alpha/results", alpha[0].id)
	select {
	case ev := <-events:
		if ev.id != alpha[1].id {
			t.Errorf("resumed after %s, got %s; want %s", alpha[0].id, ev.id, alpha[1].id)
		}
	case <-time.After(30 * time.Second):
		t.Error("resuming alpha's stream sent nothing")
	}
	stop()
	if r := do(t, "GET", s.url+"/v1/models/beta/results", nil, "Last-Event-ID", alpha[0].id); r.code != http.StatusBadRequest {
		t.Errorf("alpha's event id on beta's stream: %d %s; want 400", r.code, r.body)
	}
}
