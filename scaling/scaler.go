package scaling

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"
)

// ScalerOptions configure a Scaler. Queue and Models are required.
type ScalerOptions struct {
	Queue Queue
	// Models lists the models to decide for, each time.
	Models func(ctx context.Context) ([]string, error)
	Policy Policy
	// Interval is how often the queue is read. Default 5s.
	Interval time.Duration
	Metrics  *Metrics
	Logger   *slog.Logger
}

// Scaler decides replicas for workers it does not run (those of other
// processes, other machines, Kubernetes deployments) and publishes the
// decisions: as Prometheus gauges, and as JSON that KEDA's metrics-api
// scaler reads. It takes its own last decision as the current count.
type Scaler struct {
	opts ScalerOptions

	mu     sync.Mutex
	states map[string]*scalerState
}

type scalerState struct {
	d       *Decider
	last    Decision
	pending int64
	flight  int64
	at      time.Time
}

// NewScaler returns a Scaler.
func NewScaler(opts ScalerOptions) (*Scaler, error) {
	if opts.Queue == nil || opts.Models == nil {
		return nil, errors.New("scaling: Queue and Models are required")
	}
	if err := opts.Policy.Validate(); err != nil {
		return nil, err
	}
	if opts.Interval <= 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Metrics == nil {
		opts.Metrics, _ = NewMetrics(nil)
	}
	return &Scaler{opts: opts, states: map[string]*scalerState{}}, nil
}

// Run decides every Interval until ctx ends.
func (s *Scaler) Run(ctx context.Context) error {
	tickEvery(ctx, s.opts.Interval, s.Tick)
	return nil
}

// tickEvery calls tick at once and then every interval, until ctx ends.
func tickEvery(ctx context.Context, interval time.Duration, tick func(context.Context, time.Time)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		tick(ctx, time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Tick reads every model's queue once and decides.
func (s *Scaler) Tick(ctx context.Context, now time.Time) {
	models, err := s.opts.Models(ctx)
	if err != nil {
		s.opts.Logger.Warn("scaler: listing models", "err", err)
		return
	}
	for _, name := range models {
		pending, flight, err := s.opts.Queue.Backlog(ctx, name)
		if err != nil {
			s.opts.Logger.Warn("scaler: reading the queue", "model", name, "err", err)
			continue
		}
		s.mu.Lock()
		st := s.states[name]
		if st == nil {
			d, _ := NewDecider(s.opts.Policy)
			st = &scalerState{d: d}
			s.states[name] = st
		}
		dec := st.d.Decide(Observation{At: now, Pending: pending, InFlight: flight, Current: st.last.Replicas})
		if dec.Replicas != st.last.Replicas {
			dir := "up"
			if dec.Replicas < st.last.Replicas {
				dir = "down"
			}
			s.opts.Metrics.events.WithLabelValues(name, dir).Inc()
			s.opts.Logger.Info("desired replicas", "model", name, "from", st.last.Replicas, "to", dec.Replicas, "reason", dec.Reason)
		}
		st.last, st.pending, st.flight, st.at = dec, pending, flight, now
		s.mu.Unlock()
		s.opts.Metrics.desired.WithLabelValues(name).Set(float64(dec.Replicas))
		s.opts.Metrics.backlog.WithLabelValues(name).Set(float64(pending + flight))
	}
}

// ModelScale is what the scaler publishes for a model.
type ModelScale struct {
	Desired  int       `json:"desired"`
	Pending  int64     `json:"pending"`
	InFlight int64     `json:"in_flight"`
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
}

// Handler serves the decisions: GET /v1/scaling (every model) and GET
// /v1/scaling/{model}, whose "desired" field KEDA's metrics-api scaler
// reads (valueLocation: desired, with targetValue 1).
func (s *Scaler) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/scaling", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		out := map[string]ModelScale{}
		for name, st := range s.states {
			out[name] = st.scale()
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{"models": out})
	})
	mux.HandleFunc("GET /v1/scaling/{model}", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		st := s.states[r.PathValue("model")]
		var ms ModelScale
		if st != nil {
			ms = st.scale()
		}
		names := make([]string, 0, len(s.states))
		for n := range s.states {
			names = append(names, n)
		}
		s.mu.Unlock()
		if st == nil {
			slices.Sort(names)
			writeJSON(w, http.StatusNotFound, map[string]any{"error": "model " + r.PathValue("model") + " has no queue the scaler knows of", "models": names})
			return
		}
		writeJSON(w, http.StatusOK, ms)
	})
	return mux
}

func (st *scalerState) scale() ModelScale {
	return ModelScale{Desired: st.last.Replicas, Pending: st.pending, InFlight: st.flight, Reason: st.last.Reason, At: st.at}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
