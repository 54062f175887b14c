package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
)

// Fleet runs a process's workers: for each model, some number of
// replicas (Workers sharing the model's queue), kept in line with the model
// repository as it changes and scaled by Scale. A new model gets
// Initial replicas; a model whose files changed gets new replicas that
// load their sessions before the old ones drain; a model that is gone has
// its replicas drained and stopped. Jobs wait in the queue meanwhile; none
// is lost.
type Fleet struct {
	tmpl    Options
	only    []string
	initial int

	ctx    context.Context
	cancel context.CancelFunc
	failed chan error

	mu       sync.Mutex
	families map[string]*model.Family
	// refused are the models this fleet cannot run (their provider
	// cannot be attached here), with the family tried and why.
	refused  map[string]refusal
	replicas map[string][]*running
	scaled   map[string]*jobs.ScaleNote
	finished map[string]*atomic.Uint64
	wg       sync.WaitGroup
	// shadowsOf and shadows: the shadow versions of each model, and a
	// worker running each (see Options.Shadow), by model and version.
	shadowsOf   func(*model.Family) []int64
	shadowsOnly bool
	shadows     map[shadowKey]*running
}

type shadowKey struct {
	model   string
	version int64
}

type running struct {
	fam    *model.Family
	w      *Worker
	cancel context.CancelFunc
	done   chan struct{}
}

type refusal struct {
	fam *model.Family
	err error
}

// FleetOptions configure a Fleet.
type FleetOptions struct {
	// Only, when not empty, limits the fleet to the models named.
	Only []string
	// Initial is the replicas a model starts with. Default 1; 0 starts
	// none until Scale asks.
	Initial *int
	// ShadowsOf, when set, gives the shadow versions of a model (its
	// traffic split's): the fleet runs a worker for each, on the
	// version's own queue (Options.Shadow), kept in line by Apply and
	// Reshadow.
	ShadowsOf func(*model.Family) []int64
	// ShadowsOnly runs the shadow versions' workers alone: no replica of
	// the models themselves (a machine for shadows).
	ShadowsOnly bool
}

// NewFleet returns a fleet whose workers take opts (Family aside).
func NewFleet(opts Options, fo FleetOptions) *Fleet {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	initial := 1
	if fo.Initial != nil {
		initial = *fo.Initial
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Fleet{
		tmpl: opts, only: fo.Only, initial: initial, ctx: ctx, cancel: cancel, failed: make(chan error, 1),
		families: map[string]*model.Family{}, refused: map[string]refusal{}, scaled: map[string]*jobs.ScaleNote{}, replicas: map[string][]*running{}, finished: map[string]*atomic.Uint64{},
		shadowsOf: fo.ShadowsOf, shadowsOnly: fo.ShadowsOnly, shadows: map[shadowKey]*running{},
	}
}

// Apply brings the workers in line with repo. It returns once every new
// replica has loaded its sessions and every replaced or removed one has
// drained. A model that fails to load keeps its old replicas, if any.
func (f *Fleet) Apply(repo *model.Repository) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	want := map[string]*model.Family{}
	for _, fam := range repo.Families() {
		// A pipeline has no worker of its own: its model steps run on
		// their models' workers.
		if d := fam.Default(); d != nil && d.Pipeline == nil && (len(f.only) == 0 || slices.Contains(f.only, fam.Name)) {
			want[fam.Name] = fam
		}
	}
	var errs []error
	for name, fam := range want {
		if f.families[name] == fam || f.refused[name].fam == fam {
			continue
		}
		_, known := f.families[name]
		old := f.replicas[name]
		n := len(old)
		if !known {
			n = f.initial
		}
		if f.shadowsOnly {
			n = 0
		}
		var fresh []*running
		var err error
		for range n {
			var r *running
			if r, err = f.start(fam); err != nil {
				break
			}
			fresh = append(fresh, r)
		}
		if err != nil {
			for _, r := range fresh {
				r.stop()
			}
			if errors.Is(err, onnx.ErrProviderUnavailable) {
				// Not for this worker: others (a GPU worker, or one
				// whose config falls back) serve the model; this one
				// says why it does not, and serves the rest.
				f.tmpl.Logger.Error("model not served by this worker", "model", name, "err", err)
				f.refused[name] = refusal{fam: fam, err: err}
				for _, r := range old {
					r.stop()
				}
				delete(f.replicas, name)
				delete(f.families, name)
				continue
			}
			errs = append(errs, err)
			continue
		}
		delete(f.refused, name)
		f.families[name] = fam
		f.replicas[name] = fresh
		if known {
			f.tmpl.Logger.Info("model changed; new replicas took over", "model", name, "replicas", n)
		}
		for _, r := range old {
			r.stop()
		}
	}
	for name := range f.refused {
		if _, ok := want[name]; !ok {
			delete(f.refused, name)
		}
	}
	for name, rs := range f.replicas {
		if _, ok := want[name]; !ok {
			f.tmpl.Logger.Info("model removed; stopping its replicas", "model", name)
			for _, r := range rs {
				r.stop()
			}
			delete(f.replicas, name)
			delete(f.families, name)
		}
	}
	errs = append(errs, f.reshadow())
	f.observe()
	return errors.Join(errs...)
}

// Reshadow brings the shadow workers in line with the models' shadow
// versions now (ShadowsOf): after a traffic split changed.
func (f *Fleet) Reshadow() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reshadow()
}

// reshadow starts a worker for each shadow version wanted and not run
// (or run for an older load of its model), and stops those no longer
// wanted. A shadow worker loads its version alone. f.mu is held.
func (f *Fleet) reshadow() error {
	if f.shadowsOf == nil {
		return nil
	}
	want := map[shadowKey]*model.Model{}
	for name, fam := range f.families {
		for _, v := range f.shadowsOf(fam) {
			if m, err := fam.Lookup(v); err == nil && v > 0 {
				want[shadowKey{name, v}] = m
			}
		}
	}
	var errs []error
	for k, r := range f.shadows {
		if m, ok := want[k]; !ok || r.fam.Versions[0] != m {
			f.tmpl.Logger.Info("stopping a shadow version's worker", "model", k.model, "version", k.version)
			r.stop()
			delete(f.shadows, k)
		}
	}
	for k, m := range want {
		if _, ok := f.shadows[k]; ok {
			continue
		}
		fam := f.families[k.model]
		one := &model.Family{Name: fam.Name, Versions: []*model.Model{m}, Config: fam.Config}
		r, err := f.startWorker(one, k.version)
		if err != nil {
			errs = append(errs, fmt.Errorf("shadow version %d of %s: %w", k.version, k.model, err))
			continue
		}
		f.tmpl.Logger.Info("running a shadow version", "model", k.model, "version", k.version)
		f.shadows[k] = r
	}
	return errors.Join(errs...)
}

// Scale runs n replicas of model: new ones load their sessions before
// Scale returns, extra ones drain (finish their batches, hand back the
// rest) and stop, returning their memory.
func (f *Fleet) Scale(name string, n int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fam, ok := f.families[name]
	if !ok {
		return fmt.Errorf("model %s is not served by this fleet", name)
	}
	rs := f.replicas[name]
	for len(rs) < n {
		r, err := f.start(fam)
		if err != nil {
			f.replicas[name] = rs
			f.observe()
			return err
		}
		rs = append(rs, r)
	}
	for len(rs) > n {
		last := rs[len(rs)-1]
		rs = rs[:len(rs)-1]
		last.stop()
	}
	f.replicas[name] = rs
	f.observe()
	return nil
}

// Replicas is how many replicas of model run.
func (f *Fleet) Replicas(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.replicas[name])
}

// Finished counts the jobs the model's replicas have finished in this
// process, for throughput.
func (f *Fleet) Finished(name string) uint64 {
	f.mu.Lock()
	c := f.finished[name]
	f.mu.Unlock()
	if c == nil {
		return 0
	}
	return c.Load()
}

// observe updates the replica gauges. f.mu is held.
func (f *Fleet) observe() {
	if f.tmpl.Metrics == nil {
		return
	}
	for name := range f.families {
		f.tmpl.Metrics.replicas.WithLabelValues(name).Set(float64(len(f.replicas[name])))
	}
}

// start creates a replica of fam, loads its sessions and runs it. f.mu is
// held.
func (f *Fleet) start(fam *model.Family) (*running, error) {
	return f.startWorker(fam, 0)
}

// startWorker starts a worker of fam, or with shadow set, of that shadow
// version's runs. f.mu is held.
func (f *Fleet) startWorker(fam *model.Family, shadow int64) (*running, error) {
	began := time.Now()
	opts := f.tmpl
	opts.Family, opts.Shadow = fam, shadow
	if shadow == 0 { // a shadow's runs are no throughput of the model's
		c := f.finished[fam.Name]
		if c == nil {
			c = &atomic.Uint64{}
			f.finished[fam.Name] = c
		}
		opts.finished = c
	}
	w, err := NewWorker(opts)
	if err != nil {
		return nil, err
	}
	if err := w.Load(); err != nil {
		return nil, err
	}
	if f.tmpl.Metrics != nil {
		f.tmpl.Metrics.coldStart.WithLabelValues(fam.Name).Observe(time.Since(began).Seconds())
	}
	ctx, cancel := context.WithCancel(f.ctx)
	r := &running{fam: fam, w: w, cancel: cancel, done: make(chan struct{})}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		defer close(r.done)
		if err := w.Run(ctx); err != nil {
			select {
			case f.failed <- fmt.Errorf("worker of model %s: %w", fam.Name, err):
			default:
			}
		}
	}()
	return r, nil
}

func (r *running) stop() {
	r.cancel()
	<-r.done
}

// Failed receives the error of a worker that could not run (its queue
// could not be reached when it started).
func (f *Fleet) Failed() <-chan error { return f.failed }

// Models are the names of the models the fleet serves, sorted.
func (f *Fleet) Models() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for name := range f.families {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// Stop drains and stops every worker and returns when all have.
func (f *Fleet) Stop() {
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	clear(f.replicas)
	clear(f.shadows)
	f.observe()
	f.mu.Unlock()
}

// Status says what the fleet serves of each model and where, and why it
// serves none of a model it cannot run, as worker is its process's name:
// one status per model, sorted by model.
func (f *Fleet) Status(worker string) []jobs.WorkerStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now().UTC()
	var out []jobs.WorkerStatus
	for name, fam := range f.families {
		st := jobs.WorkerStatus{Model: name, Worker: worker, Replicas: len(f.replicas[name]), UpdatedAt: now}
		// Every replica of a model loads the same family with the same
		// options: the first speaks for all; with none running (scaled
		// to zero) the settings are still those a replica would take.
		policy, instances := f.tmpl.Overrides.apply(fam.Default().Config)
		if rs := f.replicas[name]; len(rs) > 0 {
			policy, instances = rs[0].w.Settings()
			for _, p := range rs[0].w.Placements() {
				st.Versions = append(st.Versions, jobs.VersionPlacement{Version: strconv.FormatInt(p.Version, 10), Device: p.Device, Fallback: p.Fallback})
			}
		}
		st.MaxBatchSize, st.MaxQueueDelay, st.Instances = policy.MaxBatchSize, policy.MaxQueueDelay.String(), instances
		st.LastScale = f.scaled[name]
		out = append(out, st)
	}
	for name, r := range f.refused {
		out = append(out, jobs.WorkerStatus{Model: name, Worker: worker, Error: r.err.Error(), UpdatedAt: now})
	}
	slices.SortFunc(out, func(a, b jobs.WorkerStatus) int { return strings.Compare(a.Model, b.Model) })
	return out
}

// StatusSink keeps worker statuses where the API reads them; *jobs.Queue
// is one.
type StatusSink interface {
	PutWorkerStatus(ctx context.Context, st jobs.WorkerStatus) error
	DeleteWorkerStatus(ctx context.Context, model, worker string) error
}

// Report puts the fleet's status in sink every interval (well within
// jobs.WorkerStatusTTL) until ctx ends, then deletes what it put, so that
// the API shows which process serves which model where.
func (f *Fleet) Report(ctx context.Context, sink StatusSink, worker string, interval time.Duration) error {
	put := map[string]bool{}
	report := func() {
		seen := map[string]bool{}
		for _, st := range f.Status(worker) {
			seen[st.Model] = true
			if err := sink.PutWorkerStatus(ctx, st); err != nil {
				if ctx.Err() == nil {
					f.tmpl.Logger.Warn("could not report worker status", "model", st.Model, "err", err)
				}
				continue
			}
			put[st.Model] = true
		}
		for m := range put {
			if !seen[m] {
				_ = sink.DeleteWorkerStatus(ctx, m, worker)
				delete(put, m)
			}
		}
	}
	report()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			for m := range put {
				_ = sink.DeleteWorkerStatus(dctx, m, worker)
			}
			return nil
		case <-t.C:
			report()
		}
	}
}

// NoteScale keeps the last scale decision acted on for model, for Status.
func (f *Fleet) NoteScale(model string, from, to int, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scaled[model] = &jobs.ScaleNote{From: from, To: to, Reason: reason, At: time.Now().UTC()}
}
