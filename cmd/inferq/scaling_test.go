package main

import (
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
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
		var rec jobs.Record
		do(t, "GET", s.url+"/v1/jobs/"+ids[len(ids)-1], nil).json(t, &rec)
		if rec.Status.Final() || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, id := range ids {
		if rec := s.await(t, id, time.Minute); rec.Status != jobs.Succeeded {
			t.Fatalf("job %s: %+v", id, rec)
		}
	}
	if peak < 2 {
		t.Errorf("the pool peaked at %v replicas for a backlog of 200 at 8 per replica", peak)
	}
	deadline = time.Now().Add(30 * time.Second)
	for replicas() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still %v replicas 30s after the queue emptied", replicas())
		}
		time.Sleep(100 * time.Millisecond)
	}
	m := s.metrics(t)
	t.Logf("peak %v replicas; %v scale-ups, %v scale-downs; %v cold starts took %.1f ms on average", peak,
		m["inferq_scale_events_total,direction=up,model=slow"], m["inferq_scale_events_total,direction=down,model=slow"],
		m["inferq_replica_start_seconds,model=slow,stat=count"], 1000*m["inferq_replica_start_seconds,model=slow,stat=sum"]/m["inferq_replica_start_seconds,model=slow,stat=count"])
	// And back from zero for one more job.
	id := s.submit(t, "/v1/models/slow/jobs", requestJSON(randomInputs(randSource(999), d.sig.Inputs, 1)))
	if rec := s.await(t, id, 30*time.Second); rec.Status != jobs.Succeeded {
		t.Fatalf("job after scale to zero: %+v", rec)
	}
}

func randSource(i int) *rand.Rand { return rand.New(rand.NewPCG(uint64(i), 17)) }
