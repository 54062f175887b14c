package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/inferq/inferq/model"
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
	replicas map[string][]*running
	finished map[string]*atomic.Uint64
	wg       sync.WaitGroup
}

type running struct {
	fam    *model.Family
	cancel context.CancelFunc
	done   chan struct{}
}

// FleetOptions configure a Fleet.
type FleetOptions struct {
	// Only, when not empty, limits the fleet to the models named.
	Only []string
	// Initial is the replicas a model starts with. Default 1; 0 starts
	// none until Scale asks.
	Initial *int
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
		families: map[string]*model.Family{}, replicas: map[string][]*running{}, finished: map[string]*atomic.Uint64{},
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
		if fam.Default() != nil && (len(f.only) == 0 || slices.Contains(f.only, fam.Name)) {
			want[fam.Name] = fam
		}
	}
	var errs []error
	for name, fam := range want {
		if f.families[name] == fam {
			continue
		}
		_, known := f.families[name]
		old := f.replicas[name]
		n := len(old)
		if !known {
			n = f.initial
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
			errs = append(errs, err)
			continue
		}
		f.families[name] = fam
		f.replicas[name] = fresh
		if known {
			f.tmpl.Logger.Info("model changed; new replicas took over", "model", name, "replicas", n)
		}
		for _, r := range old {
			r.stop()
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
	f.observe()
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
	began := time.Now()
	opts := f.tmpl
	opts.Family = fam
	c := f.finished[fam.Name]
	if c == nil {
		c = &atomic.Uint64{}
		f.finished[fam.Name] = c
	}
	opts.finished = c
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
	r := &running{fam: fam, cancel: cancel, done: make(chan struct{})}
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
	f.observe()
	f.mu.Unlock()
}
