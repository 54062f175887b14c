package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/internal/embednats"
	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// benchServer starts serve for a benchmark with its embedded NATS on a
// known port, so that the benchmark can count finished jobs on the results
// subject instead of polling.
func benchServer(b testing.TB, repo string, extra ...string) (*server, *nats.Conn) {
	b.Helper()
	port := testenv.FreePort(b)
	b.Setenv("ONNXRUNTIME_LIB", testenv.ORTLibrary(b))
	args := append([]string{"--models", repo, "--data", b.TempDir(), "--http", "127.0.0.1:0",
		"--nats-listen", fmt.Sprintf("127.0.0.1:%d", port), "--nats-token", testNATSToken, "--log-level", "error"}, extra...)
	ctx, cancel := context.WithCancel(context.Background())
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serveCmd(ctx, args, &bytes.Buffer{}, modeServe, func(a string) { addr <- a }) }()
	b.Cleanup(func() { cancel(); <-done })
	var s *server
	select {
	case a := <-addr:
		s = &server{url: "http://" + a}
	case err := <-done:
		b.Fatalf("serve: %v", err)
	}
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port), nats.Token(testNATSToken))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	return s, nc
}

// load submits bodies with the given concurrency and waits until every
// job is announced finished. It returns the elapsed time and each submit
// call's latency. hdrLens, when not nil, are the bodies' JSON header
// lengths: the bodies are V2 binary requests.
func load(b *testing.B, s *server, nc *nats.Conn, model string, bodies [][]byte, hdrLens []int, concurrency int) (time.Duration, []time.Duration) {
	b.Helper()
	var finished atomic.Int64
	all := make(chan struct{})
	n := int64(len(bodies))
	sub, err := nc.Subscribe(jobs.ResultSubject(model), func(m *nats.Msg) {
		if finished.Add(1) == n {
			close(all)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()
	start := time.Now()
	lat := submitAll(b, s.url, model, bodies, hdrLens, concurrency)
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("only %d of %d jobs finished", finished.Load(), n)
	}
	return time.Since(start), lat
}

// submitAll posts bodies as jobs from concurrency clients and returns each
// call's latency; it fails the benchmark if any is refused. hdrLens, when
// not nil, make them V2 binary requests with those header lengths.
func submitAll(b *testing.B, url, model string, bodies [][]byte, hdrLens []int, concurrency int) []time.Duration {
	b.Helper()
	lat := make([]time.Duration, len(bodies))
	var next atomic.Int64
	n := int64(len(bodies))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: concurrency}}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range concurrency {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= n {
					return
				}
				req, _ := http.NewRequest("POST", url+"/v1/models/"+model+"/jobs", bytes.NewReader(bodies[i]))
				req.Header.Set("Content-Type", "application/json")
				if hdrLens != nil {
					req.Header.Set(jobs.HeaderHeaderLength, strconv.Itoa(hdrLens[i]))
					req.Header.Set("Content-Type", "application/octet-stream")
				}
				t0 := time.Now()
				res, err := client.Do(req)
				lat[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					continue
				}
				// Read to the end, so that the connection is reused: a
				// load tool keeps its connections, and opening one per
				// job cost a tenth of the CPU here.
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusAccepted {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		b.Fatalf("%d submissions failed", failed.Load())
	}
	return lat
}

// drain measures a worker alone, as on a machine of its own: an API
// process queues bodies while no worker runs, then a worker process starts
// (both in this process, on one NATS server) and its rate is timed from
// the job that finishes a tenth of the backlog to the one that finishes
// nine tenths, so that neither loading the model nor the last runs, with
// instances idle, are counted. (It was timed from the first job finished
// to the last: the first batches of all instances finish together, and
// counting their rows in no time overstated the rate, by a few per cent
// on 2 cores and by half on 16, where 1,500 jobs are a round and a half.)
// It returns jobs per second.
func drain(b *testing.B, repo, model string, bodies [][]byte) float64 {
	b.Helper()
	ns, err := embednats.Start(embednats.Options{StoreDir: b.TempDir(), Host: "127.0.0.1", Port: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer ns.Shutdown()
	b.Setenv("ONNXRUNTIME_LIB", testenv.ORTLibrary(b))
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", b.TempDir(), "--log-level", "error"}
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	defer running.Wait()
	defer cancel()
	apiAddr := make(chan string, 1)
	running.Go(func() {
		if err := serveCmd(ctx, append([]string{"--http", "127.0.0.1:0"}, common...), &bytes.Buffer{}, modeAPI, func(a string) { apiAddr <- a }); err != nil {
			b.Errorf("api: %v", err)
		}
	})
	var url string
	select {
	case a := <-apiAddr:
		url = "http://" + a
	case <-time.After(time.Minute):
		b.Fatal("the API did not start")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	n := int64(len(bodies))
	from, to := n/10, n-n/10
	var finished, first atomic.Int64
	all := make(chan time.Time, 1)
	sub, err := nc.Subscribe(jobs.ResultSubject(model), func(*nats.Msg) {
		switch finished.Add(1) {
		case from:
			first.Store(time.Now().UnixNano())
		case to:
			all <- time.Now()
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()
	submitAll(b, url, model, bodies, nil, 32)
	running.Go(func() {
		if err := serveCmd(ctx, common, &bytes.Buffer{}, modeWorker, nil); err != nil {
			b.Errorf("worker: %v", err)
		}
	})
	select {
	case last := <-all:
		return float64(to-from) / last.Sub(time.Unix(0, first.Load())).Seconds()
	case <-time.After(5 * time.Minute):
		b.Fatalf("only %d of %d jobs finished", finished.Load(), n)
	}
	return 0
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// directThroughput is ONNX Runtime's own rows per second on inputs of
// batch rows, run back to back in process for about two seconds by one
// goroutine per session.
func directThroughput(b *testing.B, sessions []*onnx.Session, sig onnx.Signature, batch int) float64 {
	b.Helper()
	rng := rand.New(rand.NewPCG(1, uint64(batch)))
	in := randomInputs(rng, sig.Inputs, batch)
	for _, s := range sessions {
		if _, err := s.Run(in); err != nil { // warm up
			b.Fatal(err)
		}
	}
	var runs atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for _, s := range sessions {
		wg.Go(func() {
			for time.Since(start) < 2*time.Second {
				if _, err := s.Run(in); err != nil {
					b.Error(err)
					return
				}
				runs.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(runs.Load()*int64(batch)) / time.Since(start).Seconds()
}

// layout is how ONNX Runtime's threads are laid out on the CPU: one
// session with its default thread pool (all cores), or one single-threaded
// session per core.
type layout struct {
	name      string
	instances int
	intraOp   int
}

func layouts() []layout {
	n := runtime.NumCPU()
	return []layout{{"1x" + strconv.Itoa(n) + "threads", 1, 0}, {strconv.Itoa(n) + "x1thread", n, 1}}
}

// BenchmarkQueueVsDirect: a model's throughput through the whole queue
// path (HTTP, JetStream, batching, storage, records) as a fraction of ONNX
// Runtime's own best in-process throughput (over batch sizes and the two
// thread layouts), side by side in one run. The queue runs with each
// layout. "heavy" is compute-bound (about 0.84 GFLOP a row); "light" (17
// MFLOP a row) shows where per-job overhead starts to show. drain_* is a
// worker alone draining the same jobs queued beforehand, as on a worker
// machine of its own: without the load client and the API on its cores.
func BenchmarkQueueVsDirect(b *testing.B) {
	for _, c := range []struct {
		name  string
		model []byte
		jobs  int
	}{
		{"heavy", onnxbuild.Repeat(1024, 400, 1), 1500},
		{"light", onnxbuild.Dense(1024, 8, 1), 2000},
	} {
		b.Run(c.name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "model.onnx")
			writeFile(b, path, c.model)
			rt := testenv.Runtime(b)
			sig, err := rt.Inspect(path)
			if err != nil {
				b.Fatal(err)
			}
			best, bestBatch, bestLayout := 0.0, 0, ""
			for _, l := range layouts() {
				sessions := make([]*onnx.Session, l.instances)
				for i := range sessions {
					if sessions[i], err = rt.NewSession(path, sig, onnx.SessionOptions{IntraOpThreads: l.intraOp, Spinning: true}); err != nil {
						b.Fatal(err)
					}
				}
				for _, batch := range []int{1, 8, 32, 64} {
					r := directThroughput(b, sessions, sig, batch)
					b.Logf("direct %s batch %d: %.0f rows/s", l.name, batch, r)
					if r > best {
						best, bestBatch, bestLayout = r, batch, l.name
					}
				}
				for _, s := range sessions {
					s.Close()
				}
			}
			// Enough jobs for a dozen rounds of full batches on every
			// instance: on 16 cores, 1,500 jobs at batch 64 were a round
			// and a half, and the ratio measured the first and the last.
			jobsN := max(c.jobs, 12*bestBatch*runtime.NumCPU())
			rng := rand.New(rand.NewPCG(2, 2))
			bodies := make([][]byte, jobsN)
			for i := range bodies {
				bodies[i] = requestJSON(randomInputs(rng, sig.Inputs, 1))
			}
			b.ReportMetric(best, "direct_rows/s")
			b.Logf("best direct: %s at batch %d; the queue runs %d jobs with max_batch_size %d", bestLayout, bestBatch, jobsN, bestBatch)
			for _, l := range layouts() {
				repo := testenv.ModelRepo(b, map[string]string{
					"m/1/model.onnx": "@" + path,
					"m/config.yaml": fmt.Sprintf("max_batch_size: %d\nmax_queue_delay: 10ms\ninstances: %d\nintra_op_threads: %d\n",
						bestBatch, l.instances, l.intraOp),
				})
				s, nc := benchServer(b, repo)
				var queued, drained float64
				for range b.N {
					elapsed, _ := load(b, s, nc, "m", bodies, nil, 32)
					queued = float64(jobsN) / elapsed.Seconds()
					drained = drain(b, repo, "m", bodies)
				}
				m := s.metricsB(b)
				b.Logf("queue %s: %.0f rows/s; %v batches, %v rows, %.3fs in ONNX Runtime; a worker draining a backlog alone: %.0f rows/s", l.name, queued,
					m["inferq_batch_size,model=m,stat=count"], m["inferq_batch_size,model=m,stat=sum"], m["inferq_inference_duration_seconds,model=m,stat=sum"], drained)
				b.ReportMetric(queued/best, "queue_"+l.name+"/direct")
				b.ReportMetric(drained/best, "drain_"+l.name+"/direct")
			}
		})
	}
}

// BenchmarkTinyModel: jobs per second end to end for the bundled iris
// classifier, and the latency of the submit call (the 202).
func BenchmarkTinyModel(b *testing.B) {
	iris := filepath.Join(testenv.Root(b), "testdata", "models", "iris", "1", "model.onnx")
	repo := testenv.ModelRepo(b, map[string]string{"iris/1/model.onnx": "@" + iris})
	s, nc := benchServer(b, repo)
	body := []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`)
	const jobsN = 3000
	bodies := make([][]byte, jobsN)
	for i := range bodies {
		bodies[i] = body
	}
	b.ResetTimer()
	var rate float64
	var lat []time.Duration
	for range b.N {
		elapsed, l := load(b, s, nc, "iris", bodies, nil, 32)
		rate = jobsN / elapsed.Seconds()
		lat = l
	}
	b.ReportMetric(rate, "jobs/s")
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "submit_p50_ms")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "submit_p99_ms")
}

// BenchmarkBatchingGain: the bundled iris classifier end to end with
// dynamic batching (max batch 32) against max_batch_size 1, side by side in
// one run: single-row jobs from 32 concurrent clients, and a 100,000-line
// batch file (whose lines are packed into jobs either way, so that what is
// left to batching is the runs). drain_gain is the same comparison for a
// worker alone, draining a backlog of 10,000 single-row jobs: the part of
// the path that batching can change, without the submissions that it
// cannot.
func BenchmarkBatchingGain(b *testing.B) {
	iris := filepath.Join(testenv.Root(b), "testdata", "models", "iris", "1", "model.onnx")
	body := []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`)
	const jobsN = 3000
	bodies := make([][]byte, jobsN)
	for i := range bodies {
		bodies[i] = body
	}
	file := irisBatchFile(100_000)
	backlog := make([][]byte, 10_000)
	for i := range backlog {
		backlog[i] = body
	}
	rate, fileRate, drainRate := map[int]float64{}, map[int]float64{}, map[int]float64{}
	for _, size := range []int{1, 32} {
		repo := testenv.ModelRepo(b, map[string]string{
			"iris/1/model.onnx": "@" + iris,
			"iris/config.yaml":  fmt.Sprintf("max_batch_size: %d\n", size),
		})
		s, nc := benchServer(b, repo)
		for range b.N {
			elapsed, _ := load(b, s, nc, "iris", bodies, nil, 32)
			rate[size] = jobsN / elapsed.Seconds()
			rec, _, elapsed := runBatchFile(b, s, "iris", file)
			fileRate[size] = float64(rec.Counts.Succeeded) / elapsed.Seconds()
			drainRate[size] = drain(b, repo, "iris", backlog)
		}
		m := s.metricsB(b)
		b.Logf("max batch %d: %.0f jobs/s; batch file %.0f rows/s; %v batches; a worker draining %d jobs alone: %.0f jobs/s",
			size, rate[size], fileRate[size], m["inferq_batch_size,model=iris,stat=count"], len(backlog), drainRate[size])
	}
	b.ReportMetric(rate[1], "unbatched_jobs/s")
	b.ReportMetric(rate[32], "batched_jobs/s")
	b.ReportMetric(rate[32]/rate[1], "gain")
	b.ReportMetric(fileRate[32]/fileRate[1], "file_gain")
	b.ReportMetric(drainRate[32]/drainRate[1], "drain_gain")
}

// irisBatchFile is n single-row JSON Lines requests for the iris model.
func irisBatchFile(n int) []byte {
	var file bytes.Buffer
	rng := rand.New(rand.NewPCG(7, 7))
	for i := range n {
		fmt.Fprintf(&file, `{"custom_id":%d,"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[%.2f,%.2f,%.2f,%.2f]}]}`+"\n",
			i, 4+rng.Float64()*4, 2+rng.Float64()*2, 1+rng.Float64()*6, rng.Float64()*2.5)
	}
	return file.Bytes()
}

// runBatchFile uploads a batch file and polls it until it ends. It returns
// its final record, how long the upload took, and how long until the
// batch ended.
func runBatchFile(b *testing.B, s *server, model string, data []byte) (record.BatchRecord, time.Duration, time.Duration) {
	b.Helper()
	start := time.Now()
	res, err := http.Post(s.url+"/v1/models/"+model+"/batches", "application/jsonl", bytes.NewReader(data))
	if err != nil {
		b.Fatal(err)
	}
	var rec record.BatchRecord
	json.NewDecoder(res.Body).Decode(&rec)
	res.Body.Close()
	uploaded := time.Since(start)
	for !rec.Final() {
		time.Sleep(20 * time.Millisecond)
		res, err := http.Get(s.url + "/v1/batches/" + rec.ID)
		if err != nil {
			b.Fatal(err)
		}
		json.NewDecoder(res.Body).Decode(&rec)
		res.Body.Close()
	}
	if rec.Counts.Failed > 0 {
		b.Fatalf("batch %+v", rec)
	}
	return rec, uploaded, time.Since(start)
}

// BenchmarkBatchFile: rows per second of a JSON Lines batch file through
// the bundled iris model, from upload to the batch finishing (and with its
// output read back), as a fraction of a plain in-process loop that reads
// the same file, decodes each line, and runs ONNX Runtime on batches of 32
// rows, side by side in one run.
func BenchmarkBatchFile(b *testing.B) {
	iris := filepath.Join(testenv.Root(b), "testdata", "models", "iris", "1", "model.onnx")
	const n = 200_000
	data := irisBatchFile(n)

	// The plain loop.
	rt := testenv.Runtime(b)
	sig, err := rt.Inspect(iris)
	if err != nil {
		b.Fatal(err)
	}
	sess, err := rt.NewSession(iris, sig, onnx.SessionOptions{Spinning: true})
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	start := time.Now()
	var reqs [][]tensor.Tensor
	var rows []int
	runBatch := func() {
		in, err := batching.Stack(reqs, nil)
		if err != nil {
			b.Fatal(err)
		}
		out, err := sess.Run(in)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := batching.Split(out, rows); err != nil {
			b.Fatal(err)
		}
		reqs, rows = reqs[:0], rows[:0]
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		req, err := tensor.DecodeRequest(sc.Bytes(), tensor.Limits{})
		if err != nil {
			b.Fatal(err)
		}
		reqs, rows = append(reqs, req.Inputs), append(rows, 1)
		if len(reqs) == 32 {
			runBatch()
		}
	}
	if len(reqs) > 0 {
		runBatch()
	}
	direct := n / time.Since(start).Seconds()

	// Through inferq.
	s, _ := benchServer(b, testenv.ModelRepo(b, map[string]string{"iris/1/model.onnx": "@" + iris}))
	var queued, withOutput float64
	for range b.N {
		start := time.Now()
		rec, uploaded, elapsed := runBatchFile(b, s, "iris", data)
		if rec.Counts.Succeeded != n {
			b.Fatalf("batch %+v", rec)
		}
		queued = n / elapsed.Seconds()
		res, err := http.Get(s.url + "/v1/batches/" + rec.ID + "/output")
		if err != nil {
			b.Fatal(err)
		}
		lines, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		withOutput = n / time.Since(start).Seconds()
		b.Logf("%d lines in %d jobs, uploaded and queued in %v, finished after %v; %d bytes of output",
			n, rec.Jobs, uploaded.Round(time.Millisecond), elapsed.Round(time.Millisecond), lines)
	}
	b.ReportMetric(direct, "loop_rows/s")
	b.ReportMetric(queued, "batch_rows/s")
	b.ReportMetric(queued/direct, "batch/loop")
	b.ReportMetric(withOutput/direct, "with_output/loop")
}

// BenchmarkBatchFileLines: lines per second of a 30,000-line batch file,
// from upload to the batch ending, for lines that cannot simply be
// stacked: through a model that runs one request at a time (recurrent
// state on the second axis), and through a model with a dynamic width,
// fed lines whose widths change from one line to the next.
func BenchmarkBatchFileLines(b *testing.B) {
	const n = 30_000
	rng := rand.New(rand.NewPCG(8, 8))
	floats := func(k int) string {
		x := make([]string, k)
		for j := range x {
			x[j] = strconv.FormatFloat(rng.Float64()*2-1, 'f', 3, 64)
		}
		return strings.Join(x, ",")
	}
	for _, c := range []struct {
		name  string
		model []byte
		line  func(i int) string
	}{
		{"unbatchable", onnxbuild.Recurrent(), func(i int) string {
			return fmt.Sprintf(`{"custom_id":%d,"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[%s]},{"name":"h","shape":[1,1,4],"datatype":"FP32","data":[%s]}]}`,
				i, floats(4), floats(4))
		}},
		{"mixed_shapes", onnxbuild.RowSum(), func(i int) string {
			w := 2 + i%3
			return fmt.Sprintf(`{"custom_id":%d,"inputs":[{"name":"x","shape":[1,%d],"datatype":"FP32","data":[%s]}]}`, i, w, floats(w))
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "model.onnx")
			writeFile(b, path, c.model)
			var file bytes.Buffer
			for i := range n {
				file.WriteString(c.line(i) + "\n")
			}
			s, _ := benchServer(b, testenv.ModelRepo(b, map[string]string{"m/1/model.onnx": "@" + path}))
			var rate float64
			for range b.N {
				rec, _, elapsed := runBatchFile(b, s, "m", file.Bytes())
				if rec.Counts.Succeeded != n {
					b.Fatalf("batch %+v", rec)
				}
				rate = n / elapsed.Seconds()
				m := s.metricsB(b)
				b.Logf("%d lines in %d jobs, %v; %v failed runs", n, rec.Jobs, elapsed.Round(time.Millisecond), m["inferq_failed_runs_total,model=m"])
			}
			b.ReportMetric(rate, "lines/s")
		})
	}
}

// BenchmarkStorage: the bundled iris classifier end to end with results in
// MinIO against results in files, side by side in one run.
func BenchmarkStorage(b *testing.B) {
	iris := filepath.Join(testenv.Root(b), "testdata", "models", "iris", "1", "model.onnx")
	body := []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`)
	const jobsN = 3000
	bodies := make([][]byte, jobsN)
	for i := range bodies {
		bodies[i] = body
	}
	m := testenv.StartMinIO(b)
	rate := map[string]float64{}
	for _, c := range []struct {
		name  string
		flags []string
	}{
		{"files", nil},
		{"minio", []string{"--s3-endpoint", m.Endpoint, "--s3-bucket", "bench", "--s3-access-key", m.AccessKey, "--s3-secret-key", m.SecretKey, "--s3-secure=false"}},
		{"minio_job_layout", []string{"--s3-endpoint", m.Endpoint, "--s3-bucket", "bench2", "--s3-access-key", m.AccessKey, "--s3-secret-key", m.SecretKey, "--s3-secure=false", "--result-layout", "job"}},
	} {
		s, nc := benchServer(b, testenv.ModelRepo(b, map[string]string{"iris/1/model.onnx": "@" + iris}), c.flags...)
		for range b.N {
			elapsed, _ := load(b, s, nc, "iris", bodies, nil, 32)
			rate[c.name] = jobsN / elapsed.Seconds()
		}
		b.ReportMetric(rate[c.name], c.name+"_jobs/s")
		m := s.metricsB(b)
		writes := m["inferq_result_write_seconds,model=iris,outcome=ok,stat=count"]
		b.Logf("%s: %.0f jobs/s; %.0f writes, %.1f ms and %.1f jobs each on average", c.name, rate[c.name], writes,
			1000*m["inferq_result_write_seconds,model=iris,outcome=ok,stat=sum"]/writes, m["inferq_result_write_jobs,model=iris,stat=sum"]/writes)
	}
	b.ReportMetric(rate["minio"]/rate["files"], "minio/files")
	b.ReportMetric(rate["minio_job_layout"]/rate["files"], "minio_job/files")
}

// BenchmarkReplicas: a compute-bound model with one intra-op thread per
// replica, one replica against two, side by side in one run.
func BenchmarkReplicas(b *testing.B) {
	path := filepath.Join(b.TempDir(), "model.onnx")
	writeFile(b, path, onnxbuild.Repeat(1024, 400, 1))
	rt := testenv.Runtime(b)
	sig, err := rt.Inspect(path)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	bodies := make([][]byte, 300)
	for i := range bodies {
		bodies[i] = requestJSON(randomInputs(rng, sig.Inputs, 1))
	}
	rate := map[string]float64{}
	for _, n := range []string{"1", "2"} {
		repo := testenv.ModelRepo(b, map[string]string{"m/1/model.onnx": "@" + path, "m/config.yaml": "max_batch_size: 8\nintra_op_threads: 1\n"})
		s, nc := benchServer(b, repo, "--min-replicas", n)
		for range b.N {
			elapsed, _ := load(b, s, nc, "m", bodies, nil, 32)
			rate[n] = float64(len(bodies)) / elapsed.Seconds()
		}
	}
	b.ReportMetric(rate["1"], "one_replica_jobs/s")
	b.ReportMetric(rate["2"], "two_replicas_jobs/s")
	b.ReportMetric(rate["2"]/rate["1"], "two/one")
}

// BenchmarkScaleUpReaction: from the first job of a burst at zero
// replicas to a replica running, under two autoscaler polling intervals.
func BenchmarkScaleUpReaction(b *testing.B) {
	iris := filepath.Join(testenv.Root(b), "testdata", "models", "iris", "1", "model.onnx")
	body := []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`)
	for _, interval := range []string{"250ms", "2s"} {
		s, _ := benchServer(b, testenv.ModelRepo(b, map[string]string{"iris/1/model.onnx": "@" + iris}),
			"--min-replicas", "0", "--max-replicas", "2", "--scale-interval", interval)
		var total time.Duration
		for range b.N {
			start := time.Now()
			res, err := http.Post(s.url+"/v1/models/iris/jobs", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			res.Body.Close()
			for s.metricsB(b)["inferq_replicas,model=iris"] < 1 {
				time.Sleep(5 * time.Millisecond)
			}
			total += time.Since(start)
		}
		b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "scale_up_ms_at_"+interval)
	}
}

// BenchmarkMonitoring is the cost of prediction monitoring: the bundled
// model's single-row jobs (3,000 per round, from 32 clients) with
// statistics and 1 % data capture on, against the same with both off,
// in two servers run in turn, three rounds each. monitored/plain is the
// ratio of their rates (target 0.95 or more).
func BenchmarkMonitoring(b *testing.B) {
	iris := filepath.Join(testenv.Root(b), "testdata", "models", "iris", "1", "model.onnx")
	rng := rand.New(rand.NewPCG(7, 7))
	const jobsN = 3000
	bodies := make([][]byte, jobsN)
	for i := range bodies {
		bodies[i] = requestJSON([]tensor.Tensor{randomInputs(rng, []onnx.IO{{Spec: tensor.Spec{Name: "x", Datatype: tensor.FP32, Shape: []int64{-1, 4}}}}, 1)[0]})
	}
	type side struct {
		s    *server
		nc   *nats.Conn
		best float64
	}
	var plain, monitored side
	for _, sd := range []struct {
		side   *side
		config string
	}{{&plain, "statistics: false\n"}, {&monitored, "capture:\n  rate: 0.01\n"}} {
		repo := testenv.ModelRepo(b, map[string]string{"iris/1/model.onnx": "@" + iris, "iris/config.yaml": sd.config})
		sd.side.s, sd.side.nc = benchServer(b, repo, "--stats-interval", "1s")
	}
	b.ResetTimer()
	for range b.N {
		for round := range 3 {
			for _, sd := range []*side{&plain, &monitored} {
				if round%2 == 1 { // alternate which goes first
					sd = map[*side]*side{&plain: &monitored, &monitored: &plain}[sd]
				}
				elapsed, _ := load(b, sd.s, sd.nc, "iris", bodies, nil, 32)
				sd.best = max(sd.best, jobsN/elapsed.Seconds())
			}
		}
	}
	b.ReportMetric(plain.best, "plain_jobs/s")
	b.ReportMetric(monitored.best, "monitored_jobs/s")
	b.ReportMetric(monitored.best/plain.best, "monitored/plain")
}
