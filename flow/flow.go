// Package flow moves a pipeline job from one model step to the next: it
// runs the operations between them (pipeline.Plan.Advance), shapes a model
// step's inputs to what its model takes in a run (fan-out), makes the
// step's job for that model's queue, and joins the step's outputs back.
// It holds no connection: the API calls Start when a pipeline job is
// submitted, and the worker that finishes a model step calls Continue.
package flow

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/tensor"
)

// Models finds a step's model; *model.Catalog does.
type Models interface {
	Lookup(name string, version int64) (*model.Model, error)
}

// Call is a pipeline job's next model step, its inputs shaped for its
// model.
type Call struct {
	Step  *pipeline.Step
	Model *model.Model
	// Request is the step's inputs, in the model's order; with Lines set,
	// its rows cut into groups laid end to end, each one run (fan-out).
	Request *tensor.Request
	Lines   *batching.Lines
	// Deferred: the operations before the step have not run; its job
	// carries the pipeline's inputs, and its worker prepares it.
	Deferred bool
}

// Start is where a new job of plan with these inputs goes first. When
// its first step to run elsewhere is a model's, the job goes there as
// it is, Deferred: that model's worker runs the operations before the
// step (Prepare), so that what travels is what the client sent (a
// JPEG, not the tensor decoded from it) and the API does none of the
// work. Before a step run by user code, the operations run here.
func Start(plan *pipeline.Plan, inputs []tensor.Tensor, models Models) (*pipeline.State, *Call, []tensor.Tensor, error) {
	st := pipeline.NewState(inputs)
	for _, i := range plan.Order {
		step := &plan.Spec.Steps[i]
		if step.Kind() == "op" {
			continue
		}
		if step.Kind() == "model" {
			m, err := models.Lookup(step.Model, step.Version)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("step %s: %w", step.Name, err)
			}
			return st, &Call{Step: step, Model: m, Request: &tensor.Request{}, Deferred: true}, nil, nil
		}
		break
	}
	call, outputs, err := next(plan, st, models, true)
	return st, call, outputs, err
}

// Prepare runs, for a Deferred call's job in its model's worker, the
// operations before its step, and returns the step shaped for its model
// (a step of zero rows too: its worker answers it without a run). An
// operation that fails fails the job, naming its step.
func Prepare(plan *pipeline.Plan, st *pipeline.State, step string, models Models) (*Call, error) {
	call, _, err := next(plan, st, models, true)
	switch {
	case err != nil:
		return nil, err
	case call == nil || call.Step.Name != step:
		return nil, fmt.Errorf("step %s: pipeline %s no longer runs it next (it changed since the job was queued)", step, plan.Name)
	}
	return call, nil
}

// Continue hands a model step's outputs (with the response parameters
// its run set, for a fanned-out step) to the job's state and runs it up
// to its next model step; or, when none is left, returns the pipeline's
// outputs.
func Continue(plan *pipeline.Plan, st *pipeline.State, step string, outputs []tensor.Tensor, params json.RawMessage, models Models) (*Call, []tensor.Tensor, error) {
	joined, err := Join(outputs, params)
	if err != nil {
		return nil, nil, fmt.Errorf("step %s: %w", step, err)
	}
	if err := plan.Complete(st, step, joined); err != nil {
		return nil, nil, err
	}
	return next(plan, st, models, false)
}

// next runs the operations the state can run, in the plan's order, until
// a model step: that step, shaped for its model, or the pipeline's
// outputs once every step is done. A model step of zero rows does not
// run: its outputs are empty (EmptyOutputs), and the job goes on; but
// with queueEmpty, a job's first model step is returned all the same,
// so that every job is queued (its worker answers it without a run).
func next(plan *pipeline.Plan, st *pipeline.State, models Models, queueEmpty bool) (*Call, []tensor.Tensor, error) {
	for {
		next, outputs, err := plan.Advance(st)
		if err != nil || next == nil {
			return nil, outputs, err
		}
		if next.Step.Kind() == "external" {
			// User code takes the step's inputs as they are, by the
			// step's names, on its own subject (see ExternalModel).
			req := &tensor.Request{}
			for _, name := range slices.Sorted(maps.Keys(next.Inputs)) {
				req.Inputs = append(req.Inputs, next.Inputs[name])
			}
			return &Call{Step: next.Step, Request: req}, nil, nil
		}
		m, err := models.Lookup(next.Step.Model, next.Step.Version)
		if err != nil {
			return nil, nil, fmt.Errorf("step %s: %w", next.Step.Name, err)
		}
		call, empty, err := shape(next, m)
		if err != nil {
			return nil, nil, fmt.Errorf("step %s (model %s): %w", next.Step.Name, m.Name, err)
		}
		if call != nil {
			return call, nil, nil
		}
		if queueEmpty {
			return &Call{Step: next.Step, Model: m, Request: &tensor.Request{Inputs: ordered(next, m)}}, nil, nil
		}
		if err := plan.Complete(st, next.Step.Name, empty); err != nil {
			return nil, nil, err
		}
	}
}

// shape orders a step's inputs as its model takes them and, when they
// hold more rows than one run takes (past the max batch size, or a first
// dimension the model fixes at 1), cuts them into groups of rows laid end
// to end, each run on its own. Zero rows returns the model's outputs,
// empty, instead of a call.
func shape(c *pipeline.Call, m *model.Model) (*Call, []tensor.Tensor, error) {
	req := &tensor.Request{Inputs: ordered(c, m)}
	if len(req.Inputs) != len(m.Inputs) {
		return nil, nil, fmt.Errorf("the step gives %d inputs; the model takes %d", len(req.Inputs), len(m.Inputs))
	}
	call := &Call{Step: c.Step, Model: m, Request: req}
	rows, per := Rows(m, req.Inputs)
	switch {
	case rows < 0:
		return call, nil, nil // no row dimension to cut: as they are
	case rows == 0:
		return nil, EmptyOutputs(m), nil
	case rows <= per:
		return call, nil, nil
	}
	var cuts []int
	for left := rows; left > 0; left -= per {
		cuts = append(cuts, min(left, per))
	}
	// Inputs that are not stacked (shared by a batch) go whole to each
	// group.
	var stacked []tensor.Tensor
	var at []int
	for i, t := range req.Inputs {
		if len(t.Shape) > 0 && t.Shape[0] == int64(rows) && (!m.Stackable || m.Batched[i]) {
			stacked = append(stacked, t)
			at = append(at, i)
		}
	}
	parts, err := batching.Split(stacked, cuts)
	if err != nil {
		return nil, nil, err
	}
	groups := make([][]tensor.Tensor, len(parts))
	for g, part := range parts {
		groups[g] = append([]tensor.Tensor(nil), req.Inputs...)
		for j, i := range at {
			groups[g][i] = part[j]
		}
	}
	packed, shapes, err := batching.Pack(groups)
	if err != nil {
		return nil, nil, err
	}
	call.Request, call.Lines = &tensor.Request{Inputs: packed}, &batching.Lines{Shapes: shapes}
	return call, nil, nil
}

// ordered is a call's inputs in its model's order (Check saw to it that
// the step gives every one).
func ordered(c *pipeline.Call, m *model.Model) []tensor.Tensor {
	var in []tensor.Tensor
	for _, spec := range m.Inputs {
		if t, ok := c.Inputs[spec.Name]; ok {
			in = append(in, t)
		}
	}
	return in
}

// Rows is the rows the inputs carry, and the most one run of m takes:
// for a stackable model, the first dimension of its stacked inputs and
// the max batch size; for a model whose inputs fix their first dimension
// at 1, that dimension of the inputs, one at a time. -1: the inputs have
// no row dimension to cut.
func Rows(m *model.Model, inputs []tensor.Tensor) (rows, per int) {
	if m.Stackable {
		for i, t := range inputs {
			if m.Batched[i] && len(t.Shape) > 0 {
				return int(t.Shape[0]), max(m.Config.MaxBatchSize, 1)
			}
		}
		return -1, 0
	}
	rows = -1
	for i, t := range inputs {
		spec := m.Inputs[i].Shape
		if len(spec) == 0 || spec[0] != 1 || len(t.Shape) != len(spec) {
			continue
		}
		if rows >= 0 && int(t.Shape[0]) != rows {
			return -1, 0 // disagree: left to the model's check
		}
		rows = int(t.Shape[0])
	}
	if rows < 0 {
		return -1, 0
	}
	return rows, 1
}

// EmptyOutputs are m's outputs for zero rows: no elements, each unknown
// dimension 0.
func EmptyOutputs(m *model.Model) []tensor.Tensor {
	out := make([]tensor.Tensor, len(m.Outputs))
	for i, o := range m.Outputs {
		shape := make([]int64, max(len(o.Shape), 1))
		for d := 1; d < len(o.Shape); d++ {
			shape[d] = max(o.Shape[d], 0)
		}
		out[i] = tensor.Tensor{Name: o.Name, Datatype: o.Datatype, Shape: shape, Data: []byte{}}
	}
	return out
}

// Join puts a step's outputs back together: a fanned-out step's groups
// (laid end to end, their shapes in the run's parameters) joined along
// the first dimension in order. A group that failed fails the step.
func Join(outputs []tensor.Tensor, params json.RawMessage) ([]tensor.Tensor, error) {
	lines, err := batching.ParseLines(params)
	if err != nil || lines == nil || lines.Shapes == nil {
		return outputs, err
	}
	for g := range lines.Shapes {
		if msg, failed := lines.Failed(g); failed {
			return nil, fmt.Errorf("rows group %d of %d failed: %s", g+1, len(lines.Shapes), msg)
		}
	}
	groups, err := batching.Unpack(outputs, lines.Shapes)
	if err != nil {
		return nil, err
	}
	joined, err := batching.Stack(groups, nil)
	if err != nil {
		return nil, fmt.Errorf("join the outputs of %d row groups: %w", len(groups), err)
	}
	return joined, nil
}

// ExternalModel is the queue name of a step run by user code: its
// messages go on this "model"'s subject, leased over HTTP. A pipeline's
// name and a step's hold no ':', so it names no model.
func ExternalModel(pipeline, step string) string { return pipeline + ":" + step }

// Job is the message of a call: a job on the step's model queue that
// carries the pipeline job's id, its state and the steps done.
func (c *Call) Job(plan *pipeline.Plan, id string, st *pipeline.State, base *jobs.Job) (*jobs.Job, error) {
	running := c.Step.Name
	if c.Deferred {
		running = "" // the step's inputs are made from the state, later
	}
	plan.Prune(st, running)
	state, stateHeader, done, err := st.Encode()
	if err != nil {
		return nil, err
	}
	if c.Step == nil || c.Model == nil && c.Step.Kind() != "external" {
		return nil, errors.New("flow: a call without its step or model")
	}
	name := ExternalModel(plan.Name, c.Step.Name)
	if c.Model != nil {
		name = c.Model.Name
	}
	job := &jobs.Job{ID: id, Model: name, Request: c.Request, Lines: c.Lines,
		Pipeline: &jobs.Step{Pipeline: plan.Name, Name: c.Step.Name, Done: done, State: state, StateHeaderLen: stateHeader, Prepare: c.Deferred}}
	if c.Step.Version != 0 {
		job.Version = c.Step.Version
	}
	if base != nil {
		job.Trace = base.Trace
		if c.Model != nil {
			job.Priority = base.Priority // user code leases one subject
		}
		switch {
		case base.Pipeline != nil:
			job.Pipeline.Outputs = base.Pipeline.Outputs
		case base.Request != nil:
			job.Pipeline.Outputs = base.Request.Outputs // the client's own
		}
	}
	return job, nil
}
