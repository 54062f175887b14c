package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/x448/float16"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// server is an inferq started in process by a test, with the real wiring
// of `inferq serve`.
type server struct {
	url  string
	stop func()
}

// startServe runs `inferq serve` in process on free ports and stops it
// when the test ends (or at stop).
func startServe(t *testing.T, models string, extra ...string) *server {
	t.Helper()
	testenv.ORTLibrary(t) // fail early, with the reason, if it is missing
	t.Setenv("ONNXRUNTIME_LIB", testenv.ORTLibrary(t))
	args := append([]string{"--models", models, "--data", t.TempDir(), "--http", "127.0.0.1:0", "--log-level", "warn"}, extra...)
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- serveCmd(ctx, args, testWriter{t}, modeServe, func(a string) { addr <- a })
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("serve: %v", err)
				}
			case <-time.After(60 * time.Second):
				t.Error("serve did not stop within 60s of cancellation")
			}
		})
	}
	t.Cleanup(stop)
	select {
	case a := <-addr:
		return &server{url: "http://" + a, stop: stop}
	case err := <-done:
		t.Fatalf("serve stopped at start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not start listening within 60s")
	}
	return nil
}

// listedVersion is a model version as GET /v1/models describes it.
type listedVersion struct {
	State, Reason string
	Batchable     bool
	Batching      string
	// Unchecked is batching_unchecked.
	Unchecked string `json:"batching_unchecked"`
	Inputs    []struct{ Shape []int64 }
}

// listedModels returns what GET /v1/models says of each model's versions,
// by model name.
func listedModels(t *testing.T, s *server) map[string][]listedVersion {
	t.Helper()
	var list struct {
		Models []struct {
			Name     string
			Versions []listedVersion
		}
	}
	do(t, "GET", s.url+"/v1/models", nil).json(t, &list)
	out := map[string][]listedVersion{}
	for _, m := range list.Models {
		out[m.Name] = m.Versions
	}
	return out
}

// startWorkerProcess runs `inferq worker` with args as a child process,
// stopped (SIGTERM, then waited for) when the test ends, its output
// logged if the test failed. It returns the process id.
func startWorkerProcess(t testing.TB, args ...string) int {
	t.Helper()
	cmd := exec.Command(inferqBinary(t), append([]string{"worker"}, args...)...)
	cmd.Env = append(os.Environ(), "ONNXRUNTIME_LIB="+testenv.ORTLibrary(t))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(90 * time.Second): // well past its drain timeout
			cmd.Process.Kill()
			<-exited
			t.Errorf("worker %d did not stop within 90s of SIGTERM; killed", cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("worker %d output:\n%s", cmd.Process.Pid, out.String())
		}
	})
	return cmd.Process.Pid
}

// startAPI runs `inferq api` with args in this process, on a free port,
// stopped when the test ends.
func startAPI(t *testing.T, args ...string) *server {
	t.Helper()
	t.Setenv("ONNXRUNTIME_LIB", testenv.ORTLibrary(t))
	ctx, cancel := context.WithCancel(context.Background())
	addr, done := make(chan string, 1), make(chan error, 1)
	go func() {
		done <- serveCmd(ctx, append([]string{"--http", "127.0.0.1:0"}, args...), testWriter{t}, modeAPI, func(a string) { addr <- a })
	}()
	stopped := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("api: %v", err)
			}
		case <-stopped: // ended at start, reported there
		}
	})
	select {
	case a := <-addr:
		return &server{url: "http://" + a}
	case err := <-done:
		close(stopped)
		t.Fatalf("api stopped at start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("api did not start listening within 60s")
	}
	return nil
}

// testNATSToken is the token the tests' embedded NATS servers take from
// their native clients.
const testNATSToken = "test-nats-token-0123456789abcdef"

// startServeNATS is startServe with its embedded NATS on a known port,
// and a client connected to it, closed when the test ends.
func startServeNATS(t *testing.T, models string, extra ...string) (*server, *nats.Conn) {
	t.Helper()
	port := testenv.FreePort(t)
	s := startServe(t, models, append([]string{"--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--nats-token", testNATSToken}, extra...)...)
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port), nats.Token(testNATSToken))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return s, nc
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type response struct {
	code   int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

func (r response) errorMessage(t *testing.T) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	r.json(t, &e)
	return e.Error
}

// do makes a request with a JSON body and the given headers, as name,
// value pairs, and returns the answer read to the end.
func do(t testing.TB, method, url string, body []byte, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{code: res.StatusCode, header: res.Header, body: b}
}

// eventually is testenv.Eventually.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, within, what, cond)
}

// submit posts a job and returns its id, failing unless it was accepted.
func (s *server) submit(t *testing.T, path string, body []byte) string {
	t.Helper()
	r := do(t, "POST", s.url+path, body)
	if r.code != http.StatusAccepted {
		t.Fatalf("POST %s: %d %s", path, r.code, r.body)
	}
	var rec record.Record
	r.json(t, &rec)
	if loc := r.header.Get("Location"); loc != "/v1/jobs/"+rec.ID {
		t.Fatalf("Location %q for job %s", loc, rec.ID)
	}
	return rec.ID
}

// await long-polls a job until it is final.
func (s *server) await(t testing.TB, id string, within time.Duration) *record.Record {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		r := do(t, "GET", s.url+"/v1/jobs/"+id+"?wait=5s", nil)
		if r.code != http.StatusOK {
			t.Fatalf("GET job %s: %d %s", id, r.code, r.body)
		}
		var rec record.Record
		r.json(t, &rec)
		if rec.Status.Final() {
			return &rec
		}
	}
	t.Fatalf("job %s not finished within %v", id, within)
	return nil
}

func (s *server) result(t testing.TB, id string) *tensor.Response {
	t.Helper()
	r := do(t, "GET", s.url+"/v1/jobs/"+id+"/result", nil)
	if r.code != http.StatusOK {
		t.Fatalf("GET result %s: %d %s", id, r.code, r.body)
	}
	resp, err := tensor.DecodeResponse(r.body)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// metrics scrapes /metrics.
func (s *server) metrics(t *testing.T) map[string]float64 {
	t.Helper()
	return s.metricsB(t)
}

func (s *server) metricsB(t testing.TB) map[string]float64 {
	t.Helper()
	res, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	r := response{code: res.StatusCode, body: body}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(r.body))
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.Metric {
			key := name
			for _, l := range m.Label {
				key += fmt.Sprintf(",%s=%s", l.GetName(), l.GetValue())
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key+",stat=count"] = float64(m.Histogram.GetSampleCount())
				out[key+",stat=sum"] = m.Histogram.GetSampleSum()
			}
		}
	}
	return out
}

// randomInputs makes a request for the model's inputs, with rows rows and
// every dynamic dimension after the first set from dims (in order).
func randomInputs(rng *rand.Rand, ios []onnx.IO, rows int, dims ...int64) []tensor.Tensor {
	var out []tensor.Tensor
	for _, io := range ios {
		shape := make([]int64, len(io.Shape))
		k := 0
		for i, d := range io.Shape {
			switch {
			case i == 0 && d < 0:
				shape[i] = int64(rows)
			case d < 0:
				shape[i] = dims[k]
				k++
			default:
				shape[i] = d
			}
		}
		t := tensor.Tensor{Name: io.Name, Datatype: io.Datatype, Shape: shape}
		for range tensor.NumElements(shape) {
			switch io.Datatype {
			case tensor.FP32:
				t.Data = binary.LittleEndian.AppendUint32(t.Data, math.Float32bits(rng.Float32()*2-1))
			case tensor.FP64:
				t.Data = binary.LittleEndian.AppendUint64(t.Data, math.Float64bits(rng.NormFloat64()))
			case tensor.FP16:
				t.Data = binary.LittleEndian.AppendUint16(t.Data, float16.Fromfloat32(rng.Float32()*8-4).Bits())
			case tensor.Int64:
				t.Data = binary.LittleEndian.AppendUint64(t.Data, uint64(rng.IntN(10)))
			case tensor.Bool:
				t.Data = append(t.Data, byte(rng.IntN(2)))
			case tensor.Bytes:
				s := make([]byte, rng.IntN(12))
				for i := range s {
					s[i] = byte('a' + rng.IntN(26))
				}
				t.Data = tensor.AppendBytesElement(t.Data, s)
			default: // the other integers: any bits are a valid value
				for range io.Datatype.Size() {
					t.Data = append(t.Data, byte(rng.Uint32()))
				}
			}
		}
		out = append(out, t)
	}
	return out
}

// requestJSON encodes inputs as a V2 JSON request.
func requestJSON(inputs []tensor.Tensor) []byte {
	return (&tensor.Request{Inputs: inputs}).AppendJSON(nil)
}

// assertClose compares outputs element by element, within float tolerance.
func assertClose(t *testing.T, what string, got, want []tensor.Tensor) {
	t.Helper()
	assertWithin(t, what, got, want, func(a, b float64) bool { return math.Abs(a-b) <= 1e-4+1e-3*math.Abs(b) })
}

// assertWithin compares outputs: FP32 elements by near(got, want), others
// exactly.
func assertWithin(t *testing.T, what string, got, want []tensor.Tensor, near func(got, want float64) bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d outputs, want %d", what, len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Name != w.Name || g.Datatype != w.Datatype || tensor.FormatShape(g.Shape) != tensor.FormatShape(w.Shape) {
			t.Fatalf("%s: output %d is %s %s %s, want %s %s %s", what, i, g.Name, g.Datatype, tensor.FormatShape(g.Shape), w.Name, w.Datatype, tensor.FormatShape(w.Shape))
		}
		if w.Datatype != tensor.FP32 {
			if !bytes.Equal(g.Data, w.Data) {
				t.Fatalf("%s: output %q differs", what, w.Name)
			}
			continue
		}
		for j := 0; j < len(w.Data); j += 4 {
			a := math.Float32frombits(binary.LittleEndian.Uint32(g.Data[j:]))
			b := math.Float32frombits(binary.LittleEndian.Uint32(w.Data[j:]))
			if !near(float64(a), float64(b)) {
				t.Fatalf("%s: output %q element %d is %g, ONNX Runtime alone gives %g", what, w.Name, j/4, a, b)
			}
		}
	}
}

// direct runs a model in ONNX Runtime with no queue, for reference.
type direct struct {
	sess *onnx.Session
	sig  onnx.Signature
}

func openDirect(t testing.TB, path string) *direct {
	t.Helper()
	rt := testenv.Runtime(t)
	sig, err := rt.Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := rt.NewSession(path, sig, onnx.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &direct{sess: s, sig: sig}
}

func (d *direct) run(t testing.TB, in []tensor.Tensor) []tensor.Tensor {
	t.Helper()
	out, err := d.sess.Run(in)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// openQueue opens the queue an API or worker set up on nc's server, for
// a test to read it as a native client would.
func openQueue(t *testing.T, nc *nats.Conn) (*jobs.Queue, jetstream.JetStream) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	q, err := jobs.Open(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	return q, js
}
