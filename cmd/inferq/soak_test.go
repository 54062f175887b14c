//go:build soak

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// TestSoak (make soak): 50,000 jobs through `inferq api` and two
// `inferq worker` processes on one NATS and one MinIO, with a worker
// killed (SIGKILL), NATS stopped for three seconds and started again on
// its store, and MinIO stopped for five seconds, along the way.
// It reports accepted, succeeded, failed, lost and duplicated jobs and
// fails unless none is lost, none duplicated and every result is right.
// INFERQ_SOAK_JOBS changes the count.
func TestSoak(t *testing.T) {
	total := soakJobs(t, 50_000)
	startNATS := testenv.RestartableJetStream(t)
	ns := startNATS()
	defer func() { ns.Shutdown() }()
	m := testenv.StartMinIO(t)
	path := filepath.Join(t.TempDir(), "lookup.onnx")
	writeFile(t, path, onnxbuild.Lookup())
	repo := testenv.ModelRepo(t, map[string]string{"lookup/1/model.onnx": "@" + path, "lookup/config.yaml": "max_batch_size: 32\nmax_queue_delay: 5ms\n"})
	common := append([]string{"--nats", ns.ClientURL(), "--models", repo, "--log-level", "warn"}, s3Flags(m, "soak")...)
	workerArgs := append([]string{"worker", "--ack-wait", "5s"}, common...)

	// The results stream, read from the start: every announcement, with
	// its response inline, checked against what its job asked for.
	nc := testenv.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	want := map[string]int64{}    // accepted job -> the row it asked for
	announced := map[string]int{} // job -> announcements
	status := map[string]record.Status{}
	outputs := map[string][]byte{} // succeeded job -> its output data
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var followers sync.WaitGroup
	defer followers.Wait()
	defer cancel()
	api := startProcess(t, append([]string{"api"}, common...)...)
	followers.Go(func() {
		cons, err := js.OrderedConsumer(ctx, jobs.ResultStream, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Error(err)
			return
		}
		it, err := cons.Messages()
		if err != nil {
			t.Error(err)
			return
		}
		go func() { <-ctx.Done(); it.Stop() }()
		for {
			msg, err := it.Next()
			if err != nil {
				return
			}
			var a jobs.Announcement
			if err := json.Unmarshal(msg.Data(), &a); err != nil {
				t.Errorf("announcement %s: %v", msg.Data(), err)
				continue
			}
			var out []byte
			if a.Status == record.Succeeded {
				if resp, err := tensor.DecodeResponse(a.Response); err == nil && len(resp.Outputs) == 1 {
					out = resp.Outputs[0].Data
				}
			}
			mu.Lock()
			announced[a.ID]++
			status[a.ID] = a.Status
			if prev, ok := outputs[a.ID]; ok && !bytes.Equal(prev, out) {
				out = nil // two different results for one job: wrong
			}
			outputs[a.ID] = out
			mu.Unlock()
		}
	})

	workers := make([]*exec.Cmd, 2)
	startWorker := func(i int) {
		cmd := exec.Command(inferqBinary(t), workerArgs...)
		cmd.Env = append(os.Environ(), "ONNXRUNTIME_LIB="+testenv.ORTLibrary(t))
		logf, err := os.Create(filepath.Join(t.TempDir(), fmt.Sprintf("worker-%d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		workers[i] = cmd
	}
	for i := range workers {
		startWorker(i)
	}
	t.Cleanup(func() {
		for _, w := range workers {
			w.Process.Kill()
			w.Wait()
		}
	})

	// Clients: 16 at once, each retrying a refused submission after its
	// Retry-After, until total are accepted.
	var next, accepted, refused atomic.Int64
	hc := &http.Client{Timeout: 30 * time.Second}
	start := time.Now()
	var clients sync.WaitGroup
	for range 16 {
		clients.Go(func() {
			for {
				n := next.Add(1)
				if n > int64(total) {
					return
				}
				idx := n % 10
				for {
					res, err := hc.Post(api.url+"/v1/models/lookup/jobs", "application/json", bytes.NewReader(lookupRequest(idx)))
					if err != nil {
						refused.Add(1)
						time.Sleep(200 * time.Millisecond)
						continue
					}
					var rec record.Record
					err = json.NewDecoder(res.Body).Decode(&rec)
					res.Body.Close()
					if res.StatusCode == http.StatusAccepted && err == nil {
						mu.Lock()
						want[rec.ID] = idx
						mu.Unlock()
						accepted.Add(1)
						break
					}
					refused.Add(1)
					time.Sleep(200 * time.Millisecond)
				}
			}
		})
	}

	// Faults along the way: a worker killed at a third, MinIO away for
	// five seconds at two thirds.
	waitFor := func(n int64) {
		for accepted.Load() < n {
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(int64(total) / 3)
	workers[0].Process.Kill()
	workers[0].Wait()
	t.Logf("%v: killed worker 0 (SIGKILL) at %d accepted", time.Since(start).Round(time.Millisecond), accepted.Load())
	startWorker(0)
	waitFor(int64(total) / 2)
	ns.Shutdown()
	t.Logf("%v: stopped NATS at %d accepted", time.Since(start).Round(time.Millisecond), accepted.Load())
	time.Sleep(3 * time.Second) // the outage lasts: not a wait for an event
	ns = startNATS()
	t.Logf("%v: NATS back", time.Since(start).Round(time.Millisecond))
	waitFor(2 * int64(total) / 3)
	m.Stop()
	t.Logf("%v: stopped MinIO at %d accepted", time.Since(start).Round(time.Millisecond), accepted.Load())
	time.Sleep(5 * time.Second) // the outage lasts: not a wait for an event
	m.Start()
	t.Logf("%v: MinIO back", time.Since(start).Round(time.Millisecond))
	clients.Wait()
	submitted := time.Since(start)

	// Drain: wait until every accepted job is announced final, or until
	// nothing has moved for two minutes.
	last, lastChange := -1, time.Now()
	for {
		mu.Lock()
		final := 0
		for id := range want {
			if announced[id] > 0 {
				final++
			}
		}
		mu.Unlock()
		if final == len(want) {
			break
		}
		if final != last {
			last, lastChange = final, time.Now()
		}
		if time.Since(lastChange) > 2*time.Minute {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	drained := time.Since(start)
	time.Sleep(2 * time.Second) // late duplicates, if any, arrive: a bound on their absence, not a wait for an event
	cancel()

	mu.Lock()
	defer mu.Unlock()
	var succeeded, failed, other, lost, duplicated int
	var lostIDs, wrong []string
	for id, idx := range want {
		if status[id] == record.Succeeded && !bytes.Equal(outputs[id], f32(float32(3*idx), float32(3*idx+1), float32(3*idx+2))) {
			wrong = append(wrong, id)
		}
		switch n := announced[id]; {
		case n == 0:
			lost++
			lostIDs = append(lostIDs, id)
			continue
		case n > 1:
			duplicated++
		}
		switch status[id] {
		case record.Succeeded:
			succeeded++
		case record.Failed:
			failed++
		default:
			other++
		}
	}
	report := fmt.Sprintf(`inferq soak: %d jobs, 2 workers (one killed), NATS stopped for 3 s, MinIO for 5 s
  accepted     %d (refused and retried: %d)
  succeeded    %d
  failed       %d
  other final  %d
  lost         %d (must be 0)
  duplicated   %d (must be 0)
  wrong result %d (must be 0)
  submitted in %v, all final in %v (%.0f jobs/s)
  peak memory  api %s, workers %s
`, total, accepted.Load(), refused.Load(), succeeded, failed, other, lost, duplicated, len(wrong),
		submitted.Round(time.Millisecond), drained.Round(time.Millisecond), float64(len(want))/drained.Seconds(),
		peakRSS(api.cmd.Process.Pid), peakRSS(workers[0].Process.Pid)+", "+peakRSS(workers[1].Process.Pid))
	fmt.Print(report)
	if dir := os.Getenv("INFERQ_SOAK_REPORT"); dir != "" {
		writeFile(t, dir, []byte(report))
	}
	if lost > 0 || duplicated > 0 || len(wrong) > 0 || int(accepted.Load()) != total || succeeded+failed+other != total {
		if len(lostIDs) > 5 {
			lostIDs = lostIDs[:5]
		}
		t.Errorf("the counts do not add up; lost for example %s, wrong %v", strings.Join(lostIDs, " "), wrong[:min(len(wrong), 5)])
	}
}

// peakRSS is the peak resident memory of a process.
func peakRSS(pid int) string { return memory(pid, "VmHWM:") }

// memory reads a memory figure of a process (VmRSS:, VmHWM:) from /proc.
func memory(pid int, field string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return fmt.Sprintf("%d MiB", kb/1024)
		}
	}
	return "?"
}

// TestSoakBacklog (make soak-backlog): a million jobs wait with no worker
// running; the API's memory stays flat while they pile up, and a worker
// started on the backlog holds only its bounded window of it.
// INFERQ_SOAK_JOBS changes the count.
func TestSoakBacklog(t *testing.T) {
	total := soakJobs(t, 1_000_000)
	ns := testenv.JetStream(t)
	path := filepath.Join(t.TempDir(), "lookup.onnx")
	writeFile(t, path, onnxbuild.Lookup())
	repo := testenv.ModelRepo(t, map[string]string{"lookup/1/model.onnx": "@" + path, "lookup/config.yaml": "max_batch_size: 64\n"})
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", t.TempDir(), "--log-level", "warn"}
	api := startProcess(t, append([]string{"api"}, common...)...)

	var next, accepted atomic.Int64
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	start := time.Now()
	var rssMu sync.Mutex
	var rss []string // the API's resident memory at each tenth
	var clients sync.WaitGroup
	for range 32 {
		clients.Go(func() {
			for {
				n := next.Add(1)
				if n > int64(total) {
					return
				}
				res, err := hc.Post(api.url+"/v1/models/lookup/jobs", "application/json", bytes.NewReader(lookupRequest(n%10)))
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusAccepted {
					t.Errorf("job %d: %d", n, res.StatusCode)
					return
				}
				if a := accepted.Add(1); a%int64(total/10) == 0 {
					rssMu.Lock()
					rss = append(rss, fmt.Sprintf("%dk: %s", a/1000, memory(api.cmd.Process.Pid, "VmRSS:")))
					rssMu.Unlock()
				}
			}
		})
	}
	clients.Wait()
	if t.Failed() {
		return
	}
	queued := time.Since(start)
	apiPeak := memory(api.cmd.Process.Pid, "VmHWM:")
	natsPeak := memory(os.Getpid(), "VmHWM:")

	cmd := exec.Command(inferqBinary(t), append([]string{"worker"}, common...)...)
	cmd.Env = append(os.Environ(), "ONNXRUNTIME_LIB="+testenv.ORTLibrary(t))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	time.Sleep(30 * time.Second) // the measured interval: one worker for 30 s
	workerPeak := memory(cmd.Process.Pid, "VmHWM:")
	done := finishedJobs(t, ns.ClientURL())

	report := fmt.Sprintf(`inferq backlog soak: %d jobs queued with no worker, then one worker for 30 s
  queued in     %v (%.0f jobs/s through the API)
  API memory    %s at each tenth; peak %s
  NATS server   peak %s (in the test process, with its clients)
  worker        peak %s on a backlog of %d; %d jobs done in 30 s
`, total, queued.Round(time.Millisecond), float64(total)/queued.Seconds(), strings.Join(rss, ", "), apiPeak, natsPeak, workerPeak, total, done)
	fmt.Print(report)
	if f := os.Getenv("INFERQ_SOAK_REPORT"); f != "" {
		writeFile(t, f, []byte(report))
	}
	for name, v := range map[string]string{"API": apiPeak, "worker": workerPeak} {
		if mib, _ := strconv.Atoi(strings.TrimSuffix(v, " MiB")); mib == 0 || mib > 512 {
			t.Errorf("%s peak memory %s with a backlog of %d: want it bounded, under 512 MiB", name, v, total)
		}
	}
}

// finishedJobs counts the announcements in the results stream.
func finishedJobs(t *testing.T, url string) uint64 {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(context.Background(), jobs.ResultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// soakJobs is INFERQ_SOAK_JOBS, or def.
func soakJobs(t *testing.T, def int) int {
	v := os.Getenv("INFERQ_SOAK_JOBS")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 100 {
		t.Fatalf("INFERQ_SOAK_JOBS=%q: want a number of at least 100", v)
	}
	return n
}
