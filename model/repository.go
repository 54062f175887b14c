// Package model reads inferq's model repository, DIR/{model}/{version}/
// model.onnx with an optional DIR/{model}/config.yaml, and decides how each
// model is served: its inputs and outputs, whether requests may be batched,
// and its effective configuration.
package model

import (
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/tensor"
)

// Errors callers branch on.
var (
	ErrNotFound    = errors.New("model not found")
	ErrUnavailable = errors.New("model unavailable")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidName reports whether name can be a model name: letters, digits,
// '_', '-' and '.', starting with a letter or digit, at most 64
// characters. Names become NATS subjects (a '.' written '~' there) and
// storage keys, so nothing else is let through.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Model is one loaded version of a model.
type Model struct {
	Name    string
	Version int64
	Path    string
	Inputs  []onnx.IO
	Outputs []onnx.IO
	// Stackable says the model's metadata lets rows be stacked along the
	// first dimension: one job may carry several requests' rows. Batch
	// files pack their lines into jobs so, whatever the max batch size.
	Stackable bool
	// Batchable says a run may hold several requests: the model is
	// stackable and its max batch size is more than 1.
	Batchable bool
	// Batched says, per input in order, whether the input is stacked along
	// its first dimension when requests are batched. The others (scalars,
	// inputs with a fixed first dimension such as recurrent state laid out
	// [layers, batch, hidden]) are shared by a batch: only requests whose
	// values for them are identical run together.
	Batched []bool
	// Batching explains, for a model that is not batchable, why not.
	Batching string
	// Unchecked says why a model that its signature lets batch could not
	// be run on made-up rows to check that they stay independent when
	// stacked; "" when it was checked, or did not need to be.
	Unchecked string
	Config    Config
	// Pipeline, when set, makes this a pipeline (see loadPipeline): its
	// plan, run step by step on its models' queues.
	Pipeline *pipeline.Plan
}

// VersionString is the version as the V2 protocol writes it.
func (m *Model) VersionString() string { return strconv.FormatInt(m.Version, 10) }

// Family is every version of one model.
type Family struct {
	Name string
	// Versions are the loaded versions, highest first.
	Versions []*Model
	// Refused maps each version that could not be served to the reason.
	Refused map[int64]error
	// Config is the family's config.yaml as written (before defaults).
	Config Config
	// fingerprint identifies the files the family was loaded from: its
	// config and each version's model file, by size and time. A rescan
	// that finds the same fingerprint keeps the family as it is.
	fingerprint string
}

// Default is the highest loaded version, or nil.
func (f *Family) Default() *Model {
	if len(f.Versions) == 0 {
		return nil
	}
	return f.Versions[0]
}

// Lookup returns the given version, or the default for version 0.
func (f *Family) Lookup(version int64) (*Model, error) {
	if version == 0 {
		if m := f.Default(); m != nil {
			return m, nil
		}
		return nil, fmt.Errorf("%w: no version of %q could be loaded", ErrUnavailable, f.Name)
	}
	for _, m := range f.Versions {
		if m.Version == version {
			return m, nil
		}
	}
	if err, ok := f.Refused[version]; ok {
		return nil, fmt.Errorf("%w: %q version %d: %v", ErrUnavailable, f.Name, version, err)
	}
	return nil, fmt.Errorf("%w: %q has no version %d", ErrNotFound, f.Name, version)
}

// Repository is a scanned model repository. It is immutable once loaded
// and safe for concurrent use.
type Repository struct {
	Dir      string
	families map[string]*Family
	// Problems are repository entries that could not be read at all.
	Problems []error
}

// Load scans dir. A model or version that cannot be served is recorded
// with the reason (see Family.Refused and Repository.Problems) rather than
// failing the whole repository; an unreadable dir is an error.
func Load(dir string, rt Runtime) (*Repository, error) {
	return load(dir, rt, nil)
}

// load scans dir; a family whose files are unchanged since prev was
// loaded is taken from prev as it is, without reading its models again.
func load(dir string, rt Runtime, prev *Repository) (*Repository, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read model repository: %w", err)
	}
	r := &Repository{Dir: dir, families: map[string]*Family{}}
	var pipelines []string
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		name := e.Name()
		if !ValidName(name) {
			r.Problems = append(r.Problems, fmt.Errorf("model directory %q skipped: names are letters, digits, '_', '-' and '.', starting with a letter or digit (at most 64)", name))
			continue
		}
		var old *Family
		if prev != nil {
			old = prev.families[name]
		}
		f, err := loadFamily(filepath.Join(dir, name), name, rt, old)
		if err != nil {
			r.Problems = append(r.Problems, err)
			continue
		}
		if f != nil {
			r.families[name] = f
		} else {
			pipelines = append(pipelines, name)
		}
	}
	// Pipelines after every model, which they are checked against. A
	// pipeline is checked again on every scan: a model it calls may
	// have changed.
	for _, name := range pipelines {
		f, err := loadPipeline(filepath.Join(dir, name), name, r, prev.family(name))
		if err != nil {
			r.Problems = append(r.Problems, err)
			continue
		}
		if f != nil {
			r.families[name] = f
		}
	}
	return r, nil
}

func loadFamily(dir, name string, rt Runtime, prev *Family) (*Family, error) {
	f := &Family{Name: name, Refused: map[int64]error{}}
	var fp strings.Builder
	cfgPath := filepath.Join(dir, "config.yaml")
	cfg, err := os.ReadFile(cfgPath)
	if err == nil {
		fmt.Fprintf(&fp, "config %x\n", sha256.Sum256(cfg))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("model %q: %w", name, err)
	}
	type version struct {
		v    int64
		path string
	}
	var versions []version
	for _, e := range entries {
		v, err := strconv.ParseInt(e.Name(), 10, 64)
		if !e.IsDir() || err != nil || v <= 0 {
			continue
		}
		// Every file of the version counts, not model.onnx alone: a
		// model's weights may be in files beside it (external data), and
		// one that arrives after model.onnx must get the version loaded.
		// Links are followed, so that a file swapped behind a link (as
		// Kubernetes updates a mounted volume) counts as changed. A
		// folder without model.onnx is not a version.
		vdir := filepath.Join(dir, e.Name())
		files, err := os.ReadDir(vdir)
		if err != nil {
			continue
		}
		var lines strings.Builder
		hasModel := false
		for _, file := range files {
			st, err := os.Stat(filepath.Join(vdir, file.Name()))
			if err != nil {
				continue
			}
			hasModel = hasModel || file.Name() == "model.onnx"
			if st.Mode().IsRegular() {
				fmt.Fprintf(&lines, "%d %q %d %d\n", v, file.Name(), st.Size(), st.ModTime().UnixNano())
			}
		}
		if !hasModel {
			continue
		}
		fp.WriteString(lines.String())
		versions = append(versions, version{v, filepath.Join(vdir, "model.onnx")})
	}
	if len(versions) == 0 {
		return nil, nil // not a model directory
	}
	f.fingerprint = fp.String()
	if prev != nil && prev.fingerprint == f.fingerprint {
		return prev, nil
	}
	if cfg != nil {
		if f.Config, err = ParseConfig(cfg); err != nil {
			return nil, fmt.Errorf("model %q: %s: %w", name, cfgPath, err)
		}
	}
	for _, ver := range versions {
		m, err := loadVersion(name, ver.v, ver.path, f.Config, rt)
		if err != nil {
			f.Refused[ver.v] = err
			continue
		}
		f.Versions = append(f.Versions, m)
	}
	sort.Slice(f.Versions, func(i, j int) bool { return f.Versions[i].Version > f.Versions[j].Version })
	return f, nil
}

func loadVersion(name string, version int64, path string, cfg Config, rt Runtime) (*Model, error) {
	sig, err := rt.Inspect(path)
	if err != nil {
		return nil, err
	}
	m := &Model{Name: name, Version: version, Path: path, Inputs: sig.Inputs, Outputs: sig.Outputs}
	for _, list := range []struct {
		what string
		ios  []onnx.IO
	}{{"input", sig.Inputs}, {"output", sig.Outputs}} {
		for _, io := range list.ios {
			if list.what == "input" && io.Kind != onnx.KindTensor {
				return nil, fmt.Errorf("input %q is a %s; inferq takes tensor inputs only", io.Name, io.Kind)
			}
			if io.Kind == onnx.KindOther {
				return nil, fmt.Errorf("output %q is of a kind (%s) that inferq cannot return", io.Name, io.ElementType)
			}
			if io.Datatype == tensor.Invalid {
				return nil, fmt.Errorf("%s %q has element type %s, which V2 tensors cannot carry", list.what, io.Name, io.ElementType)
			}
		}
	}
	if err := checkPadding(cfg.Padding, sig); err != nil {
		return nil, err
	}
	if err := checkRagged(cfg.Ragged, sig); err != nil {
		return nil, err
	}
	m.Batched, m.Batching = batchPlan(sig)
	if m.Batching == "" && cfg.MaxBatchSize == 0 {
		// A config that sets max_batch_size has decided; else the
		// model's arithmetic is asked too.
		reason, err := probeRows(rt, path, sig, m.Batched)
		if err != nil {
			m.Unchecked = err.Error()
		}
		m.Batching = reason
	}
	m.Stackable = m.Batching == ""
	if cfg.MaxBatchSize > 1 && m.Batching != "" {
		return nil, fmt.Errorf("config sets max_batch_size %d, but the model cannot be batched: %s; remove max_batch_size or set it to 1", cfg.MaxBatchSize, m.Batching)
	}
	if cfg.MaxBatchSize == 1 && m.Batching == "" {
		m.Batching = "max_batch_size is 1 in config.yaml"
	}
	m.Batchable = m.Batching == ""
	m.Config = cfg.resolve(m.Batchable)
	return m, nil
}

// checkPadding checks that padding names inputs and outputs of the model,
// along axes that exist, are not the batch axis, and vary in length.
func checkPadding(p *Padding, sig onnx.Signature) error {
	if p == nil {
		return nil
	}
	for name, in := range p.Inputs {
		if err := checkAxis("padding", "input", sig.Inputs, name, in.Axis); err != nil {
			return err
		}
	}
	for name, axis := range p.Outputs {
		if err := checkAxis("padding", "output", sig.Outputs, name, axis); err != nil {
			return err
		}
	}
	return nil
}

// checkRagged checks that ragged names an input and outputs of the model
// along dynamic axes after the batch axis.
func checkRagged(r *Ragged, sig onnx.Signature) error {
	if r == nil {
		return nil
	}
	if err := checkAxis("ragged", "input", sig.Inputs, r.Input, r.Axis); err != nil {
		return err
	}
	for name, axis := range r.Outputs {
		if err := checkAxis("ragged", "output", sig.Outputs, name, axis); err != nil {
			return err
		}
	}
	return nil
}

// checkAxis checks that ios has one named name, with a dynamic axis axis
// after the batch axis.
func checkAxis(key, what string, ios []onnx.IO, name string, axis int) error {
	i := slices.IndexFunc(ios, func(io onnx.IO) bool { return io.Name == name })
	if i < 0 {
		return fmt.Errorf("config %s: the model has no %s %q", key, what, name)
	}
	if s := ios[i].Shape; axis < 1 || axis >= len(s) || s[axis] != -1 {
		return fmt.Errorf("config %s: %s %q has shape %s; axis %d must be a dynamic axis after the batch axis", key, what, name, tensor.FormatShape(s), axis)
	}
	return nil
}

// batchPlan decides from a model's signature which inputs stack along the
// batch dimension: those whose first dimension is dynamic. Every output
// must have a dynamic first dimension too, to be split back per request,
// and at least one input must carry the batch. When the model cannot be
// batched the reason says why.
func batchPlan(sig onnx.Signature) (batched []bool, reason string) {
	batched = make([]bool, len(sig.Inputs))
	// A tensor the model gives no shape may carry the batch on any axis,
	// or none: nothing can be stacked or split along it.
	for _, ios := range []struct {
		what string
		list []onnx.IO
	}{{"input", sig.Inputs}, {"output", sig.Outputs}} {
		for _, io := range ios.list {
			if io.Kind == onnx.KindTensor && io.Shape == nil {
				return batched, fmt.Sprintf("%s %q has no shape in the model, so where its batch axis is cannot be known", ios.what, io.Name)
			}
		}
	}
	some := false
	for i, in := range sig.Inputs {
		batched[i] = len(in.Shape) > 0 && in.Shape[0] == -1
		some = some || batched[i]
	}
	if !some {
		return batched, "no input has a dynamic first dimension to batch along"
	}
	for _, out := range sig.Outputs {
		if len(out.Shape) == 0 {
			return batched, fmt.Sprintf("output %q is a scalar, which cannot be split back per request", out.Name)
		}
		if out.Shape[0] != -1 {
			return batched, fmt.Sprintf("output %q has a fixed first dimension (%s), which cannot be split back per request", out.Name, tensor.FormatShape(out.Shape))
		}
	}
	// An input that is not stacked is shared by the requests of a run,
	// which is right for a scalar or a fixed table. One with a fixed first
	// dimension and a dynamic one after it most likely carries the batch
	// on that later axis (the state of a recurrent model, laid out
	// [layers, batch, hidden]): stacking the other inputs would not
	// stack it, and the run would fail or mix requests.
	for i, in := range sig.Inputs {
		if !batched[i] && slices.Contains(in.Shape, -1) {
			return batched, fmt.Sprintf("input %q (%s) has a fixed first dimension and a dynamic one after it: its batch axis is not the first (a recurrent state, say)", in.Name, tensor.FormatShape(in.Shape))
		}
	}
	return batched, axisNames(sig, batched)
}

// axisNames checks the names a model file gives its axes against stacking
// requests along the first. An axis after the first named as the batch
// says the batch is not first (a recurrent net laid out [seq, batch,
// features]: stacking along the sequence would run the requests as one
// long sequence). First axes of stacked inputs or of outputs named
// differently (batch and num_boxes) are different dimensions: stacking
// would pair one request's boxes with another's image. Each returns the
// reason; "" when the names allow stacking, or there are none.
func axisNames(sig onnx.Signature, batched []bool) string {
	var first, firstWhat, firstIO string
	for _, ios := range []struct {
		what string
		list []onnx.IO
	}{{"input", sig.Inputs}, {"output", sig.Outputs}} {
		for i, io := range ios.list {
			if io.Kind != onnx.KindTensor || len(io.Axes) == 0 {
				continue
			}
			if !batchNamed(io.Axes[0]) {
				for k, a := range io.Axes[1:] {
					if batchNamed(a) {
						return fmt.Sprintf("%s %q (%s) names axis %d %q: its batch axis is not the first", ios.what, io.Name, tensor.FormatShape(io.Shape), k+1, cmp.Or(a.Param, a.Denotation))
					}
				}
			}
			if ios.what == "input" && !batched[i] {
				continue
			}
			name := sameAxis(io.Axes[0])
			switch {
			case name == "":
			case first == "":
				first, firstWhat, firstIO = name, ios.what, io.Name
			case name != first:
				return fmt.Sprintf("the first axes of %s %q (%q) and %s %q (%q) have different names: they are different dimensions, which requests cannot be stacked along together", firstWhat, firstIO, first, ios.what, io.Name, name)
			}
		}
	}
	return ""
}

// batchNamed reports whether an axis is named as a batch: ONNX's
// DATA_BATCH denotation, or a symbolic name with "batch" in it.
func batchNamed(a onnx.Axis) bool {
	return a.Denotation == "DATA_BATCH" || strings.Contains(strings.ToLower(a.Param), "batch")
}

// generatedName matches symbolic axis names that exporters number, which
// say nothing of which axes are the same: tf2onnx's "unk__12", PyTorch's
// "x_dynamic_axes_1" and "Addoutput_dim_0", Paddle2ONNX's
// "p2o.DynamicDimension.3".
var generatedName = regexp.MustCompile(`[._]\d+$`)

// sameAxis returns the name by which axis a is compared with others: "batch"
// for any name of the batch (N and B too), its symbolic name otherwise,
// and "" for an axis with none, or one an exporter made up.
func sameAxis(a onnx.Axis) string {
	switch {
	case batchNamed(a), a.Param == "N", a.Param == "B", a.Param == "bs":
		return "batch"
	case generatedName.MatchString(a.Param):
		return ""
	}
	return a.Param
}

// family is the family called name, or nil (r may be nil).
func (r *Repository) family(name string) *Family {
	if r == nil {
		return nil
	}
	return r.families[name]
}

// Family returns the model called name.
func (r *Repository) Family(name string) (*Family, error) {
	f, ok := r.families[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q is not in the repository", ErrNotFound, name)
	}
	return f, nil
}

// Lookup returns version of the model called name; version 0 is the
// default (highest) version.
func (r *Repository) Lookup(name string, version int64) (*Model, error) {
	f, err := r.Family(name)
	if err != nil {
		return nil, err
	}
	return f.Lookup(version)
}

// Families returns every model, sorted by name.
func (r *Repository) Families() []*Family {
	out := make([]*Family, 0, len(r.families))
	for _, f := range r.families {
		out = append(out, f)
	}
	slices.SortFunc(out, func(a, b *Family) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// IONames are the input and output names of version of the model called
// name (0: its default), or why it cannot be used: what a pipeline's
// check needs of the repository.
func (r *Repository) IONames(name string, version int64) (inputs, outputs []string, err error) {
	m, err := r.Lookup(name, version)
	if err != nil {
		return nil, nil, err
	}
	for _, in := range m.Inputs {
		inputs = append(inputs, in.Name)
	}
	for _, out := range m.Outputs {
		outputs = append(outputs, out.Name)
	}
	return inputs, outputs, nil
}
