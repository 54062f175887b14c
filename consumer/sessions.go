package consumer

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
)

// Overrides are a worker's own batch settings, for workers of one model
// that differ: a GPU worker wants larger batches than a CPU one on the
// same queue. Zero fields keep the model's config.
type Overrides struct {
	MaxBatchSize  int
	MaxQueueDelay time.Duration
	Instances     int
}

// apply returns the batching policy and instances of a model's config
// with the overrides over it. Preferred batch sizes past an overridden
// max batch size are dropped.
func (o Overrides) apply(c model.Config) (batching.Policy, int) {
	p := batching.Policy{MaxBatchSize: c.MaxBatchSize, MaxQueueDelay: c.MaxQueueDelay, PreferredBatchSizes: c.PreferredBatchSizes}
	instances := c.Instances
	if o.MaxBatchSize > 0 {
		p.MaxBatchSize = o.MaxBatchSize
		p.PreferredBatchSizes = slices.DeleteFunc(slices.Clone(p.PreferredBatchSizes), func(n int) bool { return n > o.MaxBatchSize })
	}
	if o.MaxQueueDelay > 0 {
		p.MaxQueueDelay = o.MaxQueueDelay
	}
	if o.Instances > 0 {
		instances = o.Instances
	}
	return p, instances
}

// Placement is where a worker runs a model version's sessions.
type Placement struct {
	Version int64
	// Device is where they run: "cpu", "cuda:0", "tensorrt:1".
	Device string
	// Fallback, when set, is why they run on the CPU although the config
	// asks for a GPU (its fallback: cpu).
	Fallback string
}

// Load creates the ONNX Runtime sessions of every version, on the
// device the worker's Device or each version's config names, so that a
// caller can have a worker ready before it takes over from another. Run
// calls it when it has not been called. A provider that cannot be
// attached fails the load with onnx.ErrProviderUnavailable, unless the
// version's config falls back to the CPU.
func (w *Worker) Load() error {
	w.sessions = map[int64]*onnx.Session{}
	w.runner.sessions = map[int64]session{}
	w.placements = nil
	for _, m := range w.opts.Family.Versions {
		p := m.Config.Provider(w.opts.Device)
		opts := onnx.SessionOptions{IntraOpThreads: m.Config.IntraOpThreads, InterOpThreads: m.Config.InterOpThreads, Spinning: m.Config.Spinning, Provider: p}
		sig := onnx.Signature{Inputs: m.Inputs, Outputs: m.Outputs}
		place := Placement{Version: m.Version, Device: p.String()}
		s, err := w.opts.Runtime.NewSession(m.Path, sig, opts)
		if errors.Is(err, onnx.ErrProviderUnavailable) && m.Config.Fallback == onnx.ProviderCPU {
			w.log.Warn("model runs on the CPU: its provider cannot be attached here, and its config falls back", "version", m.Version, "provider", p.String(), "err", err)
			place = Placement{Version: m.Version, Device: onnx.ProviderCPU, Fallback: err.Error()}
			opts.Provider = onnx.Provider{}
			s, err = w.opts.Runtime.NewSession(m.Path, sig, opts)
		}
		if err != nil {
			w.unload()
			return fmt.Errorf("model %s version %d: %w", w.name, m.Version, err)
		}
		w.sessions[m.Version] = s
		w.runner.sessions[m.Version] = s
		w.placements = append(w.placements, place)
	}
	return nil
}

// Placements says where each version's sessions run, once loaded.
func (w *Worker) Placements() []Placement { return slices.Clone(w.placements) }

// Settings are the batch settings the worker runs with: its model's, as
// its overrides change them.
func (w *Worker) Settings() (policy batching.Policy, instances int) { return w.policy, w.instances }

func (w *Worker) unload() {
	for v, s := range w.sessions {
		s.Close()
		delete(w.sessions, v)
		delete(w.runner.sessions, v)
	}
}
