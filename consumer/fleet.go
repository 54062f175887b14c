package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/inferq/inferq/model"
)

// Fleet runs a process's workers, one per model, and keeps them in line
// with the model repository as it changes: a new model gets a worker, a
// model whose files changed gets a new worker that loads its sessions
// before the old one drains, and a model that is gone has its worker
// drained and stopped. Jobs wait in the queue meanwhile; none is lost.
type Fleet struct {
	tmpl Options
	only []string

	ctx    context.Context
	cancel context.CancelFunc
	failed chan error

	mu      sync.Mutex
	running map[string]*running
	wg      sync.WaitGroup
}

type running struct {
	fam    *model.Family
	cancel context.CancelFunc
	done   chan struct{}
}

// NewFleet returns a fleet whose workers take opts (Family aside). only,
// when not empty, limits it to the models named.
func NewFleet(opts Options, only []string) *Fleet {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Fleet{tmpl: opts, only: only, ctx: ctx, cancel: cancel, failed: make(chan error, 1), running: map[string]*running{}}
}

// Apply brings the workers in line with repo. It returns once every new
// worker has loaded its sessions and every replaced or removed worker has
// drained. A model that fails to load keeps its old worker, if it had one.
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
		old := f.running[name]
		if old != nil && old.fam == fam {
			continue
		}
		r, err := f.start(fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		f.running[name] = r
		if old != nil {
			f.tmpl.Logger.Info("model changed; new worker took over", "model", name)
			old.stop()
		}
	}
	for name, r := range f.running {
		if _, ok := want[name]; !ok {
			f.tmpl.Logger.Info("model removed; stopping its worker", "model", name)
			r.stop()
			delete(f.running, name)
		}
	}
	return errors.Join(errs...)
}

// start creates a worker for fam, loads its sessions and runs it.
func (f *Fleet) start(fam *model.Family) (*running, error) {
	opts := f.tmpl
	opts.Family = fam
	w, err := NewWorker(opts)
	if err != nil {
		return nil, err
	}
	if err := w.Load(); err != nil {
		return nil, err
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

// Models are the names of the models with a running worker, sorted.
func (f *Fleet) Models() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for name := range f.running {
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
	clear(f.running)
	f.mu.Unlock()
}
