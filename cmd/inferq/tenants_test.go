package main

// Tests of the findings of an attack on a running server by a careless
// user and a hostile tenant (see docs/reliability.md, "Tenants"): each
// failed on the code before its fix.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/oklog/ulid/v2"
)

// irisJob is a one-row request of the bundled iris model.
const irisJob = `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`

// irisRef is a request of iris whose input is the stored object key.
func irisRef(key string) []byte {
	return []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","parameters":{"inferq_object":"` + key + `"}}]}`)
}

// irisRepo serves a copy of iris under each name.
func irisRepo(t *testing.T, names ...string) string {
	files := map[string]string{}
	for _, n := range names {
		files[n+"/1/model.onnx"] = "@" + irisPath(t)
	}
	return testenv.ModelRepo(t, files)
}

// as makes a request with a token; headers are name, value pairs.
func as(t *testing.T, token, method, url string, body []byte, headers ...string) response {
	t.Helper()
	return do(t, method, url, body, append([]string{"Authorization", "Bearer " + token}, headers...)...)
}

func acceptedID(t *testing.T, r response) string {
	t.Helper()
	var rec record.Record
	if r.code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", r.code, r.body)
	}
	r.json(t, &rec)
	return rec.ID
}

// unreadableInputs makes a data folder whose store holds, among iris's
// inputs, a folder ("inputs/iris/folder") and an object that cannot be
// read ("inputs/iris/loop"), and returns it with iris's inputs folder.
func unreadableInputs(t *testing.T) (data, objects string) {
	data = t.TempDir()
	objects = filepath.Join(data, "objects", "inputs", "iris")
	if err := os.MkdirAll(filepath.Join(objects, "folder"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A link to itself: opening it fails with "too many levels of
	// symbolic links" every time, an error that is no "not found" (as
	// root, which these tests may run as, no permission bit would do).
	if err := os.Symlink("loop", filepath.Join(objects, "loop")); err != nil {
		t.Fatal(err)
	}
	return data, objects
}

// A job whose input object cannot be read, for good or for now, never
// jams its model's queue: a folder named as the object fails the job at
// once, a job cancelled while its input cannot be read stops, and one
// whose input stays unreadable fails after --max-hand-backs deliveries.
// Before, each was handed back every second for ever (a cancelled one
// too), and --max-queued of them refused every later job of the model
// with 429, also after a restart.
func TestUnreadableInputsDoNotJamTheQueue(t *testing.T) {
	data, _ := unreadableInputs(t)
	s := startServe(t, irisRepo(t, "iris"), "--data", data, "--max-queued", "3", "--max-hand-backs", "3")

	for range 3 {
		id := s.submit(t, "/v1/models/iris/jobs", irisRef("inputs/iris/folder"))
		if rec := s.await(t, id, 30*time.Second); rec.Status != record.Failed || !strings.Contains(rec.Error, "not found") {
			t.Fatalf("a folder as input: %+v, want failed, not found", rec)
		}
	}

	// Unreadable for good: failed after its hand-backs, with the reason.
	id := s.submit(t, "/v1/models/iris/jobs", irisRef("inputs/iris/loop"))
	rec := s.await(t, id, 60*time.Second)
	if rec.Status != record.Failed || !strings.Contains(rec.Error, "gave up after 3 deliveries") || !strings.Contains(rec.Error, "symbolic links") {
		t.Fatalf("an input that cannot be read: %+v, want failed after 3 deliveries", rec)
	}

	// The queue takes and runs as many jobs as it holds.
	for range 3 {
		id := s.submit(t, "/v1/models/iris/jobs", []byte(irisJob))
		if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded {
			t.Fatalf("a good job after the bad ones: %+v", rec)
		}
	}
	s.stop()

	// Unreadable for now, then cancelled: it stops coming back at its
	// next delivery, long before the default bound of 100 deliveries.
	s = startServe(t, irisRepo(t, "iris"), "--data", data)
	id = s.submit(t, "/v1/models/iris/jobs", irisRef("inputs/iris/loop"))
	if r := do(t, "DELETE", s.url+"/v1/jobs/"+id, nil); r.code != http.StatusOK {
		t.Fatalf("cancel: %d %s", r.code, r.body)
	}
	eventually(t, 20*time.Second, "the cancelled job's message leaves the queue", func() bool {
		return s.metrics(t)["inferq_queue_depth,model=iris"] == 0
	})
}

// Admission, as a property: whatever a request names as its input
// object (a valid one, a missing one, a folder, one that cannot be read,
// another model's, no key at all) and whether it is cancelled, a request
// is either refused with a 4xx or accepted, and every accepted job ends
// final, none left queued for ever.
func TestAdmissionEndsEveryAcceptedJob(t *testing.T) {
	data, objects := unreadableInputs(t)
	writeFile(t, filepath.Join(objects, "good.raw"), f32(5.1, 3.5, 1.4, 0.2))
	writeFile(t, filepath.Join(objects, "short.raw"), f32(5.1, 3.5))
	s := startServe(t, irisRepo(t, "iris"), "--data", data, "--max-hand-backs", "3")

	keys := []string{"inputs/iris/good.raw", "inputs/iris/short.raw", "inputs/iris/missing.raw", "inputs/iris/folder",
		"inputs/iris/loop", "inputs/iris", "inputs/other/good.raw", "results", "tensors", "results/iris/x.jsonl",
		"payloads/x.bin", "batches/x/index.jsonl", "../etc/passwd", "inputs/iris/../iris/good.raw", ""}
	rng := rand.New(rand.NewPCG(15, 1))
	var accepted []string
	for i := range 40 {
		var body []byte
		if key := keys[rng.IntN(len(keys))]; key == "" {
			body = []byte(irisJob)
		} else {
			body = irisRef(key)
		}
		r := do(t, "POST", s.url+"/v1/models/iris/jobs", body)
		switch {
		case r.code == http.StatusAccepted:
			id := acceptedID(t, r)
			accepted = append(accepted, id)
			if rng.IntN(4) == 0 {
				if c := do(t, "DELETE", s.url+"/v1/jobs/"+id, nil); c.code != http.StatusOK && c.code != http.StatusConflict {
					t.Fatalf("request %d: cancel answered %d %s", i, c.code, c.body)
				}
			}
		case r.code >= 400 && r.code < 500:
		default:
			t.Fatalf("request %d (%s): %d %s, want 202 or a 4xx", i, body, r.code, r.body)
		}
	}
	if len(accepted) < 10 {
		t.Fatalf("only %d of 40 accepted: the generator tries too little", len(accepted))
	}
	for _, id := range accepted {
		s.await(t, id, 60*time.Second)
	}
	eventually(t, 20*time.Second, "the queue empties", func() bool {
		return s.metrics(t)["inferq_queue_depth,model=iris"] == 0
	})
}

// An Idempotency-Key belongs to its caller: another tenant's same key is
// another job, and the same caller's key with a different request is a
// 422, as Stripe answers. Before, keys were per model, and a second
// tenant sending the first's key got the first's job, record and result.
func TestIdempotencyKeysPerCaller(t *testing.T) {
	const a, b = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	s := startServe(t, irisRepo(t, "iris"), "--api-tokens", a+","+b)
	other := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[6.7,3.0,5.2,2.3]}]}`
	key := []string{"Idempotency-Key", "order-42"}

	first := acceptedID(t, as(t, a, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob), key...))
	r := as(t, a, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob), key...)
	if r.code != http.StatusAccepted || r.header.Get("Idempotent-Replayed") != "true" || acceptedID(t, r) != first {
		t.Fatalf("the same request again: %d %v %s, want job %s replayed", r.code, r.header, r.body, first)
	}
	r = as(t, a, "POST", s.url+"/v1/models/iris/jobs", []byte(other), key...)
	if r.code != http.StatusUnprocessableEntity || !strings.Contains(r.errorMessage(t), "different request") {
		t.Fatalf("the same key, another body: %d %s, want 422", r.code, r.body)
	}
	r = as(t, a, "POST", s.url+"/v1/models/iris/versions/1/jobs", []byte(irisJob), key...)
	if r.code != http.StatusUnprocessableEntity {
		t.Fatalf("the same key and body on another path: %d %s, want 422", r.code, r.body)
	}
	r = as(t, b, "POST", s.url+"/v1/models/iris/jobs", []byte(other), key...)
	second := acceptedID(t, r)
	if second == first || r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("another tenant's same key got job %s (the first was %s), replayed %q", second, first, r.header.Get("Idempotent-Replayed"))
	}
	var rec record.Record
	as(t, b, "GET", s.url+"/v1/jobs/"+second+"?wait=30s", nil).json(t, &rec)
	if rec.Status != record.Succeeded {
		t.Fatalf("the second tenant's job: %+v", rec)
	}
	if r := do(t, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob), "Authorization", "Bearer "+a,
		"Idempotency-Key", strings.Repeat("k", 256)); r.code != http.StatusBadRequest {
		t.Errorf("a 256-byte key: %d %s, want 400", r.code, r.body)
	}
}

// Webhooks reach public addresses only, unless the operator allows more;
// credentials in the URL are refused; redirects are not followed. Before,
// loopback, private and metadata addresses were accepted, user:pass@
// became Basic auth, and a 307 re-posted the result to a second address.
func TestWebhookTargetPolicy(t *testing.T) {
	s := startServe(t, irisRepo(t, "iris"))
	for _, u := range []string{
		"http://127.0.0.1:4222/", "http://localhost:8080/v1/models", "http://[::1]/", "http://169.254.169.254/latest/meta-data",
		"http://10.0.0.1/hook", "http://192.168.0.10/hook", "http://0.0.0.0:8080/", "https://user:pass@hooks.example.com/",
	} {
		r := do(t, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob), "Inferq-Webhook", u)
		if r.code != http.StatusBadRequest || !strings.Contains(r.errorMessage(t), "Inferq-Webhook") {
			t.Errorf("webhook %s: %d %s, want 400", u, r.code, r.body)
		}
	}

	var second atomic.Int32
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { second.Add(1) }))
	defer target.Close()
	var first atomic.Int32
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first.Add(1)
		http.Redirect(w, r, target.URL+"/elsewhere", http.StatusTemporaryRedirect)
	}))
	defer redirecting.Close()
	s = startServe(t, irisRepo(t, "iris"), "--webhook-allow", "127.0.0.1", "--webhook-attempts", "2", "--webhook-backoff", "50ms")
	acceptedID(t, do(t, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob), "Inferq-Webhook", redirecting.URL+"/hook"))
	eventually(t, 30*time.Second, "the redirected webhook is abandoned after its 2 attempts", func() bool {
		return s.metrics(t)["inferq_webhook_deliveries_total,outcome=abandoned"] == 1
	})
	if first.Load() != 2 || second.Load() != 0 {
		t.Errorf("the redirecting receiver was called %d times (want 2), its target %d (want 0)", first.Load(), second.Load())
	}
}

// One tenant's slow receiver delays only its own webhooks: with its
// calls all hanging, another host's webhook is delivered at once. Before,
// 48 webhooks to a receiver that slept 30s took every call slot, and
// another tenant's webhook waited 107s.
func TestSlowWebhookReceiverDelaysOnlyItself(t *testing.T) {
	release := make(chan struct{})
	var hanging atomic.Int32
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hanging.Add(1)
		select {
		case <-release:
		case <-time.After(8 * time.Second): // within the dispatcher's 10s timeout
		}
	}))
	defer slow.Close()
	defer close(release)
	fast := make(chan string, 1)
	quick := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fast <- r.Header.Get(jobs.HeaderJobID)
	}))
	defer quick.Close()
	s := startServe(t, irisRepo(t, "iris"), "--webhook-allow", "127.0.0.1")
	for range 48 {
		acceptedID(t, do(t, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob), "Inferq-Webhook", slow.URL+"/hook"))
	}
	eventually(t, 30*time.Second, "the slow receiver holds its calls", func() bool { return hanging.Load() >= 4 })
	id := acceptedID(t, do(t, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob), "Inferq-Webhook", quick.URL+"/hook"))
	select {
	case got := <-fast:
		if got != id {
			t.Fatalf("the fast receiver was called for job %s, want %s", got, id)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("the other receiver's webhook waited behind the slow receiver's calls")
	}
	if n := hanging.Load(); n > 4 {
		t.Errorf("the slow receiver had %d calls at once, want at most 4 (--webhook-per-host)", n)
	}
}

// The embedded NATS server listens nowhere unless asked, and where it
// listens, only with a token: before, any local process could read every
// model's results and dead letters on 127.0.0.1:4222.
func TestEmbeddedNATSNeedsToken(t *testing.T) {
	var help strings.Builder
	serveCmd(context.Background(), []string{"-h"}, &help, modeServe, nil)
	if i := strings.Index(help.String(), "-nats-listen"); i < 0 || strings.Contains(strings.SplitN(help.String()[i:], "\n  -", 2)[0], "default") {
		t.Errorf("--nats-listen has a default address:\n%s", help.String())
	}

	data := t.TempDir()
	port := testenv.FreePort(t)
	s := startServe(t, irisRepo(t, "iris"), "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", port))
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("connected to the embedded NATS server without a token")
	} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("connecting without a token: %v, want an authorization error", err)
	}
	file := filepath.Join(data, "nats-token")
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", file, st.Mode().Perm())
	}
	token, _ := os.ReadFile(file)
	// As the docs write it: the token in the URL.
	nc, err := nats.Connect(fmt.Sprintf("nats://%s@127.0.0.1:%d", strings.TrimSpace(string(token)), port))
	if err != nil {
		t.Fatalf("the token from %s: %v", file, err)
	}
	nc.Close()
	// The server's own clients are let in too.
	id := s.submit(t, "/v1/models/iris/jobs", []byte(irisJob))
	if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded {
		t.Fatalf("a job: %+v", rec)
	}
}

// The HTTP server bounds what a connection may hold: a declared body
// past --max-body is a 413 at once, a body that stops coming fails
// after --body-timeout, and an idle keep-alive connection is closed after
// --http-idle-timeout. Before, a request declaring 2 GiB waited for its
// body, and idle sockets stayed open for as long as clients liked.
func TestConnectionLimits(t *testing.T) {
	const tok = "cccccccccccccccccccccccccccccccc"
	s := startServe(t, irisRepo(t, "iris"), "--api-tokens", tok, "--max-body", "100000",
		"--body-timeout", "500ms", "--http-idle-timeout", "500ms")
	addr := strings.TrimPrefix(s.url, "http://")
	conn := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}

	c, rd := conn()
	fmt.Fprintf(c, "POST /v1/models/iris/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 2147483648\r\n\r\n", tok)
	res, err := http.ReadResponse(rd, nil)
	if err != nil {
		t.Fatalf("a 2 GiB declared body: no answer: %v", err)
	}
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a 2 GiB declared body: %d, want 413", res.StatusCode)
	}

	c, rd = conn()
	fmt.Fprintf(c, "POST /v1/models/iris/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n{\"inputs\"", tok)
	res, err = http.ReadResponse(rd, nil)
	if err != nil {
		t.Fatalf("a body that stops: no answer: %v", err)
	}
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(b), "stopped arriving") {
		t.Errorf("a body that stops: %d %s, want 408 saying so", res.StatusCode, b)
	}

	c, rd = conn()
	fmt.Fprint(c, "GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
	if res, err = http.ReadResponse(rd, nil); err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("live: %v %v", res, err)
	}
	io.Copy(io.Discard, res.Body)
	if _, err := rd.ReadByte(); err != io.EOF {
		t.Errorf("an idle keep-alive connection: read %v, want it closed by the server (EOF)", err)
	}
}

// Streams opened with a token end when the tokens file drops the token,
// or no longer grants the stream's model; others go on. Before, a revoked
// token kept its open streams for as long as it liked.
func TestRevokedTokenClosesStreams(t *testing.T) {
	const a, b, c = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccccccccccccccc"
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, []byte(a+" iris idle\n"+b+" iris idle\n"+c+" iris idle\n"))
	s := startServe(t, irisRepo(t, "iris", "idle"), "--tokens-file", tokens, "--only", "iris")
	// A job of a model no worker runs stays queued: its event stream
	// stays open.
	queued := acceptedID(t, as(t, a, "POST", s.url+"/v1/models/idle/jobs", []byte(irisJob)))
	auth := func(tok string) []string { return []string{"Authorization", "Bearer " + tok} }
	aResults, stopA := openSSE(t, s.url+"/v1/models/iris/results", "", auth(a)...)
	defer stopA()
	aEvents, stopAE := openSSE(t, s.url+"/v1/jobs/"+queued+"/events", "", auth(a)...)
	defer stopAE()
	bResults, stopB := openSSE(t, s.url+"/v1/models/iris/results", "", auth(b)...)
	defer stopB()
	cResults, stopC := openSSE(t, s.url+"/v1/models/iris/results", "", auth(c)...)
	defer stopC()
	cEvents, stopCE := openSSE(t, s.url+"/v1/jobs/"+queued+"/events", "", auth(c)...)
	defer stopCE()
	<-aEvents // the record as it stands
	<-cEvents

	// a is dropped, c keeps only the idle model.
	writeFile(t, tokens, []byte(b+" iris idle\n"+c+" idle\n"))
	closed := func(ch <-chan sseEvent) bool {
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					return true
				}
			case <-time.After(20 * time.Second):
				return false
			}
		}
	}
	for name, ch := range map[string]<-chan sseEvent{"a's results": aResults, "a's job events": aEvents, "c's iris results": cResults} {
		if !closed(ch) {
			t.Errorf("%s: still open 20s after the token lost the model", name)
		}
	}
	// b's stream goes on, and so does c's stream of an idle job.
	id := acceptedID(t, as(t, b, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob)))
	for ev := range bResults {
		if strings.Contains(ev.data, id) {
			break
		}
	}
	select {
	case ev, ok := <-cEvents:
		if !ok {
			t.Error("c's stream of an idle-model job ended, though c keeps that model")
		} else {
			t.Errorf("c's idle job stream sent %v", ev)
		}
	default:
	}
}

// Status codes say what happened: a client's mistake is a 4xx naming it,
// never a 503 that clients retry for ever, and each answer is the one
// docs/api.md gives.
func TestStatusCodes(t *testing.T) {
	const tok = "dddddddddddddddddddddddddddddddd"
	s := startServe(t, irisRepo(t, "iris"), "--api-tokens", tok, "--only", "none", "--max-queued", "1", "--max-body", "2000")
	long := `{"id":"` + strings.Repeat("x", 1500) + `",` + irisJob[1:]
	bigLine := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}],"pad":"` + strings.Repeat(" ", 3000) + `"}` + "\n"
	type check struct {
		name, method, path, body string
		headers                  []string
		code                     int
		says                     string
	}
	for _, c := range []check{
		{"an oversized client id", "POST", "/v1/models/iris/jobs", long, nil, 400, "id is 1500 bytes"},
		{"an oversized webhook", "POST", "/v1/models/iris/jobs", irisJob, []string{"Inferq-Webhook", "https://hooks.example.com/" + strings.Repeat("a", 3000)}, 400, "Inferq-Webhook"},
		{"a batch line past --max-body", "POST", "/v1/models/iris/batches", bigLine, nil, 413, "longer than"},
		{"a Last-Event-ID not of this stream (a plain position)", "GET", "/v1/models/iris/results", "", []string{"Last-Event-ID", "18446744073709551615"}, 400, "not an event id of this stream"},
		{"PUT on a job", "PUT", "/v1/jobs/01M8937HDB0W20B2CWDSR9VKD8", "", nil, 405, "GET, HEAD, DELETE"},
		{"POST on the model list", "POST", "/v1/models", "", nil, 405, "GET"},
		{"GET on a job submission", "GET", "/v1/models/iris/jobs", "", nil, 405, "POST"},
		{"no such path", "GET", "/v1/nothing", "", nil, 404, "no route"},
	} {
		r := as(t, tok, c.method, s.url+c.path, []byte(c.body), c.headers...)
		if r.code != c.code || !strings.Contains(r.errorMessage(t), c.says) {
			t.Errorf("%s: %d %s, want %d saying %q", c.name, r.code, r.body, c.code, c.says)
		}
		if c.code == 405 && r.header.Get("Allow") == "" {
			t.Errorf("%s: 405 without Allow", c.name)
		}
	}
	// The id limit counts bytes of the id, not of the body: 1,024 pass.
	ok := `{"id":"` + strings.Repeat("x", 1024) + `",` + irisJob[1:]
	if r := as(t, tok, "POST", s.url+"/v1/models/iris/jobs", []byte(ok)); r.code != http.StatusAccepted {
		t.Fatalf("a 1,024-byte id: %d %s", r.code, r.body)
	}

	// The failed batch's output is a 409 with the reason, not a 200.
	r := as(t, tok, "POST", s.url+"/v1/models/iris/batches", []byte(bigLine))
	var failed string
	if _, err := fmt.Sscanf(r.errorMessage(t), "batch %s failed", &failed); err != nil {
		t.Fatalf("no batch id in %s", r.body)
	}
	if r := as(t, tok, "GET", s.url+"/v1/batches/"+failed+"/output", nil); r.code != http.StatusConflict || !strings.Contains(r.errorMessage(t), "no output") {
		t.Errorf("a failed batch's output: %d %s, want 409", r.code, r.body)
	}

	// The queue holds its one job: a batch is refused 429, as a job is.
	r = as(t, tok, "POST", s.url+"/v1/models/iris/batches", []byte(irisJob+"\n"))
	if r.code != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" || !strings.Contains(r.errorMessage(t), "full") {
		t.Errorf("a batch into a full queue: %d %v %s, want 429 with Retry-After", r.code, r.header, r.body)
	}

	// The scheme's name is case-insensitive.
	if r := do(t, "GET", s.url+"/v1/models", nil, "Authorization", "bearer "+tok); r.code != http.StatusOK {
		t.Errorf("Authorization: bearer …: %d %s", r.code, r.body)
	}
}

// Two tenants, each with its own model and one model they share, with
// webhooks: neither sees, changes or replays the other's jobs, results,
// batches, dead letters, streams or stored inputs, and their idempotency
// keys do not meet.
func TestTenantsIsolated(t *testing.T) {
	const a, b = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, []byte(a+" alpha shared\n"+b+" beta shared\n"))
	data := t.TempDir()
	writeFile(t, filepath.Join(data, "objects", "inputs", "alpha", "secret.raw"), f32(5.1, 3.5, 1.4, 0.2))
	type hook struct {
		sync.Mutex
		jobs []string
	}
	receiver := func(h *hook) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h.Lock()
			h.jobs = append(h.jobs, r.Header.Get(jobs.HeaderJobID))
			h.Unlock()
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	var hookA, hookB hook
	recvA, recvB := receiver(&hookA), receiver(&hookB)
	s := startServe(t, irisRepo(t, "alpha", "beta", "shared"), "--data", data, "--tokens-file", tokens, "--webhook-allow", "127.0.0.1")

	jobA := acceptedID(t, as(t, a, "POST", s.url+"/v1/models/alpha/jobs", []byte(irisJob), "Inferq-Webhook", recvA.URL))
	jobB := acceptedID(t, as(t, b, "POST", s.url+"/v1/models/beta/jobs", []byte(irisJob), "Inferq-Webhook", recvB.URL))
	byRef := acceptedID(t, as(t, a, "POST", s.url+"/v1/models/alpha/jobs", irisRef("inputs/alpha/secret.raw")))
	for _, id := range []string{jobA, jobB, byRef} {
		r := as(t, a, "GET", s.url+"/v1/jobs/"+id+"?wait=30s", nil)
		if id == jobB {
			r = as(t, b, "GET", s.url+"/v1/jobs/"+id+"?wait=30s", nil)
		}
		var rec record.Record
		r.json(t, &rec)
		if rec.Status != record.Succeeded {
			t.Fatalf("job %s: %s", id, r.body)
		}
	}
	batch := as(t, a, "POST", s.url+"/v1/models/alpha/batches", []byte(irisJob+"\n"))
	var brec record.BatchRecord
	batch.json(t, &brec)

	// A job or batch of another tenant reads as an unknown id (404, the
	// same words), so that a refusal never confirms it exists; a model
	// named in the path is refused (403).
	unknown := ulid.Make().String()
	for _, c := range []struct {
		tok, method, path string
		body              []byte
		id                string // for a 404: the id the path names
	}{
		{b, "GET", "/v1/jobs/" + jobA, nil, jobA},
		{b, "GET", "/v1/jobs/" + jobA + "/result", nil, jobA},
		{b, "GET", "/v1/jobs/" + jobA + "/events", nil, jobA},
		{b, "DELETE", "/v1/jobs/" + jobA, nil, jobA},
		{a, "GET", "/v1/jobs/" + jobB + "/result", nil, jobB},
		{b, "POST", "/v1/models/alpha/jobs", []byte(irisJob), ""},
		{b, "GET", "/v1/models/alpha/results", nil, ""},
		{b, "GET", "/v1/models/alpha/dead-letters", nil, ""},
		{b, "POST", "/v1/models/alpha/dead-letters/" + jobA + "/replay", nil, ""},
		{b, "GET", "/v1/batches/" + brec.ID, nil, brec.ID},
		{b, "GET", "/v1/batches/" + brec.ID + "/output", nil, brec.ID},
		{b, "DELETE", "/v1/batches/" + brec.ID, nil, brec.ID},
	} {
		r := as(t, c.tok, c.method, s.url+c.path, c.body)
		if c.id == "" {
			if r.code != http.StatusForbidden {
				t.Errorf("%s %s by the other tenant: %d %s, want 403", c.method, c.path, r.code, r.body)
			}
			continue
		}
		u := as(t, c.tok, c.method, s.url+strings.Replace(c.path, c.id, unknown, 1), c.body)
		if r.code != http.StatusNotFound || u.code != http.StatusNotFound || strings.Replace(r.errorMessage(t), c.id, unknown, 1) != u.errorMessage(t) {
			t.Errorf("%s %s by the other tenant: %d %s; an unknown id: %d %s; want the same 404", c.method, c.path, r.code, r.body, u.code, u.body)
		}
	}
	// A baseline of b's model from a's batch: as for an unknown batch.
	r := as(t, b, "POST", s.url+"/v1/models/beta/monitoring/baseline", []byte(`{"batch":"`+brec.ID+`"}`))
	u := as(t, b, "POST", s.url+"/v1/models/beta/monitoring/baseline", []byte(`{"batch":"`+unknown+`"}`))
	if r.code != http.StatusNotFound || u.code != http.StatusNotFound || strings.Replace(r.errorMessage(t), brec.ID, unknown, 1) != u.errorMessage(t) {
		t.Errorf("a baseline from another tenant's batch: %d %s; from an unknown one: %d %s; want the same 404", r.code, r.body, u.code, u.body)
	}
	// Stored inputs: b names a's, in its own model and in the shared one.
	for _, path := range []string{"/v1/models/beta/jobs", "/v1/models/shared/jobs"} {
		for _, key := range []string{"inputs/alpha/secret.raw", "results/alpha/x.jsonl"} {
			r := as(t, b, "POST", s.url+path, irisRef(key))
			if r.code != http.StatusBadRequest || strings.Contains(r.errorMessage(t), "bytes") {
				t.Errorf("b's job naming %s at %s: %d %s, want 400 that tells nothing of the object", key, path, r.code, r.body)
			}
		}
	}
	// The same key on the shared model: each tenant its own job.
	ka := acceptedID(t, as(t, a, "POST", s.url+"/v1/models/shared/jobs", []byte(irisJob), "Idempotency-Key", "k1"))
	kb := acceptedID(t, as(t, b, "POST", s.url+"/v1/models/shared/jobs", []byte(irisJob), "Idempotency-Key", "k1"))
	if ka == kb {
		t.Errorf("both tenants' key k1 answered job %s", ka)
	}
	// Each receiver hears of its own tenant's job alone.
	eventually(t, 30*time.Second, "both webhooks delivered", func() bool {
		hookA.Lock()
		defer hookA.Unlock()
		hookB.Lock()
		defer hookB.Unlock()
		return len(hookA.jobs) > 0 && len(hookB.jobs) > 0
	})
	hookA.Lock()
	hookB.Lock()
	if strings.Join(hookA.jobs, ",") != jobA || strings.Join(hookB.jobs, ",") != jobB {
		t.Errorf("a's receiver heard %v (want %s), b's %v (want %s)", hookA.jobs, jobA, hookB.jobs, jobB)
	}
	hookB.Unlock()
	hookA.Unlock()
}
