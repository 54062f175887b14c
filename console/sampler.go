// Package console is inferq's operator console: a small front end served
// from the binary (embedded, works offline) that reads the API with the
// operator's token, and the live figures it shows. While a console is
// open, a Sampler follows every model's finished jobs and reads the
// queues every few seconds, keeping a bounded history per model that the
// console's stream pushes to every open page at once: no page polls the
// server, and nobody watching costs nothing.
package console

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
)

// Queue is what the sampler reads of the queue; *jobs.Queue is one.
type Queue interface {
	Backlog(ctx context.Context, model string) (pending, inFlight int64, err error)
	FollowAllResults(ctx context.Context, ready func(), fn func(data []byte) error) error
}

// Options configure a Sampler. Queue and Models are required.
type Options struct {
	Queue Queue
	// Models lists the models served now.
	Models func() []string
	// Gatherer, when set, adds what this process's metrics say (batch
	// sizes and replicas, where the workers run in the API's process).
	Gatherer prometheus.Gatherer
	// Every is the sampling interval. Default 2s.
	Every time.Duration
	// History is how many samples a model keeps. Default 300 (ten
	// minutes at 2s).
	History int
	// Recent is how many finished jobs a model keeps for the jobs view.
	// Default 200.
	Recent int
	Logger *slog.Logger
}

// Point is one sample of a model.
type Point struct {
	At       time.Time `json:"t"`
	Pending  int64     `json:"pending"`
	InFlight int64     `json:"in_flight"`
	// Finished per second since the last sample, by status, and Done the
	// jobs finished since the last sample, whatever their status.
	Succeeded float64 `json:"succeeded"`
	Failed    float64 `json:"failed"`
	Done      int     `json:"done"`
	// Latency percentiles, in seconds, from acceptance to the final
	// status, of the jobs finished since the last sample; 0 when none.
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	// BatchRows is the mean rows per batch since the last sample, and
	// Replicas the workers running, where this process's metrics say.
	BatchRows float64 `json:"batch_rows,omitempty"`
	Replicas  float64 `json:"replicas,omitempty"`
}

// Sampler keeps each model's recent figures and finished jobs. Run it
// with Run; it is safe for concurrent use.
type Sampler struct {
	opts Options

	mu      sync.Mutex
	points  map[string][]Point
	recent  map[string][]jobs.Announcement
	pending map[string]*window // jobs finished since the last sample
	batches map[string][2]float64
	subs    map[chan struct{}]struct{}
	// lastWatched is when the last console closed.
	lastWatched time.Time
}

type window struct {
	succeeded, failed, done int
	latencies               []float64
}

// NewSampler returns a Sampler.
func NewSampler(opts Options) *Sampler {
	if opts.Every <= 0 {
		opts.Every = 2 * time.Second
	}
	if opts.History <= 0 {
		opts.History = 300
	}
	if opts.Recent <= 0 {
		opts.Recent = 200
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Sampler{opts: opts, points: map[string][]Point{}, recent: map[string][]jobs.Announcement{},
		pending: map[string]*window{}, batches: map[string][2]float64{}, subs: map[chan struct{}]struct{}{}}
}

// idleAfter is how long the sampler goes on after the last console
// closed: a page reloaded finds its history.
const idleAfter = time.Minute

// Run samples until ctx ends, while a console is open (and a minute
// after): following every model's results costs a delivery per job, which
// a process nobody watches should not pay.
func (s *Sampler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	var stopFollowing context.CancelFunc
	defer func() {
		if stopFollowing != nil {
			stopFollowing()
		}
	}()
	t := time.NewTicker(s.opts.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			s.mu.Lock()
			watched := len(s.subs) > 0 || now.Sub(s.lastWatched) < idleAfter
			s.mu.Unlock()
			switch {
			case watched && stopFollowing == nil:
				stopFollowing = s.startFollowing(ctx, &wg)
			case !watched && stopFollowing != nil:
				stopFollowing()
				stopFollowing = nil
				s.mu.Lock()
				clear(s.points)
				clear(s.recent)
				clear(s.pending)
				s.mu.Unlock()
			}
			if watched {
				s.sample(ctx, now)
			}
		}
	}
}

// startFollowing starts follow in wg, and returns, once it follows (or
// after a few seconds), what stops it: the first sample then counts every
// job finished after it.
func (s *Sampler) startFollowing(ctx context.Context, wg *sync.WaitGroup) context.CancelFunc {
	fctx, cancel := context.WithCancel(ctx)
	ready := make(chan struct{})
	var once sync.Once
	wg.Go(func() { s.follow(fctx, func() { once.Do(func() { close(ready) }) }) })
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
	case <-ctx.Done():
	}
	return cancel
}

// follow reads every model's finished jobs until ctx ends.
func (s *Sampler) follow(ctx context.Context, ready func()) {
	for ctx.Err() == nil {
		err := s.opts.Queue.FollowAllResults(ctx, ready, s.finished)
		if ctx.Err() == nil {
			s.opts.Logger.Warn("console: following results", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}
}

func (s *Sampler) finished(data []byte) error {
	var a jobs.Announcement
	if json.Unmarshal(data, &a) != nil || a.Model == "" {
		return nil
	}
	a.Response = nil // the jobs view reads results on demand
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.pending[a.Model]
	if w == nil {
		w = &window{}
		s.pending[a.Model] = w
	}
	w.done++
	switch a.Status {
	case record.Succeeded:
		w.succeeded++
	case record.Failed, record.Expired:
		w.failed++
	}
	if a.FinishedAt != nil && !a.CreatedAt.IsZero() && len(w.latencies) < 100000 {
		w.latencies = append(w.latencies, a.FinishedAt.Sub(a.CreatedAt).Seconds())
	}
	r := append(s.recent[a.Model], a)
	if len(r) > s.opts.Recent {
		r = slices.Delete(r, 0, len(r)-s.opts.Recent)
	}
	s.recent[a.Model] = r
	return nil
}

func (s *Sampler) sample(ctx context.Context, now time.Time) {
	rows, replicas := s.fromMetrics()
	models := s.opts.Models()
	points := map[string]Point{}
	for _, m := range models {
		p := Point{At: now.UTC()}
		p.Pending, p.InFlight, _ = s.opts.Queue.Backlog(ctx, m)
		points[m] = p
	}
	secs := s.opts.Every.Seconds()
	s.mu.Lock()
	for _, m := range models {
		p := points[m]
		if w := s.pending[m]; w != nil {
			p.Succeeded, p.Failed, p.Done = float64(w.succeeded)/secs, float64(w.failed)/secs, w.done
			p.P50, p.P90, p.P99 = quantile(w.latencies, 0.5), quantile(w.latencies, 0.9), quantile(w.latencies, 0.99)
		}
		if r, ok := rows[m]; ok {
			prev := s.batches[m]
			if n := r[1] - prev[1]; n > 0 {
				p.BatchRows = (r[0] - prev[0]) / n
			}
			s.batches[m] = r
		}
		p.Replicas = replicas[m]
		h := append(s.points[m], p)
		if len(h) > s.opts.History {
			h = slices.Delete(h, 0, len(h)-s.opts.History)
		}
		s.points[m] = h
	}
	clear(s.pending)
	for m := range s.points {
		if !slices.Contains(models, m) {
			delete(s.points, m)
			delete(s.recent, m)
		}
	}
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	s.mu.Unlock()
}

// fromMetrics reads, from this process's metrics, the rows and batches
// counted per model (inferq_batch_size's sum and count) and the replicas
// running.
func (s *Sampler) fromMetrics() (rows map[string][2]float64, replicas map[string]float64) {
	rows, replicas = map[string][2]float64{}, map[string]float64{}
	if s.opts.Gatherer == nil {
		return
	}
	fams, err := s.opts.Gatherer.Gather()
	if err != nil {
		return
	}
	model := func(m *dto.Metric) string {
		for _, l := range m.GetLabel() {
			if l.GetName() == "model" {
				return l.GetValue()
			}
		}
		return ""
	}
	for _, f := range fams {
		switch f.GetName() {
		case "inferq_batch_size":
			for _, m := range f.GetMetric() {
				h := m.GetHistogram()
				rows[model(m)] = [2]float64{h.GetSampleSum(), float64(h.GetSampleCount())}
			}
		case "inferq_replicas":
			for _, m := range f.GetMetric() {
				replicas[model(m)] = m.GetGauge().GetValue()
			}
		}
	}
	return
}

func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// Figures are the recent samples of the models allowed.
func (s *Sampler) Figures(allowed func(model string) bool) map[string][]Point {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]Point{}
	for m, h := range s.points {
		if allowed(m) {
			out[m] = slices.Clone(h)
		}
	}
	return out
}

// Recent are a model's last finished jobs, newest first, of status when
// not empty.
func (s *Sampler) Recent(model, status string) []jobs.Announcement {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []jobs.Announcement
	r := s.recent[model]
	for i := len(r) - 1; i >= 0; i-- {
		if status == "" || string(r[i].Status) == status {
			out = append(out, r[i])
		}
	}
	return out
}

// Subscribe returns a channel told of each new sample, and a function
// that stops it. A slow reader misses samples, never blocks the sampler.
func (s *Sampler) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.lastWatched = time.Now()
		s.mu.Unlock()
	}
}
