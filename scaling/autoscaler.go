package scaling

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Queue reads a model's backlog; *jobs.Queue is one.
type Queue interface {
	Backlog(ctx context.Context, model string) (pending, inFlight int64, err error)
}

// scaleNoter is a Pool that keeps the scale decisions acted on, with
// their reasons, to show them (GET /v1/models, the console);
// *consumer.Fleet is one.
type scaleNoter interface {
	NoteScale(model string, from, to int, reason string)
}

// Pool runs replicas; *consumer.Fleet is one.
type Pool interface {
	Models() []string
	Replicas(model string) int
	Scale(model string, n int) error
	// Finished counts the jobs the model's replicas finished.
	Finished(model string) uint64
}

// AutoscalerOptions configure an Autoscaler. Queue and Pool are required.
type AutoscalerOptions struct {
	Queue  Queue
	Pool   Pool
	Policy Policy
	// Interval is how often the queue is read. Default 2s.
	Interval   time.Duration
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Autoscaler drives a Pool from its models' queues, in one process: the
// in-process half of scaling (inferq scaler is the other, for KEDA).
type Autoscaler struct {
	opts    AutoscalerOptions
	models  map[string]*modelState
	metrics *Metrics
}

type modelState struct {
	d        *Decider
	lastAt   time.Time
	backlog  int64
	finished uint64
	arrival  float64 // jobs/s, smoothed
	perRep   float64 // jobs/s per replica, smoothed
}

// Metrics are the scaling metrics, shared by the autoscaler and inferq
// scaler.
type Metrics struct {
	desired    *prometheus.GaugeVec
	backlog    *prometheus.GaugeVec
	throughput *prometheus.GaugeVec
	events     *prometheus.CounterVec
}

// NewMetrics creates the scaling metrics and registers them on reg (nil:
// unregistered).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		desired: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inferq_desired_replicas", Help: "Replicas the scaling policy asks for, by model.",
		}, []string{"model"}),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inferq_scaling_backlog_jobs", Help: "Jobs waiting plus in flight, as the scaler last read them, by model.",
		}, []string{"model"}),
		throughput: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inferq_replica_throughput_jobs_per_second", Help: "Jobs one replica finishes per second, measured, by model.",
		}, []string{"model"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_scale_events_total", Help: "Scale decisions acted on, by model and direction (up, down); the log has each reason.",
		}, []string{"model", "direction"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.desired, m.backlog, m.throughput, m.events} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register scaling metrics: %w", err)
			}
		}
	}
	return m, nil
}

// NewAutoscaler returns an Autoscaler.
func NewAutoscaler(opts AutoscalerOptions) (*Autoscaler, error) {
	if opts.Queue == nil || opts.Pool == nil {
		return nil, fmt.Errorf("scaling: Queue and Pool are required")
	}
	if err := opts.Policy.Validate(); err != nil {
		return nil, err
	}
	if opts.Interval <= 0 {
		opts.Interval = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := NewMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	return &Autoscaler{opts: opts, models: map[string]*modelState{}, metrics: m}, nil
}

// Run scales until ctx ends.
func (a *Autoscaler) Run(ctx context.Context) error {
	tickEvery(ctx, a.opts.Interval, a.Tick)
	return nil
}

// Tick reads every model's queue once and acts on the decisions.
func (a *Autoscaler) Tick(ctx context.Context, now time.Time) {
	for _, name := range a.opts.Pool.Models() {
		if ctx.Err() != nil {
			return
		}
		st := a.models[name]
		if st == nil {
			d, _ := NewDecider(a.opts.Policy) // validated in NewAutoscaler
			st = &modelState{d: d}
			a.models[name] = st
		}
		pending, inFlight, err := a.opts.Queue.Backlog(ctx, name)
		if err != nil {
			a.opts.Logger.Warn("autoscaler: reading the queue", "model", name, "err", err)
			continue
		}
		current := a.opts.Pool.Replicas(name)
		finished := a.opts.Pool.Finished(name)
		backlog := pending + inFlight
		if !st.lastAt.IsZero() {
			if dt := now.Sub(st.lastAt).Seconds(); dt > 0 {
				done := float64(finished - st.finished)
				arrived := max(0, float64(backlog-st.backlog)+done)
				st.arrival = smooth(st.arrival, arrived/dt)
				if current > 0 && done > 0 {
					st.perRep = smooth(st.perRep, done/dt/float64(current))
				}
			}
		}
		st.lastAt, st.backlog, st.finished = now, backlog, finished
		dec := st.d.Decide(Observation{At: now, Pending: pending, InFlight: inFlight, ArrivalRate: st.arrival, PerReplica: st.perRep, Current: current})
		a.metrics.desired.WithLabelValues(name).Set(float64(dec.Replicas))
		a.metrics.backlog.WithLabelValues(name).Set(float64(backlog))
		a.metrics.throughput.WithLabelValues(name).Set(st.perRep)
		if dec.Replicas == current {
			continue
		}
		dir := "up"
		if dec.Replicas < current {
			dir = "down"
		}
		began := time.Now()
		if err := a.opts.Pool.Scale(name, dec.Replicas); err != nil {
			a.opts.Logger.Error("autoscaler: scaling", "model", name, "to", dec.Replicas, "err", err)
			continue
		}
		a.metrics.events.WithLabelValues(name, dir).Inc()
		a.opts.Logger.Info("scaled", "model", name, "from", current, "to", dec.Replicas, "reason", dec.Reason, "took", time.Since(began))
		if n, ok := a.opts.Pool.(scaleNoter); ok {
			n.NoteScale(name, current, dec.Replicas, dec.Reason)
		}
	}
}

// smooth is an exponentially weighted average, snapping to zero when what
// is left is noise.
func smooth(old, x float64) float64 {
	if old == 0 {
		return x
	}
	v := 0.7*old + 0.3*x
	if v < idleRate {
		return 0
	}
	return v
}
