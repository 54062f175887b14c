package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
)

// inferqBinary builds the inferq binary once per test run;
// INFERQ_TEST_BINARY names one to use instead (a benchmark of an earlier
// release, side by side). Not INFERQ_BINARY: every command reads
// INFERQ_<FLAG> from the environment, and that one is inferq perf's
// --binary.
func inferqBinary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("INFERQ_TEST_BINARY"); bin != "" {
		return bin
	}
	return testenv.Binary(t, "github.com/inferq/inferq/cmd/inferq")
}

// process is inferq running as a child process.
type process struct {
	cmd *exec.Cmd
	url string
	log *os.File
}

func startProcess(t testing.TB, args ...string) *process {
	t.Helper()
	httpPort := testenv.FreePort(t)
	logf, err := os.CreateTemp(t.TempDir(), "inferq-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(inferqBinary(t), append(args, "--http", fmt.Sprintf("127.0.0.1:%d", httpPort))...)
	cmd.Env = append(os.Environ(), "ONNXRUNTIME_LIB="+testenv.ORTLibrary(t))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, url: fmt.Sprintf("http://127.0.0.1:%d", httpPort), log: logf}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	ready := testenv.Poll(60*time.Second, func() bool {
		res, err := http.Get(p.url + "/v2/health/ready")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
	if ready {
		return p
	}
	out, _ := os.ReadFile(logf.Name())
	t.Fatalf("inferq did not become ready:\n%s", out)
	return nil
}

// TestAcceptedJobsSurviveKill: jobs accepted, then the process killed
// hard (SIGKILL, no drain) while it works through them, then started again
// on the same data folder: every accepted job finishes, and each is
// announced finished exactly once.
func TestAcceptedJobsSurviveKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a real process; skipped with -short")
	}
	slow := filepath.Join(t.TempDir(), "slow.onnx")
	writeFile(t, slow, onnxbuild.Repeat(1024, 200, 9))
	repo := testenv.ModelRepo(t, map[string]string{"slow/1/model.onnx": "@" + slow, "slow/config.yaml": "max_batch_size: 4\nmax_queue_delay: 1ms\n"})
	data := t.TempDir()
	natsPort := testenv.FreePort(t)
	args := []string{"serve", "--models", repo, "--data", data, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", natsPort), "--nats-token", testNATSToken, "--ack-wait", "3s", "--log-level", "warn",
		// The victim is caught running: its record says so 10ms into
		// the run.
		"--running-after", "10ms"}

	p := startProcess(t, args...)
	s := &server{url: p.url}
	ref := openDirect(t, slow)
	rng := rand.New(rand.NewPCG(5, 6))
	n := 100
	ids := make([]string, n)
	// The first 40 jobs are submitted before the kill can happen; the
	// last of them, the victim, is a full batch of 4 rows, slow enough to
	// be seen running.
	const victimAt, before = 39, 40
	for i := range before {
		rows := 1
		if i == victimAt {
			rows = 4
		}
		ids[i] = s.submit(t, "/v1/models/slow/jobs", requestJSON(randomInputs(rng, ref.sig.Inputs, rows)))
	}
	// The rest arrive while it works, until the kill cuts them off.
	bodies := make([][]byte, n)
	for i := before; i < n; i++ {
		bodies[i] = requestJSON(randomInputs(rng, ref.sig.Inputs, 1))
	}
	rest := make(chan struct{})
	go func() {
		defer close(rest)
		for i := before; i < n; i++ {
			res, err := http.Post(s.url+"/v1/models/slow/jobs", "application/json", bytes.NewReader(bodies[i]))
			if err != nil {
				return
			}
			var rec record.Record
			err = json.NewDecoder(res.Body).Decode(&rec)
			res.Body.Close()
			if err != nil || res.StatusCode != http.StatusAccepted {
				return
			}
			ids[i] = rec.ID
		}
	}()
	// Kill it mid-batch: while the victim runs, with jobs before it done
	// and others still queued.
	victim := ids[victimAt]
	deadline := time.Now().Add(time.Minute)
	for {
		var rec record.Record
		do(t, "GET", s.url+"/v1/jobs/"+victim, nil).json(t, &rec)
		if rec.Status == record.Running {
			break
		}
		if rec.Status.Final() || time.Now().After(deadline) {
			t.Fatalf("the victim went from queued to %s without being seen running; use a slower model", rec.Status)
		}
		time.Sleep(2 * time.Millisecond)
	}
	killedAt := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.cmd.Wait()
	<-rest
	accepted := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return id == "" })
	if len(accepted) < before {
		t.Fatalf("only %d jobs accepted before the kill, want at least %d", len(accepted), before)
	}
	ids = accepted

	p = startProcess(t, args...)
	s = &server{url: p.url}
	retried := 0
	for _, id := range ids {
		rec := s.await(t, id, 2*time.Minute)
		if rec.Status != record.Succeeded {
			t.Fatalf("job %s after restart: %+v", id, rec)
		}
		if rec.Attempts > 1 {
			retried++
		}
		if id == victim && rec.Attempts < 2 {
			t.Fatalf("the victim was running at the kill (%s), yet shows %d attempts: %+v", killedAt.Format(time.RFC3339Nano), rec.Attempts, rec)
		}
	}
	t.Logf("%d accepted jobs survived the kill; %d of them were redelivered after it", len(ids), retried)

	// Each job is announced on the results stream exactly once.
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", natsPort), nats.Token(testNATSToken))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, jobs.ResultStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Read to the end of the stream: a submission the kill cut off may
	// have been stored without its answer reaching the client, so there
	// can be announcements of jobs not among ids, before theirs.
	seen := map[string]int{}
	for {
		msgs, err := cons.Fetch(len(ids), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range msgs.Messages() {
			var rec record.Record
			if err := json.Unmarshal(m.Data(), &rec); err != nil {
				t.Fatal(err)
			}
			seen[rec.ID]++
			got++
		}
		if got == 0 {
			break
		}
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("job %s announced %d times", id, seen[id])
		}
	}
	// Beyond them, at most the one submission the kill cut off.
	if len(seen) > len(ids)+1 {
		t.Errorf("%d jobs announced, want %d (or one more, accepted as the kill came)", len(seen), len(ids))
	}
}

// runCLI runs the inferq binary as a client of the API at url and returns
// its standard output, standard error and exit code.
func runCLI(t *testing.T, url, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(inferqBinary(t), args...)
	cmd.Env = append(os.Environ(), "INFERQ_URL="+url)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// The batch tracker's and the webhook dispatchers' durable consumers
// deliver only what is announced after they are created, so they exist by
// the time the API accepts anything: on a new system's first start, a
// batch cancelled (or a webhook job finished) the moment the API was up
// was otherwise never counted (delivered), when their goroutines were
// slow to start.
func TestConsumersExistBeforeTheAPIServes(t *testing.T) {
	_, nc := startServeNATS(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)}))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"inferq-batches", "inferq-webhooks"} {
		if _, err := js.Consumer(context.Background(), jobs.ResultStream, name); err != nil {
			t.Errorf("consumer %s, as the API starts serving: %v", name, err)
		}
	}
}

// TestBatchUploadCutByCrash: the API process reading a batch file is
// killed mid-upload (its client never gets a 202). Another API process
// ends the batch failed, saying why, and the lines it had queued and
// that have not started are cancelled by the worker that takes them, not
// run: nobody could read their output. The batch once stayed queued for
// ever while its lines ran.
func TestBatchUploadCutByCrash(t *testing.T) {
	ns := testenv.JetStream(t)
	common := []string{"--nats", ns.ClientURL(), "--models", filepath.Join(testenv.Root(t), "testdata/models"), "--storage", t.TempDir(), "--log-level", "warn", "--upload-heartbeat", "200ms"}
	a := startProcess(t, append([]string{"api"}, common...)...)
	q, _ := openQueue(t, testenv.Connect(t, ns))
	// An upload that never ends: lines enough for several jobs, then the
	// client waits.
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		res, err := http.Post(a.url+"/v1/models/iris/batches", "application/jsonl", pr)
		if err == nil {
			res.Body.Close()
		}
	}()
	line := []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}` + "\n")
	for range 2000 {
		if _, err := pw.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "jobs of the batch queued", func() bool {
		d, err := q.Depth(context.Background(), "iris")
		return err == nil && d.Pending >= 4
	})
	var batch *record.BatchRecord
	eventually(t, 10*time.Second, "the batch's record", func() bool {
		recent, err := q.Batches.Recent(context.Background(), 1, func(string) bool { return true })
		if err != nil || len(recent) != 1 {
			return false
		}
		batch = recent[0]
		return true
	})
	a.cmd.Process.Kill()
	a.cmd.Wait()

	b := startAPI(t, common...)
	eventually(t, 30*time.Second, "the cut-off batch ended", func() bool {
		r := do(t, "GET", b.url+"/v1/batches/"+batch.ID, nil)
		r.json(t, batch)
		return batch.Status != record.BatchQueued
	})
	if batch.Status != record.BatchFailed || !strings.Contains(batch.Error, "cut off") {
		t.Fatalf("a batch whose upload was cut off: %+v; want failed, saying why", batch)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveCmd(ctx, common, testWriter{t}, modeWorker, nil) }()
	defer func() { cancel(); <-done }()
	eventually(t, 30*time.Second, "the batch's jobs taken and counted", func() bool {
		d, err := q.Depth(context.Background(), "iris")
		if err != nil || d.Pending+uint64(d.InFlight) > 0 {
			return false
		}
		do(t, "GET", b.url+"/v1/batches/"+batch.ID, nil).json(t, batch)
		return batch.Counts.Cancelled > 0
	})
	if batch.Counts.Succeeded != 0 || batch.Counts.Failed != 0 {
		t.Errorf("lines of the cut-off batch ran: %+v", batch.Counts)
	}
	t.Logf("cut-off batch: %+v", batch)
}
