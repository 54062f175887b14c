package consumer

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// gatedStore is a result store whose writes wait until the gate opens,
// and which records what they wrote.
type gatedStore struct {
	resultWriter
	gate chan struct{}
	mu   sync.Mutex
	puts [][]byte
}

func (s *gatedStore) Put(ctx context.Context, key string, r io.Reader) error {
	<-s.gate
	b, err := io.ReadAll(r)
	s.mu.Lock()
	s.puts = append(s.puts, b)
	s.mu.Unlock()
	return err
}

// TestCaptureIsBounded: with every job captured and a store that does not
// keep up, the captured lines held in memory stay within their bound,
// what cannot be held is dropped and counted, lines are written by size
// (not only each interval), and every line kept is written once the
// store answers.
func TestCaptureIsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	store := &gatedStore{gate: make(chan struct{})}
	w := &Worker{opts: Options{Metrics: metrics, Results: store}, name: "m", log: slog.New(slog.DiscardHandler)}
	m := newWatcher(w)
	off := false
	mod := &model.Model{Name: "m", Version: 1, Config: model.Config{Statistics: &off, Capture: &model.Capture{Rate: 1}}}
	// A job of a 256 KiB input: a captured line of about 0.9 MB of JSON.
	req := &tensor.Request{Inputs: []tensor.Tensor{{Name: "x", Datatype: tensor.Uint8, Shape: []int64{1, 256 << 10}, Data: bytes.Repeat([]byte{7}, 256<<10)}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.run(ctx, time.Hour)
	}()
	const jobsN = 200 // about 180 MB captured, far past the bound
	maxHeld := 0
	for i := range jobsN {
		it := &item{model: mod, job: &jobs.Job{ID: "job", Model: "m", Request: req}}
		m.observe([]*item{it}, [][]tensor.Tensor{nil}, []*record.ResultRef{{Key: "k"}}, [][]byte{[]byte(`{}`)})
		if i%10 == 0 {
			m.mu.Lock()
			maxHeld = max(maxHeld, m.held)
			m.mu.Unlock()
		}
	}
	// Let run take what was observed before opening the store.
	for len(m.finished) > 0 {
		time.Sleep(time.Millisecond)
	}
	m.mu.Lock()
	maxHeld = max(maxHeld, m.held)
	m.mu.Unlock()
	close(store.gate)
	cancel()
	<-done
	if maxHeld > captureMaxBytes {
		t.Errorf("held %d bytes of captured lines, past the bound of %d", maxHeld, captureMaxBytes)
	}
	dropped := testutil.ToFloat64(metrics.captureDropped.WithLabelValues("m"))
	lines := 0
	for _, p := range store.puts {
		lines += bytes.Count(p, []byte("\n"))
		if len(p) > captureMaxBytes {
			t.Errorf("an object of %d bytes, past the bound of %d", len(p), captureMaxBytes)
		}
	}
	if dropped == 0 || lines+int(dropped) != jobsN {
		t.Errorf("%d lines written and %v dropped, of %d captured; want some dropped and none lost otherwise", lines, dropped, jobsN)
	}
	if len(store.puts) < 2 {
		t.Errorf("%d objects written: lines were not written by size", len(store.puts))
	}
	if !strings.Contains(string(store.puts[0]), `"job_id":"job"`) {
		t.Errorf("a captured line: %.200s", store.puts[0])
	}
	t.Logf("%d objects, %d lines written, %v dropped, at most %d MB held", len(store.puts), lines, dropped, maxHeld>>20)
}
