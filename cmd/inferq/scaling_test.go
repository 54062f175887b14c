package main

import (
	"context"
	"maps"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/scaling"
	"github.com/nats-io/nats.go/jetstream"
)

// A burst of jobs makes the in-process pool grow, the pool drains the
// burst, and with the queue idle it falls back to zero replicas, all read
// from /metrics.
func TestAutoscaleToZeroAndBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, path, onnxbuild.Repeat(256, 40, 3)) // a few ms a row
	repo := testenv.ModelRepo(t, map[string]string{"slow/1/model.onnx": "@" + path, "slow/config.yaml": "max_batch_size: 4\nintra_op_threads: 1\n"})
	s := startServe(t, repo, "--min-replicas", "0", "--max-replicas", "3", "--target-backlog", "8",
		"--scale-interval", "100ms", "--scale-down-window", "1s")
	d := openDirect(t, path)
	replicas := func() float64 { return s.metrics(t)["inferq_replicas,model=slow"] }
	if r := replicas(); r != 0 {
		t.Fatalf("%v replicas before any job, want 0", r)
	}
	var ids []string
	for i := range 200 {
		ids = append(ids, s.submit(t, "/v1/models/slow/jobs", requestJSON(randomInputs(randSource(i), d.sig.Inputs, 1))))
	}
	peak := 0.0
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if r := replicas(); r > peak {
			peak = r
		}
		var rec record.Record
		do(t, "GET", s.url+"/v1/jobs/"+ids[len(ids)-1], nil).json(t, &rec)
		if rec.Status.Final() || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, id := range ids {
		if rec := s.await(t, id, time.Minute); rec.Status != record.Succeeded {
			t.Fatalf("job %s: %+v", id, rec)
		}
	}
	if peak < 2 {
		t.Errorf("the pool peaked at %v replicas for a backlog of 200 at 8 per replica", peak)
	}
	eventually(t, 30*time.Second, "no replica once the queue emptied", func() bool { return replicas() == 0 })
	m := s.metrics(t)
	t.Logf("peak %v replicas; %v scale-ups, %v scale-downs; %v cold starts took %.1f ms on average", peak,
		m["inferq_scale_events_total,direction=up,model=slow"], m["inferq_scale_events_total,direction=down,model=slow"],
		m["inferq_replica_start_seconds,model=slow,stat=count"], 1000*m["inferq_replica_start_seconds,model=slow,stat=sum"]/m["inferq_replica_start_seconds,model=slow,stat=count"])
	// And back from zero for one more job.
	id := s.submit(t, "/v1/models/slow/jobs", requestJSON(randomInputs(randSource(999), d.sig.Inputs, 1)))
	if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded {
		t.Fatalf("job after scale to zero: %+v", rec)
	}
}

func randSource(i int) *rand.Rand { return rand.New(rand.NewPCG(uint64(i), 17)) }

// Two `inferq worker` processes and an `inferq api` share one external
// NATS and one storage folder: both workers take part of one backlog, no
// job runs twice, and `inferq scaler` asks for more replicas for a
// backlog that no worker has read yet.
func TestWorkersInSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes; skipped with -short")
	}
	ns := testenv.JetStream(t)
	url := ns.ClientURL()
	path := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, path, onnxbuild.Repeat(512, 100, 3)) // ~25 ms a row on one thread
	repo := testenv.ModelRepo(t, map[string]string{"slow/1/model.onnx": "@" + path, "slow/config.yaml": "max_batch_size: 4\nintra_op_threads: 1\n"})
	objects := t.TempDir()
	common := []string{"--nats", url, "--models", repo, "--storage", objects, "--log-level", "warn"}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t.Setenv("ONNXRUNTIME_LIB", testenv.ORTLibrary(t))
	apiAddr, scalerAddr := make(chan string, 1), make(chan string, 1)
	failed := make(chan error, 2)
	var running sync.WaitGroup
	defer running.Wait()
	defer cancel()
	running.Go(func() {
		failed <- serveCmd(ctx, append([]string{"--http", "127.0.0.1:0"}, common...), testWriter{t}, modeAPI, func(a string) { apiAddr <- a })
	})
	running.Go(func() {
		failed <- scalerCmd(ctx, []string{"--nats", url, "--http", "127.0.0.1:0", "--interval", "100ms", "--models", "slow", "--target-backlog", "5"}, testWriter{t}, func(a string) { scalerAddr <- a })
	})
	addr := func(ch chan string) string {
		select {
		case a := <-ch:
			return "http://" + a
		case err := <-failed:
			t.Fatalf("api or scaler stopped: %v", err)
		case <-time.After(60 * time.Second):
			t.Fatal("api or scaler did not start")
		}
		return ""
	}
	s := &server{url: addr(apiAddr)}
	scaler := addr(scalerAddr)
	d := openDirect(t, path)

	// Submitted before any worker runs: the scaler reads the backlog
	// from the stream itself while no consumer exists yet.
	ids := make([]string, 120)
	bodies := make([][]byte, len(ids))
	for i := range bodies {
		bodies[i] = requestJSON(randomInputs(randSource(i), d.sig.Inputs, 1))
	}
	var submitters sync.WaitGroup
	for w := range 8 {
		submitters.Go(func() {
			for i := w; i < len(ids); i += 8 {
				ids[i] = s.submit(t, "/v1/models/slow/jobs", bodies[i])
			}
		})
	}
	submitters.Wait()
	var scale scaling.ModelScale
	testenv.Poll(30*time.Second, func() bool {
		if r := do(t, "GET", scaler+"/v1/scaling/slow", nil); r.code == http.StatusOK {
			r.json(t, &scale)
		}
		return scale.Desired >= 2
	})
	if scale.Desired < 2 {
		t.Errorf("the scaler asked for %d replicas with a backlog of 120 at 5 each", scale.Desired)
	}
	// The workers start only now: two of them drain a backlog of 120 in
	// a few hundred milliseconds, faster than the scaler is sure to read it.
	startWorkerProcess(t, common...)
	startWorkerProcess(t, common...)
	byWorker := map[string]int{}
	for _, id := range ids {
		rec := s.await(t, id, 2*time.Minute)
		if rec.Status != record.Succeeded || rec.Attempts != 1 || rec.Worker == "" {
			t.Fatalf("job %s: %+v", id, rec)
		}
		byWorker[rec.Worker]++
	}
	if len(byWorker) != 2 {
		t.Fatalf("jobs ran on %v, want both worker processes", byWorker)
	}
	t.Logf("jobs by worker: %v; the scaler asked for %d replicas (%s)", byWorker, scale.Desired, scale.Reason)
}

// TestScalerListsEachModelOnce: what `inferq scaler` serves to KEDA names
// each model whose workers have run once, whatever its priorities and
// however its name is spelled: model m run at high priority is not also
// "m@high", and a model named m-high is its own model, not m's high
// priority.
func TestScalerListsEachModelOnce(t *testing.T) {
	ns := testenv.JetStream(t)
	js, err := jetstream.New(testenv.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q, err := jobs.Setup(ctx, js, jobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		model string
		p     record.Priority
	}{{"m", record.High}, {"m", record.Normal}, {"m-high", record.Normal}, {"resnet50-v1.5", record.High}, {"iris", record.Normal}} {
		if _, err := q.Consumer(ctx, c.model, c.p, jobs.ConsumerOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- scalerCmd(ctx, []string{"--nats", ns.ClientURL(), "--http", "127.0.0.1:0", "--interval", "50ms"}, testWriter{t}, func(a string) { addr <- a })
	}()
	var url string
	select {
	case a := <-addr:
		url = "http://" + a
	case err := <-done:
		t.Fatalf("scaler stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the scaler did not start")
	}
	defer func() { cancel(); <-done }()
	want := []string{"iris", "m", "m-high", "resnet50-v1.5"}
	var got []string
	testenv.Poll(10*time.Second, func() bool {
		var out struct {
			Models map[string]scaling.ModelScale `json:"models"`
		}
		if r := do(t, "GET", url+"/v1/scaling", nil); r.code == http.StatusOK {
			r.json(t, &out)
		}
		got = slices.Sorted(maps.Keys(out.Models))
		return len(got) >= len(want)
	})
	if !slices.Equal(got, want) {
		t.Fatalf("the scaler decides for %v; want %v", got, want)
	}
}
