package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
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
)

// onCluster is inferq on a three-node JetStream cluster of nats-server
// processes: every stream and bucket at three replicas, the API (in this
// process) given node 0's URL alone and a worker process node 1's, as a
// pod is given a service address; each finds the others from the cluster
// itself and moves to them when its node goes.
type onCluster struct {
	c  *testenv.Cluster
	s  *server
	js jetstream.JetStream
}

func startOnCluster(t *testing.T) *onCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a three-node NATS cluster; skipped with -short")
	}
	c := testenv.StartCluster(t, 3)
	path := filepath.Join(t.TempDir(), "model.onnx")
	writeFile(t, path, onnxbuild.Repeat(16, 20, 3)) // a few ms a batch: jobs are in flight when a node goes
	repo := testenv.ModelRepo(t, map[string]string{"m/1/model.onnx": "@" + path, "m/config.yaml": "max_batch_size: 16\nmax_queue_delay: 2ms\n"})
	objects := t.TempDir()
	common := []string{"--models", repo, "--storage", objects, "--stream-replicas", "3", "--log-level", "warn"}
	s := startAPI(t, append([]string{"--nats", c.Nodes[0].URL()}, common...)...)
	startWorkerProcess(t, append([]string{"--nats", c.Nodes[1].URL(), "--ack-wait", "5s"}, common...)...)
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	o := &onCluster{c: c, s: s, js: js}
	o.waitCurrent(60 * time.Second) // every stream at three replicas, current on every node
	eventually(t, 60*time.Second, "the worker serves", func() bool {
		r := do(t, "POST", s.url+"/v2/models/m/infer", clusterJob)
		return r.code == http.StatusOK
	})
	return o
}

// clusterJob is the request every job of these tests sends.
var clusterJob = []byte(`{"inputs":[{"name":"x","shape":[1,16],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}]}`)

// clusterLoad is clients submitting jobs back to back, as a well-behaved client
// does: each job with an Idempotency-Key of its own, sent again with the
// same key after a 503, a 429 or a failed connection until it is
// accepted, so that a retry never makes a second job.
type clusterLoad struct {
	mu       sync.Mutex
	accepted []string
	refused  atomic.Int64 // 503s and 429s
	failed   atomic.Int64 // connections failed or timed out
	// longest is the longest one job took from its first try to its 202.
	longest time.Duration
	stop    context.CancelFunc
	done    sync.WaitGroup
}

func startLoad(t *testing.T, url string, clients int) *clusterLoad {
	ctx, cancel := context.WithCancel(context.Background())
	l := &clusterLoad{stop: cancel}
	hc := &http.Client{Timeout: 15 * time.Second}
	for c := range clients {
		l.done.Go(func() {
			for seq := 0; ctx.Err() == nil; seq++ {
				key := fmt.Sprintf("client-%d-job-%d", c, seq)
				first := time.Now()
				for ctx.Err() == nil {
					req, _ := http.NewRequest("POST", url+"/v1/models/m/jobs", bytes.NewReader(clusterJob))
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Idempotency-Key", key)
					res, err := hc.Do(req)
					if err != nil {
						l.failed.Add(1)
						time.Sleep(100 * time.Millisecond)
						continue
					}
					b, _ := io.ReadAll(res.Body)
					res.Body.Close()
					if res.StatusCode == http.StatusAccepted {
						var rec record.Record
						if err := json.Unmarshal(b, &rec); err != nil {
							t.Errorf("202 with %s", b)
						}
						l.mu.Lock()
						l.accepted = append(l.accepted, rec.ID)
						l.longest = max(l.longest, time.Since(first))
						l.mu.Unlock()
						break
					}
					if res.StatusCode != http.StatusServiceUnavailable && res.StatusCode != http.StatusTooManyRequests {
						t.Errorf("submit: %d %s", res.StatusCode, b)
						return
					}
					l.refused.Add(1)
					time.Sleep(100 * time.Millisecond)
				}
			}
		})
	}
	return l
}

// finish stops the load and returns the ids of the jobs accepted.
func (l *clusterLoad) finish() []string {
	l.stop()
	l.done.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.accepted
}

// checkExactlyOnce waits for every accepted job to succeed, with the
// model's output, and reads the results stream from its start: each
// accepted job is announced exactly once, and nothing else is.
func (o *onCluster) checkExactlyOnce(t *testing.T, accepted []string) {
	t.Helper()
	if len(accepted) == 0 {
		t.Fatal("no job was accepted")
	}
	want := make(map[string]bool, len(accepted))
	for _, id := range accepted {
		if want[id] {
			t.Errorf("job %s accepted twice", id)
		}
		want[id] = true
	}
	seen := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var cons jetstream.Consumer
	eventually(t, 30*time.Second, "a consumer of the results (JetStream back after a node came back)", func() bool {
		var err error
		cons, err = o.js.OrderedConsumer(ctx, jobs.ResultStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{jobs.ResultSubject("m")}})
		return err == nil
	})
	retried := 0
	for done := 0; done < len(want); {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			if ctx.Err() != nil {
				for id := range want {
					if seen[id] == 0 {
						r := do(t, "GET", o.s.url+"/v1/jobs/"+id, nil)
						t.Errorf("job %s never announced: %d %s", id, r.code, r.body)
					}
				}
				t.Fatalf("%d of %d accepted jobs announced within 90 seconds", done, len(want))
			}
			continue
		}
		var a jobs.Announcement
		if err := json.Unmarshal(m.Data(), &a); err != nil {
			t.Fatal(err)
		}
		seen[a.ID]++
		if !want[a.ID] {
			continue // the readiness probe's synchronous jobs
		}
		if seen[a.ID] == 1 {
			done++
		}
		if a.Status != record.Succeeded || !bytes.Contains(a.Response, []byte(`"outputs"`)) {
			t.Errorf("job %s: %s %s, response %.100s", a.ID, a.Status, a.Error, a.Response)
		}
		if a.Attempts > 1 {
			retried++
		}
	}
	// A worker announces a job before it acknowledges its message: once
	// every message is acknowledged, any repeat is in the stream too. But
	// the queue may not read empty (once, under the race detector after a
	// rolling restart, it did not for a minute: the probe's synchronous
	// jobs, or a restarted node's consumer state), so this waits for it
	// at most 10 s and reads on either way: a bound on repeats' absence,
	// as the read after it is.
	q, err := jobs.Open(ctx, o.js)
	if err != nil {
		t.Fatal(err)
	}
	drained := testenv.Poll(10*time.Second, func() bool {
		d, err := q.Depth(ctx, "m")
		return err == nil && d.Pending == 0 && d.InFlight == 0
	})
	if !drained {
		t.Log("the queue of m did not read empty within 10 s; reading the announcements to the end all the same")
	}
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			break
		}
		var a jobs.Announcement
		json.Unmarshal(m.Data(), &a)
		seen[a.ID]++
	}
	for id := range want {
		if seen[id] != 1 {
			t.Errorf("job %s announced %d times", id, seen[id])
		}
	}
	t.Logf("%d jobs accepted, each announced once; %d ran again after a node went (an acknowledgement lost with it)", len(want), retried)
}

// TestClusterNodeLoss: under load, kill -9 the node the API is connected
// to, then the worker's, then the request stream's leader, each brought
// back before the next: every job answered 202 finishes exactly once,
// and the API and the worker reconnect on their own.
func TestClusterNodeLoss(t *testing.T) {
	o := startOnCluster(t)
	l := startLoad(t, o.s.url, 4)
	l.await(t, 20)
	leader := func() *testenv.Node {
		var n *testenv.Node
		eventually(t, 30*time.Second, "the request stream has a leader", func() bool {
			n = o.c.Leader(o.js, jobs.RequestStream)
			return n != nil
		})
		return n
	}
	for _, step := range []struct {
		what string
		node func() *testenv.Node
	}{
		{"the API's node", func() *testenv.Node { return o.c.Nodes[0] }},
		{"the worker's node", func() *testenv.Node { return o.c.Nodes[1] }},
		{"the request stream's leader", leader},
	} {
		n := step.node()
		before := len(l.snapshot())
		n.Kill()
		t.Logf("killed %s (%s)", step.what, n.Name)
		time.Sleep(3 * time.Second) // the fault lasts, under load: not a wait for an event
		o.restart(t, n, l, before)
	}
	accepted := l.finish()
	t.Logf("%d refused (503) and %d failed connections were retried; the longest a job waited for its 202: %v", l.refused.Load(), l.failed.Load(), l.longest)
	o.checkExactlyOnce(t, accepted)
}

// restart starts node n again and waits until inferq's streams are current
// on every node and submissions go on: more accepted than before.
func (o *onCluster) restart(t *testing.T, n *testenv.Node, l *clusterLoad, before int) {
	t.Helper()
	n.Start()
	o.waitCurrent(60 * time.Second)
	eventually(t, 30*time.Second, "jobs accepted after "+n.Name+" came back", func() bool { return len(l.snapshot()) > before+10 })
}

// await waits until the load has had n jobs accepted.
func (l *clusterLoad) await(t *testing.T, n int) {
	t.Helper()
	eventually(t, 60*time.Second, "the load's first jobs accepted", func() bool { return len(l.snapshot()) >= n })
}

// waitCurrent waits until inferq's streams are current on every node.
func (o *onCluster) waitCurrent(within time.Duration) {
	for _, name := range []string{jobs.RequestStream, jobs.ResultStream, "KV_" + jobs.RecordBucket} {
		o.c.WaitCurrent(o.js, name, within)
	}
}

// snapshot is the ids accepted so far.
func (l *clusterLoad) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.accepted...)
}

// TestClusterRollingRestart: under load, each node is stopped as an
// upgrade stops it (SIGTERM) and started again, one at a time, each back
// and caught up before the next: nothing lost, nothing announced twice,
// and submissions keep being accepted, a short window of 503s aside.
func TestClusterRollingRestart(t *testing.T) {
	o := startOnCluster(t)
	l := startLoad(t, o.s.url, 4)
	l.await(t, 20)
	for _, n := range o.c.Nodes {
		before := len(l.snapshot())
		n.Stop()
		time.Sleep(2 * time.Second) // the node stays down, under load: not a wait for an event
		o.restart(t, n, l, before)
	}
	accepted := l.finish()
	t.Logf("rolling restart: %d refused (503) and %d failed connections were retried; the longest a job waited for its 202: %v", l.refused.Load(), l.failed.Load(), l.longest)
	o.checkExactlyOnce(t, accepted)
}

// TestClusterQuorumLoss: with two of three nodes down, nothing is
// accepted (503: JetStream cannot store on a majority) and readiness says
// why; once they are back, everything accepted before finishes once and
// submissions are accepted again.
func TestClusterQuorumLoss(t *testing.T) {
	o := startOnCluster(t)
	l := startLoad(t, o.s.url, 4)
	l.await(t, 20)
	o.c.Nodes[1].Kill()
	o.c.Nodes[2].Kill()
	t.Log("killed two of three nodes")
	// Readiness says so once the API's node sees its peers gone (a leader
	// that lost them still answers for a while).
	var r response
	eventually(t, time.Minute, "readiness to say a majority is down", func() bool {
		r = do(t, "GET", o.s.url+"/v2/health/ready", nil)
		return r.code == http.StatusServiceUnavailable && bytes.Contains(r.body, []byte("majority"))
	})
	t.Logf("readiness with two of three nodes down: %d %s", r.code, bytes.TrimSpace(r.body))
	// Jobs answered 202 as the nodes went were stored on a majority
	// before. A submission tries for 10 seconds before it answers 503:
	// once each of the four clients has been refused since, those in
	// flight as the nodes went have been answered, and from there on,
	// through four more refusals, none is accepted.
	refusals := func() int64 { return l.refused.Load() + l.failed.Load() }
	start := refusals()
	eventually(t, time.Minute, "each client refused with two of three nodes down", func() bool { return refusals() >= start+4 })
	before, seen := len(l.snapshot()), refusals()
	eventually(t, time.Minute, "four more refusals", func() bool { return refusals() >= seen+4 })
	if n := len(l.snapshot()); n != before {
		t.Errorf("%d jobs accepted with two of three nodes down", n-before)
	}
	o.c.Nodes[1].Start()
	o.c.Nodes[2].Start()
	o.waitCurrent(90 * time.Second)
	eventually(t, 60*time.Second, "jobs accepted once the nodes are back", func() bool { return len(l.snapshot()) > before+10 })
	eventually(t, 30*time.Second, "ready again", func() bool { return do(t, "GET", o.s.url+"/v2/health/ready", nil).code == http.StatusOK })
	accepted := l.finish()
	t.Logf("quorum loss: %d refused (503) and %d failed connections were retried; the longest a job waited for its 202: %v", l.refused.Load(), l.failed.Load(), l.longest)
	o.checkExactlyOnce(t, accepted)
}

// TestClusterFreshStartTogether: on a fresh three-node cluster, an API and
// a worker started at the same moment (as a Kubernetes rollout of the
// whole stack starts them) both set the queue up and serve soon: each
// stream created once, neither waiting out the other's creation. They
// once took 80-96 s, every stream's set-up timing out in turn.
func TestClusterFreshStartTogether(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a three-node NATS cluster; skipped with -short")
	}
	c := testenv.StartCluster(t, 3)
	repo := filepath.Join(testenv.Root(t), "testdata/models")
	common := []string{"--models", repo, "--storage", t.TempDir(), "--stream-replicas", "3", "--log-level", "warn"}
	t.Setenv("ONNXRUNTIME_LIB", testenv.ORTLibrary(t))
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	defer running.Wait()
	defer cancel()
	start := time.Now()
	addr, failed := make(chan string, 1), make(chan error, 2)
	running.Go(func() {
		failed <- serveCmd(ctx, append([]string{"--http", "127.0.0.1:0", "--nats", c.Nodes[0].URL()}, common...), testWriter{t}, modeAPI, func(a string) { addr <- a })
	})
	running.Go(func() {
		failed <- serveCmd(ctx, append([]string{"--nats", c.Nodes[1].URL()}, common...), testWriter{t}, modeWorker, nil)
	})
	var url string
	select {
	case a := <-addr:
		url = "http://" + a
	case err := <-failed:
		t.Fatalf("api or worker stopped: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the API did not listen within 2 minutes")
	}
	eventually(t, 2*time.Minute, "a synchronous job answered", func() bool {
		return do(t, "POST", url+"/v2/models/iris/infer", []byte(irisJob)).code == http.StatusOK
	})
	took := time.Since(start)
	t.Logf("API and worker started together on a fresh cluster: serving after %v", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("serving only after %v: the two processes' set-ups waited on each other", took.Round(time.Second))
	}
}
