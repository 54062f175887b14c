package main

import (
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// BenchmarkShadow: the iris classifier's jobs with a shadow version (a
// copy of iris, on its own queue) against none, side by side in one run
// on the same two cores: with the shadow's worker in the same process
// (competing for the cores), and with it elsewhere (--shadows without:
// the runs are queued for shadow workers on other machines, and this
// measures what the model's own path pays for them). Jobs/s of 5,000
// jobs from 32 clients (saturating), and the p99 of the jobs' latency
// (accepted to finished, from their records) at a paced 300 jobs/s.
func BenchmarkShadow(b *testing.B) {
	iris := filepath.Join(testenv.Root(b), "testdata", "models", "iris", "1", "model.onnx")
	bodies := make([][]byte, 5000)
	for i := range bodies {
		bodies[i] = requestJSON(flower(i))
	}
	b.Run("iris", func(b *testing.B) { benchShadow(b, iris, bodies) })
	// A model of about 2 MFLOP a row: a job's run is most of its cost.
	dense := filepath.Join(b.TempDir(), "dense.onnx")
	writeFile(b, dense, onnxbuild.Repeat(256, 16, 7))
	rng := rand.New(rand.NewPCG(3, 3))
	denseBodies := make([][]byte, 3000)
	for i := range denseBodies {
		denseBodies[i] = requestJSON([]tensor.Tensor{floats(rng, "x", 1, 256)})
	}
	b.Run("dense", func(b *testing.B) { benchShadow(b, dense, denseBodies) })
}

func benchShadow(b *testing.B, modelFile string, bodies [][]byte) {
	rates, p99s := map[string]float64{}, map[string]time.Duration{}
	for _, c := range []struct{ name, config, shadows string }{
		{"none", "traffic: {\"1\": 100}\n", "with"},
		{"shadow", "traffic: {\"1\": 100}\nshadow: [\"2\"]\n", "with"},
		{"elsewhere", "traffic: {\"1\": 100}\nshadow: [\"2\"]\n", "without"},
	} {
		repo := testenv.ModelRepo(b, map[string]string{"iris/1/model.onnx": "@" + modelFile, "iris/2/model.onnx": "@" + modelFile, "iris/config.yaml": c.config})
		s, nc := benchServer(b, repo, "--shadows", c.shadows)
		elapsed, _ := load(b, s, nc, "iris", bodies, nil, 32)
		rates[c.name] = float64(len(bodies)) / elapsed.Seconds()
		p99s[c.name] = pacedP99(b, s, nc, bodies[:1500], 200)
		b.Logf("%s: %.0f jobs/s saturated, p99 %v at 200 jobs/s", c.name, rates[c.name], p99s[c.name])
	}
	b.ReportMetric(rates["shadow"]/rates["none"], "jobs/s_shadow/none")
	b.ReportMetric(float64(p99s["shadow"])/float64(p99s["none"]), "p99_shadow/none")
	b.ReportMetric(rates["elsewhere"]/rates["none"], "jobs/s_elsewhere/none")
	b.ReportMetric(float64(p99s["elsewhere"])/float64(p99s["none"]), "p99_elsewhere/none")
	b.ReportMetric(rates["none"], "jobs/s_none")
	b.ReportMetric(rates["shadow"], "jobs/s_shadow")
	b.ReportMetric(float64(p99s["none"].Microseconds())/1000, "p99_ms_none")
	b.ReportMetric(float64(p99s["shadow"].Microseconds())/1000, "p99_ms_shadow")
}

// pacedP99 submits bodies at rate a second and returns the p99 of their
// jobs' latency, accepted to finished, as their announced records say.
func pacedP99(b *testing.B, s *server, nc *nats.Conn, bodies [][]byte, rate int) time.Duration {
	b.Helper()
	var mu sync.Mutex
	var lat []time.Duration
	var seen atomic.Int64
	all := make(chan struct{})
	sub, err := nc.Subscribe(jobs.ResultSubject("iris"), func(m *nats.Msg) {
		var rec record.Record
		if json.Unmarshal(m.Data, &rec) != nil || rec.FinishedAt == nil {
			return
		}
		mu.Lock()
		lat = append(lat, rec.FinishedAt.Sub(rec.CreatedAt))
		mu.Unlock()
		if seen.Add(1) == int64(len(bodies)) {
			close(all)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	nc.Flush()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	for _, body := range bodies {
		<-tick.C
		wg.Go(func() { submitAll(b, s.url, "iris", [][]byte{body}, nil, 1) })
	}
	wg.Wait()
	select {
	case <-all:
	case <-time.After(time.Minute):
		b.Fatalf("%d of %d paced jobs finished", seen.Load(), len(bodies))
	}
	slices.Sort(lat)
	return lat[len(lat)*99/100]
}
