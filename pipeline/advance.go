package pipeline

import (
	"fmt"
	"maps"
	"slices"

	"github.com/inferq/inferq/tensor"
)

// State is a pipeline job's progress: the values it has (its inputs and
// the outputs of the steps done) and which steps are done. It is what
// travels with the job from one model step's queue to the next.
type State struct {
	// Values are the pipeline's inputs ("$name") and its steps' outputs
	// ("step.output"), as Ref.String names them.
	Values map[string]tensor.Tensor
	// Done are the steps that have run.
	Done map[string]bool
}

// NewState is the state of a job of the pipeline with these inputs.
func NewState(inputs []tensor.Tensor) *State {
	s := &State{Values: map[string]tensor.Tensor{}, Done: map[string]bool{}}
	for _, t := range inputs {
		s.Values[Ref{Name: t.Name}.String()] = t
	}
	return s
}

// Call is a step that must run somewhere else (a model on its queue, or
// user code): its name and its inputs, by the names the step gives them.
type Call struct {
	Step   *Step
	Inputs map[string]tensor.Tensor
}

// Advance runs every operation step of the plan whose inputs state has,
// in the plan's order, until the next step is not an operation. It
// returns that step, to be run where it runs and its outputs handed back
// with Complete; or, once every step is done, the pipeline's outputs.
// An operation that fails fails the job: the error names its step.
func (p *Plan) Advance(s *State) (*Call, []tensor.Tensor, error) {
	for _, i := range p.Order {
		st := &p.Spec.Steps[i]
		if s.Done[st.Name] {
			continue
		}
		inputs, err := p.inputsOf(st, s)
		if err != nil {
			return nil, nil, err
		}
		op, ok := p.Ops[st.Name]
		if !ok {
			return &Call{Step: st, Inputs: inputs}, nil, nil
		}
		out, err := op.Run(inputs)
		if err != nil {
			return nil, nil, fmt.Errorf("step %s (op %s): %w", st.Name, st.Op, err)
		}
		p.store(st, s, out)
	}
	outputs := make([]tensor.Tensor, 0, len(p.Spec.Outputs))
	for _, name := range sortedKeys(p.Spec.Outputs) {
		t, ok := s.Values[p.Spec.Outputs[name]]
		if !ok {
			return nil, nil, fmt.Errorf("output %s: %s was not made", name, p.Spec.Outputs[name])
		}
		t.Name = name
		outputs = append(outputs, t)
	}
	return nil, outputs, nil
}

// Complete records the outputs of a step that ran elsewhere (a Call).
// A model that did not answer an output a later step reads is an error
// naming it.
func (p *Plan) Complete(s *State, step string, outputs []tensor.Tensor) error {
	i := slices.IndexFunc(p.Spec.Steps, func(st Step) bool { return st.Name == step })
	if i < 0 {
		return fmt.Errorf("pipeline has no step %q", step)
	}
	out := make(map[string]tensor.Tensor, len(outputs))
	for _, t := range outputs {
		out[t.Name] = t
	}
	for _, ref := range p.readersOf(step) {
		if _, ok := out[ref.Name]; !ok {
			return fmt.Errorf("step %s gave no output %q (gave %v)", step, ref.Name, slices.Sorted(maps.Keys(out)))
		}
	}
	p.store(&p.Spec.Steps[i], s, out)
	return nil
}

// inputsOf gathers a step's inputs from the state, by the step's names.
func (p *Plan) inputsOf(st *Step, s *State) (map[string]tensor.Tensor, error) {
	in := make(map[string]tensor.Tensor, len(st.Inputs))
	for name, ref := range st.Inputs {
		t, ok := s.Values[ref]
		if !ok {
			if r, err := ParseRef(ref); err == nil && r.Step == "" {
				return nil, fmt.Errorf("step %s: the job has no input %q", st.Name, r.Name)
			}
			return nil, fmt.Errorf("step %s: %s is not made yet", st.Name, ref)
		}
		t.Name = name
		in[name] = t
	}
	return in, nil
}

// store keeps the outputs of a step that later steps or the pipeline's
// outputs read, and marks it done. What nobody reads is not carried on.
func (p *Plan) store(st *Step, s *State, out map[string]tensor.Tensor) {
	for _, ref := range p.readersOf(st.Name) {
		if t, ok := out[ref.Name]; ok {
			s.Values[ref.String()] = t
		}
	}
	s.Done[st.Name] = true
}

// readersOf is the outputs of step that something reads.
func (p *Plan) readersOf(step string) []Ref {
	var refs []Ref
	add := func(v string) {
		if r, err := ParseRef(v); err == nil && r.Step == step && !slices.Contains(refs, r) {
			refs = append(refs, r)
		}
	}
	for _, st := range p.Spec.Steps {
		for _, v := range st.Inputs {
			add(v)
		}
	}
	for _, v := range p.Spec.Outputs {
		add(v)
	}
	return refs
}
