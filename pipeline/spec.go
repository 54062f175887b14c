// Package pipeline is a pipeline's declaration (pipeline.yaml in the model
// repository) and its built-in operations: a DAG of steps, each a model
// or an operation, read and checked here as plain data, with the
// operations as pure functions of tensors. It imports nothing of NATS or
// ONNX Runtime: how a job moves from step to step is the queue's.
//
// Contract: ../shared/API.md, "Pipelines". Not yet served: the package is
// the declaration, the operations and the orchestration (Plan.Advance);
// the queue's side comes next, on this design: a pipeline job's State
// travels in its step's message; a model step is a job on that model's
// queue, batched with every other caller; the worker that finishes it
// hands its outputs back (Plan.Complete) and runs the operations after
// it in place (Plan.Advance), then publishes the next model step's
// message, or writes the final record and announcement. A step costs one
// JetStream write (its message) and an acknowledgement; the record is
// written when the job starts and when it ends, with the steps' timings
// carried in the state.
package pipeline

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/inferq/inferq/tensor"
)

// Spec is a pipeline.yaml.
type Spec struct {
	// Inputs, when given, are checked at submission.
	Inputs []IO   `yaml:"inputs"`
	Steps  []Step `yaml:"steps"`
	// Outputs are the job's response outputs, each from a step's output
	// ("step.output").
	Outputs map[string]string `yaml:"outputs"`
}

// IO is a pipeline input as it is declared.
type IO struct {
	Name     string  `yaml:"name"`
	Datatype string  `yaml:"datatype"`
	Shape    []int64 `yaml:"shape"`
}

// Step is one step: a model, an operation, or user code (External).
type Step struct {
	Name string `yaml:"name"`
	// Model names a model of the repository; Version pins one (0: the
	// default).
	Model   string `yaml:"model"`
	Version int64  `yaml:"version"`
	// Op names a built-in operation, with its parameters in With.
	Op   string         `yaml:"op"`
	With map[string]any `yaml:"with"`
	// External names a step run by user code over HTTP leases, with how
	// long a lease may go unanswered before the step is offered again
	// (default 60s) and the attempts it gets (default 3).
	External     string        `yaml:"external"`
	LeaseTimeout time.Duration `yaml:"lease_timeout"`
	MaxAttempts  int           `yaml:"max_attempts"`
	// Inputs map the step's input names to a pipeline input ("$name") or
	// another step's output ("step.output").
	Inputs map[string]string `yaml:"inputs"`
}

// Kind says what runs a step.
func (s *Step) Kind() string {
	switch {
	case s.Model != "":
		return "model"
	case s.Op != "":
		return "op"
	}
	return "external"
}

// Ref is where a value comes from: a pipeline input (Step empty) or a
// step's output.
type Ref struct {
	Step, Name string
}

func (r Ref) String() string {
	if r.Step == "" {
		return "$" + r.Name
	}
	return r.Step + "." + r.Name
}

// ParseRef reads "$input" or "step.output"; a step's output name may hold
// dots (det.sigmoid_0.tmp_0), a step's name never.
func ParseRef(s string) (Ref, error) {
	if name, ok := strings.CutPrefix(s, "$"); ok {
		if name == "" {
			return Ref{}, errors.New(`"$" names no pipeline input`)
		}
		return Ref{Name: name}, nil
	}
	step, out, ok := strings.Cut(s, ".")
	if !ok || step == "" || out == "" {
		return Ref{}, fmt.Errorf("%q: want $input or step.output", s)
	}
	return Ref{Step: step, Name: out}, nil
}

// Parse reads a pipeline.yaml; Check says whether it can be served.
func Parse(b []byte) (*Spec, error) {
	var s Spec
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("pipeline.yaml: %w", err)
	}
	return &s, nil
}

// Models is what a pipeline's check needs to know of the repository: a
// model's inputs and outputs by name, or an error saying why it cannot be
// used.
type Models interface {
	IONames(model string, version int64) (inputs, outputs []string, err error)
}

// Plan is a checked pipeline: its steps in an order that runs each after
// what it reads, with their operations built.
type Plan struct {
	// Name is the pipeline's, set by its loader.
	Name  string
	Spec  *Spec
	Order []int // indexes of Spec.Steps
	Ops   map[string]Op
}

// Check reports whether the pipeline can be served, with the reason when
// it cannot (an unknown model or op, a wrong parameter, an input that
// names nothing, a cycle), and returns its plan. dir is the pipeline's
// folder, where files its operations name are read.
func Check(s *Spec, models Models, dir string) (*Plan, error) {
	if len(s.Steps) == 0 {
		return nil, errors.New("pipeline has no steps")
	}
	inputs := map[string]bool{}
	for _, in := range s.Inputs {
		if in.Name == "" {
			return nil, errors.New("a pipeline input has no name")
		}
		if _, err := tensor.ParseDatatype(in.Datatype); err != nil {
			return nil, fmt.Errorf("pipeline input %q: %w", in.Name, err)
		}
		inputs[in.Name] = true
	}
	plan := &Plan{Spec: s, Ops: map[string]Op{}}
	// outputs says what each step produces, once known.
	outputs := map[string][]string{}
	index := map[string]int{}
	for i := range s.Steps {
		st := &s.Steps[i]
		switch {
		case st.Name == "":
			return nil, fmt.Errorf("step %d has no name", i+1)
		case strings.Contains(st.Name, "."):
			return nil, fmt.Errorf("step %q: a step's name holds no '.'", st.Name)
		}
		if _, dup := index[st.Name]; dup {
			return nil, fmt.Errorf("step %q: two steps have that name", st.Name)
		}
		index[st.Name] = i
		kinds := 0
		for _, set := range []bool{st.Model != "", st.Op != "", st.External != ""} {
			if set {
				kinds++
			}
		}
		if kinds != 1 {
			return nil, fmt.Errorf("step %q: give exactly one of model, op and external", st.Name)
		}
		if len(st.Inputs) == 0 {
			return nil, fmt.Errorf("step %q has no inputs", st.Name)
		}
		switch {
		case st.External == "" && (st.LeaseTimeout != 0 || st.MaxAttempts != 0):
			return nil, fmt.Errorf("step %q: lease_timeout and max_attempts are for steps run by user code (external); a model step is retried by its model's max_attempts", st.Name)
		case st.LeaseTimeout < 0 || st.MaxAttempts < 0:
			return nil, fmt.Errorf("step %q: lease_timeout and max_attempts must not be negative", st.Name)
		}
		switch st.Kind() {
		case "model":
			ins, outs, err := models.IONames(st.Model, st.Version)
			if err != nil {
				return nil, fmt.Errorf("step %q: %w", st.Name, err)
			}
			for name := range st.Inputs {
				if !slices.Contains(ins, name) {
					return nil, fmt.Errorf("step %q: %q is not an input of model %s (inputs: %s)", st.Name, name, st.Model, strings.Join(ins, ", "))
				}
			}
			for _, name := range ins {
				if _, ok := st.Inputs[name]; !ok {
					return nil, fmt.Errorf("step %q: model %s's input %q is given nothing", st.Name, st.Model, name)
				}
			}
			outputs[st.Name] = outs
		case "op":
			op, err := NewOp(st.Op, st.With, dir)
			if err != nil {
				return nil, fmt.Errorf("step %q: %w", st.Name, err)
			}
			for name := range st.Inputs {
				if !slices.Contains(op.Inputs(), name) {
					return nil, fmt.Errorf("step %q: op %s takes %s, not %q", st.Name, st.Op, strings.Join(op.Inputs(), " and "), name)
				}
			}
			for _, name := range op.Inputs() {
				if _, ok := st.Inputs[name]; !ok {
					return nil, fmt.Errorf("step %q: op %s's input %q is given nothing", st.Name, st.Op, name)
				}
			}
			plan.Ops[st.Name] = op
			outputs[st.Name] = op.Outputs()
		case "external":
			outputs[st.Name] = nil // whatever the user's code answers
		}
	}
	check := func(where, ref string) (Ref, error) {
		r, err := ParseRef(ref)
		if err != nil {
			return r, fmt.Errorf("%s: %w", where, err)
		}
		if r.Step == "" {
			if len(s.Inputs) > 0 && !inputs[r.Name] {
				return r, fmt.Errorf("%s: %s is not an input of the pipeline", where, r)
			}
			return r, nil
		}
		i, ok := index[r.Step]
		if !ok {
			return r, fmt.Errorf("%s: %s names no step", where, r)
		}
		if outs := outputs[r.Step]; s.Steps[i].Kind() != "external" && !slices.Contains(outs, r.Name) {
			return r, fmt.Errorf("%s: step %s has no output %q (outputs: %s)", where, r.Step, r.Name, strings.Join(outs, ", "))
		}
		return r, nil
	}
	// Kahn's order: a step after every step it reads.
	deps := make([][]int, len(s.Steps))
	for i, st := range s.Steps {
		for _, name := range sortedKeys(st.Inputs) {
			r, err := check(fmt.Sprintf("step %q input %q", st.Name, name), st.Inputs[name])
			if err != nil {
				return nil, err
			}
			if r.Step != "" {
				if r.Step == st.Name {
					return nil, fmt.Errorf("step %q reads its own output", st.Name)
				}
				deps[i] = append(deps[i], index[r.Step])
			}
		}
	}
	if len(s.Outputs) == 0 {
		return nil, errors.New("pipeline has no outputs")
	}
	for _, name := range sortedKeys(s.Outputs) {
		if _, err := check(fmt.Sprintf("output %q", name), s.Outputs[name]); err != nil {
			return nil, err
		}
	}
	done := make([]bool, len(s.Steps))
	for len(plan.Order) < len(s.Steps) {
		progressed := false
		for i := range s.Steps {
			if done[i] || slices.ContainsFunc(deps[i], func(d int) bool { return !done[d] }) {
				continue
			}
			done[i], progressed = true, true
			plan.Order = append(plan.Order, i)
		}
		if !progressed {
			var cycle []string
			for i, d := range done {
				if !d {
					cycle = append(cycle, s.Steps[i].Name)
				}
			}
			return nil, fmt.Errorf("steps %s read each other's outputs in a cycle", strings.Join(cycle, ", "))
		}
	}
	return plan, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Lease is how long user code may hold a lease of an external step, and
// the attempts the step gets, with their defaults.
func (s *Step) Lease() (timeout time.Duration, attempts int) {
	return cmp.Or(s.LeaseTimeout, 60*time.Second), cmp.Or(s.MaxAttempts, 3)
}
