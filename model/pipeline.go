package model

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/tensor"
)

// A pipeline (DIR/{name}/pipeline.yaml) is served as a model: a family of
// one version, 1, whose Model has Pipeline set. Its inputs are those its
// pipeline.yaml declares (none: any), its outputs those it names, typed
// from the step that makes each. Workers run its model steps on those
// models' queues; no worker serves the pipeline itself.

// loadPipeline reads the pipeline in dir, checked against the models of
// r: a family whose one version is refused with the reason when it
// cannot be served, or nil, nil when dir holds no pipeline.yaml. prev,
// when its files and the models it calls are unchanged, is returned as
// it is.
func loadPipeline(dir, name string, r *Repository, prev *Family) (*Family, error) {
	path := filepath.Join(dir, pipeline.FileName)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pipeline %q: %w", name, err)
	}
	cfg, cfgErr := os.ReadFile(filepath.Join(dir, "config.yaml"))
	var fp strings.Builder
	fmt.Fprintf(&fp, "pipeline %x config %x\n", sha256.Sum256(b), sha256.Sum256(cfg))
	for _, fam := range r.Families() {
		if strings.Contains(string(b), fam.Name) { // a model it may call
			fmt.Fprintf(&fp, "%s %p\n", fam.Name, fam)
		}
	}
	if prev != nil && prev.fingerprint == fp.String() {
		return prev, nil
	}
	f := &Family{Name: name, Refused: map[int64]error{}, fingerprint: fp.String()}
	if err = cfgErr; err == nil {
		f.Config, err = ParseConfig(cfg)
	} else if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err != nil {
		f.Refused[1] = fmt.Errorf("config.yaml: %w", err)
		return f, nil
	}
	spec, err := pipeline.Parse(b)
	var plan *pipeline.Plan
	if err == nil {
		plan, err = pipeline.Check(spec, r, dir)
	}
	if err == nil {
		plan.Name = name
		err = servable(plan)
	}
	if err != nil {
		f.Refused[1] = err
		return f, nil
	}
	m := &Model{Name: name, Version: 1, Path: path, Pipeline: plan, Config: f.Config.resolve(false), Batching: "a pipeline: its model steps are batched on their models' queues"}
	for _, in := range spec.Inputs {
		dt, _ := tensor.ParseDatatype(in.Datatype) // checked
		m.Inputs = append(m.Inputs, onnx.IO{Spec: tensor.Spec{Name: in.Name, Datatype: dt, Shape: in.Shape}})
	}
	for _, name := range plan.OutputNames() {
		m.Outputs = append(m.Outputs, onnx.IO{Spec: outputSpec(r, plan, name)})
	}
	f.Versions = []*Model{m}
	return f, nil
}

// servable refuses a pipeline with no queued step: operations alone are
// not queued work.
func servable(p *pipeline.Plan) error {
	for _, st := range p.Spec.Steps {
		if st.Kind() != "op" {
			return nil
		}
	}
	return errors.New("pipeline has no model step: its operations alone are not queued work; call a model (or user code, external) in at least one step")
}

// outputSpec is what a pipeline's output is known to be from the step
// that makes it: a model's output as the model says (its first dimension
// any, as fan-out joins rows), an operation's datatype as the op table
// says, a pipeline input's as declared.
func outputSpec(r *Repository, p *pipeline.Plan, name string) tensor.Spec {
	return tensor.Spec{Name: name, Datatype: datatypeOf(r, p, p.Spec.Outputs[name], 0), Shape: shapeOf(r, p, p.Spec.Outputs[name])}
}

func datatypeOf(r *Repository, p *pipeline.Plan, value string, depth int) tensor.Datatype {
	ref, err := pipeline.ParseRef(value)
	if err != nil || depth > len(p.Spec.Steps) {
		return tensor.Invalid
	}
	if ref.Step == "" {
		for _, in := range p.Spec.Inputs {
			if in.Name == ref.Name {
				dt, _ := tensor.ParseDatatype(in.Datatype)
				return dt
			}
		}
		return tensor.Invalid
	}
	st := p.Step(ref.Step)
	if st.Kind() == "model" {
		if out := modelOutput(r, st, ref.Name); out != nil {
			return out.Datatype
		}
		return tensor.Invalid
	}
	dt, asInput := p.OpDatatype(st.Name, ref.Name)
	if asInput {
		return datatypeOf(r, p, st.Inputs["x"], depth+1)
	}
	return dt
}

func shapeOf(r *Repository, p *pipeline.Plan, value string) []int64 {
	ref, err := pipeline.ParseRef(value)
	if err != nil || ref.Step == "" || p.Step(ref.Step).Kind() != "model" {
		return nil
	}
	out := modelOutput(r, p.Step(ref.Step), ref.Name)
	if out == nil || len(out.Shape) == 0 {
		return nil
	}
	return append([]int64{-1}, out.Shape[1:]...)
}

func modelOutput(r *Repository, st *pipeline.Step, name string) *onnx.IO {
	m, err := r.Lookup(st.Model, st.Version)
	if err != nil {
		return nil
	}
	for i := range m.Outputs {
		if m.Outputs[i].Name == name {
			return &m.Outputs[i]
		}
	}
	return nil
}
