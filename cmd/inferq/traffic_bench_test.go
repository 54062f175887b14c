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
	rates, p99s := map[string][]float64{}, map[string][]float64{}
	cases := []struct{ name, config, shadows string }{
		{"none", "traffic: {\"1\": 100}\n", "with"},
		{"shadow", "traffic: {\"1\": 100}\nshadow: [\"2\"]\n", "with"},
		{"elsewhere", "traffic: {\"1\": 100}\nshadow: [\"2\"]\n", "without"},
	}
	for round := range 2 { // alternated, so that a drift of the machine's speed touches every case alike
		for _, c := range cases {
			// Each case's server stops before the next starts: one left
			// running (its shadow worker still at its backlog) would take
			// the next one's cores.
			sc := &scope{B: b}
			repo := testenv.ModelRepo(b, map[string]string{"iris/1/model.onnx": "@" + modelFile, "iris/2/model.onnx": "@" + modelFile, "iris/config.yaml": c.config})
			s, nc := benchServer(sc, repo, "--shadows", c.shadows)
			elapsed, _ := load(b, s, nc, "iris", bodies, nil, 32)
			rate := float64(len(bodies)) / elapsed.Seconds()
			p99 := pacedP99(b, s, nc, bodies[:1500], 200)
			rates[c.name] = append(rates[c.name], rate)
			p99s[c.name] = append(p99s[c.name], float64(p99.Microseconds())/1000)
			b.Logf("round %d, %s: %.0f jobs/s saturated, p99 %v at 200 jobs/s", round+1, c.name, rate, p99)
			sc.close()
		}
	}
	rate := func(name string) float64 { return mean(rates[name]) }
	p99 := func(name string) float64 { return mean(p99s[name]) }
	b.ReportMetric(rate("shadow")/rate("none"), "jobs/s_shadow/none")
	b.ReportMetric(p99("shadow")/p99("none"), "p99_shadow/none")
	b.ReportMetric(rate("elsewhere")/rate("none"), "jobs/s_elsewhere/none")
	b.ReportMetric(p99("elsewhere")/p99("none"), "p99_elsewhere/none")
	b.ReportMetric(rate("none"), "jobs/s_none")
	b.ReportMetric(rate("elsewhere"), "jobs/s_elsewhere")
	b.ReportMetric(p99("none"), "p99_ms_none")
	b.ReportMetric(p99("elsewhere"), "p99_ms_elsewhere")
}

// scope is a benchmark whose Cleanup functions run when close is called
// rather than at its end.
type scope struct {
	*testing.B
	cleanups []func()
}

func (s *scope) Cleanup(f func()) { s.cleanups = append(s.cleanups, f) }

func (s *scope) close() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
	s.cleanups = nil
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

func mean(xs []float64) float64 {
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}
