package pipeline

import (
	"fmt"
	"slices"
	"strings"

	"github.com/inferq/inferq/tensor"
)

// Step returns the step called name, or nil.
func (p *Plan) Step(name string) *Step {
	for i := range p.Spec.Steps {
		if p.Spec.Steps[i].Name == name {
			return &p.Spec.Steps[i]
		}
	}
	return nil
}

// OutputNames are the pipeline's outputs, sorted, as Advance returns
// them.
func (p *Plan) OutputNames() []string { return sortedKeys(p.Spec.Outputs) }

// OpDatatype is the datatype of output of operation step: as the op
// table says, or, with asInput true, that of the step's input x
// (reshape, transpose).
func (p *Plan) OpDatatype(step, output string) (dt tensor.Datatype, asInput bool) {
	switch op := p.Ops[step].(type) {
	case *reshape, *transpose:
		return tensor.Invalid, true
	case *cast:
		return op.to, false
	case *topk:
		switch output {
		case "indices":
			return tensor.Int64, false
		case "labels":
			return tensor.Bytes, false
		}
	case *ctcDecode:
		if output == "text" {
			return tensor.Bytes, false
		}
	case decodeImage, *resizeImage, *cropImage:
		return tensor.Uint8, false
	}
	return tensor.FP32, false
}

// Encode is the state as it travels with a job: its values as a V2
// binary request (the tensors named by their Ref), and the steps done.
func (s *State) Encode() (data []byte, headerLen int, done []string, err error) {
	req := &tensor.Request{Inputs: make([]tensor.Tensor, 0, len(s.Values))}
	for _, ref := range sortedKeys(s.Values) {
		t := s.Values[ref]
		t.Name = ref
		req.Inputs = append(req.Inputs, t)
	}
	for name, ok := range s.Done {
		if ok {
			done = append(done, name)
		}
	}
	slices.Sort(done)
	if len(req.Inputs) == 0 {
		return nil, 0, done, nil
	}
	data, headerLen, err = req.MarshalBinary()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("encode pipeline state: %w", err)
	}
	return data, headerLen, done, nil
}

// DecodeState reads a state that Encode wrote.
func DecodeState(data []byte, headerLen int, done []string, lim tensor.Limits) (*State, error) {
	s := &State{Values: map[string]tensor.Tensor{}, Done: map[string]bool{}}
	for _, name := range done {
		s.Done[name] = true
	}
	if len(data) == 0 {
		return s, nil
	}
	req, err := tensor.DecodeBinaryRequest(data, headerLen, lim)
	if err != nil {
		return nil, fmt.Errorf("decode pipeline state: %w", err)
	}
	for _, t := range req.Inputs {
		if _, err := ParseRef(t.Name); err != nil {
			return nil, fmt.Errorf("decode pipeline state: %w", err)
		}
		s.Values[t.Name] = t
	}
	return s, nil
}

// FormatDone and ParseDone write the steps done as they travel in a
// message header: names joined by ",".
func FormatDone(done []string) string { return strings.Join(done, ",") }

// ParseDone reads what FormatDone wrote.
func ParseDone(h string) []string {
	if h == "" {
		return nil
	}
	return strings.Split(h, ",")
}

// Prune drops the values of s that no step still to run reads, nor the
// pipeline's outputs; running is a step about to run elsewhere, which
// takes its inputs with it: what only it reads is dropped too.
func (p *Plan) Prune(s *State, running string) {
	needed := map[string]bool{}
	for _, v := range p.Spec.Outputs {
		needed[v] = true
	}
	for _, st := range p.Spec.Steps {
		if s.Done[st.Name] || st.Name == running {
			continue
		}
		for _, v := range st.Inputs {
			needed[v] = true
		}
	}
	for ref := range s.Values {
		if !needed[ref] {
			delete(s.Values, ref)
		}
	}
}
