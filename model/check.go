package model

import (
	"fmt"
	"slices"
	"strings"

	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/tensor"
)

// Check validates a request against the model's inputs and outputs and
// returns the number of rows it carries along the batch dimension (1 for a
// model that is not stackable), at most the max batch size. Every error is
// the client's to fix.
func (m *Model) Check(req *tensor.Request) (rows int, err error) {
	return m.CheckRows(req, m.Config.MaxBatchSize)
}

// PackedRows is the most rows a job packed from a batch file's lines may
// carry, for a model whose workers can run a job in slices.
const PackedRows = 256

// Sliceable reports whether a job of more rows than the max batch size
// can run in slices of at most that many: every input is stacked along
// the batch dimension, none is shared. A max batch size of 1 does not
// stop it: such a job runs a row at a time.
func (m *Model) Sliceable() bool {
	return m.Stackable && !slices.Contains(m.Batched, false)
}

// MaxJobRows is the most rows a job of m may carry: for a sliceable model
// PackedRows, or the max batch size when that is more; for a model that
// cannot stack rows, PackedRows requests laid end to end (see
// batching.Pack), each run on its own; else the max batch size. Requests
// over HTTP are held to the max batch size; jobs packed from a batch
// file's lines may reach MaxJobRows.
func (m *Model) MaxJobRows() int {
	switch {
	case m.Sliceable():
		return max(m.Config.MaxBatchSize, PackedRows)
	case !m.Stackable:
		return PackedRows
	}
	return m.Config.MaxBatchSize
}

// CheckRows is Check with maxRows in place of the max batch size.
func (m *Model) CheckRows(req *tensor.Request, maxRows int) (rows int, err error) {
	if m.Pipeline != nil {
		return m.checkPipeline(req)
	}
	for i := range req.Inputs {
		if m.input(req.Inputs[i].Name) == nil {
			return 0, fmt.Errorf("input %q is not an input of model %q (inputs: %s)", req.Inputs[i].Name, m.Name, ioNames(m.Inputs))
		}
	}
	in, err := m.OrderedInputs(req)
	if err != nil {
		return 0, err
	}
	rows = 1
	first := "" // the first batched input
	for i, spec := range m.Inputs {
		t := &in[i]
		if err := spec.Accepts(t); err != nil {
			return 0, err
		}
		if !m.Stackable || !m.Batched[i] {
			continue
		}
		n := int(t.Shape[0])
		if first == "" {
			rows, first = n, spec.Name
		} else if n != rows {
			return 0, fmt.Errorf("input %q has batch dimension %d but input %q has %d; all inputs must agree", spec.Name, n, first, rows)
		}
	}
	if m.Stackable {
		if rows == 0 {
			return 0, fmt.Errorf("batch dimension is 0; send at least one row")
		}
		if rows > maxRows {
			return 0, fmt.Errorf("batch dimension %d exceeds the model's max batch size %d; split the request", rows, maxRows)
		}
	}
	for _, name := range req.Outputs {
		if m.output(name) == nil {
			return 0, fmt.Errorf("output %q is not an output of model %q (outputs: %s)", name, m.Name, ioNames(m.Outputs))
		}
	}
	return rows, nil
}

// OrderedInputs is req's inputs in the model's input order, or an error
// naming the first input req lacks.
func (m *Model) OrderedInputs(req *tensor.Request) ([]tensor.Tensor, error) {
	if m.Pipeline != nil && len(m.Inputs) == 0 {
		return req.Inputs, nil // takes what it is sent
	}
	in := make([]tensor.Tensor, len(m.Inputs))
	for i, spec := range m.Inputs {
		t := req.Input(spec.Name)
		if t == nil {
			return nil, fmt.Errorf("input %q is missing (model %q takes %s)", spec.Name, m.Name, ioNames(m.Inputs))
		}
		in[i] = *t
	}
	return in, nil
}

func (m *Model) input(name string) *tensor.Spec {
	for i := range m.Inputs {
		if m.Inputs[i].Name == name {
			return &m.Inputs[i].Spec
		}
	}
	return nil
}

func (m *Model) output(name string) *tensor.Spec {
	for i := range m.Outputs {
		if m.Outputs[i].Name == name {
			return &m.Outputs[i].Spec
		}
	}
	return nil
}

func ioNames(ios []onnx.IO) string {
	names := make([]string, len(ios))
	for i, io := range ios {
		names[i] = fmt.Sprintf("%q", io.Name)
	}
	return strings.Join(names, ", ")
}

// checkPipeline checks a request to a pipeline: against the inputs its
// pipeline.yaml declares, when it declares them; its steps check the
// rest as they run. Its rows are its first input's first dimension.
func (m *Model) checkPipeline(req *tensor.Request) (rows int, err error) {
	if len(req.Inputs) == 0 {
		return 0, fmt.Errorf("the request has no inputs; pipeline %q takes %s", m.Name, pipelineInputs(m))
	}
	if len(m.Inputs) > 0 {
		for i := range req.Inputs {
			if m.input(req.Inputs[i].Name) == nil {
				return 0, fmt.Errorf("input %q is not an input of pipeline %q (inputs: %s)", req.Inputs[i].Name, m.Name, ioNames(m.Inputs))
			}
		}
		in, err := m.OrderedInputs(req)
		if err != nil {
			return 0, err
		}
		for i, spec := range m.Inputs {
			if err := spec.Accepts(&in[i]); err != nil {
				return 0, err
			}
		}
	}
	for _, name := range req.Outputs {
		if m.output(name) == nil {
			return 0, fmt.Errorf("output %q is not an output of pipeline %q (outputs: %s)", name, m.Name, ioNames(m.Outputs))
		}
	}
	if s := req.Inputs[0].Shape; len(s) > 0 {
		return int(s[0]), nil
	}
	return 1, nil
}

func pipelineInputs(m *Model) string {
	if len(m.Inputs) == 0 {
		return "the inputs its steps read"
	}
	return ioNames(m.Inputs)
}
