package monitor

import (
	"slices"
	"strings"
	"time"

	"github.com/inferq/inferq/tensor"
)

// Snapshot is what one worker saw of one model version in one minute
// (or, merged, in a window): the statistics of every input and output.
type Snapshot struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	// Batch is the batch file the jobs came from, "" for others: a
	// baseline may be taken from one batch.
	Batch  string    `json:"batch,omitempty"`
	Worker string    `json:"worker,omitempty"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	// Jobs and Rows counted.
	Jobs    int64             `json:"jobs"`
	Rows    int64             `json:"rows"`
	Inputs  map[string]*Stats `json:"inputs"`
	Outputs map[string]*Stats `json:"outputs"`
	// Agreement, in a shadow version's snapshot, is how its outputs
	// compared with the answering version's, by answering version.
	Agreement map[string]*Agreement `json:"agreement,omitempty"`
}

// NewSnapshot starts an empty snapshot.
func NewSnapshot(model, version, batch string, start time.Time) *Snapshot {
	return &Snapshot{Model: model, Version: version, Batch: batch, Start: start, End: start,
		Inputs: map[string]*Stats{}, Outputs: map[string]*Stats{}}
}

// Observe adds one job's rows, inputs and outputs.
func (s *Snapshot) Observe(rows int, inputs, outputs []tensor.Tensor) {
	s.Jobs++
	s.Rows += int64(rows)
	for i := range inputs {
		stat(s.Inputs, inputs[i].Name).Observe(&inputs[i], false)
	}
	for i := range outputs {
		stat(s.Outputs, outputs[i].Name).Observe(&outputs[i], true)
	}
}

func stat(m map[string]*Stats, name string) *Stats {
	st := m[name]
	if st == nil {
		st = &Stats{}
		m[name] = st
	}
	return st
}

// Merge adds o to s, widening its time span.
func (s *Snapshot) Merge(o *Snapshot) {
	if s.Start.IsZero() || o.Start.Before(s.Start) {
		s.Start = o.Start
	}
	if o.End.After(s.End) {
		s.End = o.End
	}
	s.Jobs += o.Jobs
	s.Rows += o.Rows
	for n, st := range o.Inputs {
		stat(s.Inputs, n).Merge(st)
	}
	for n, st := range o.Outputs {
		stat(s.Outputs, n).Merge(st)
	}
	for v, a := range o.Agreement {
		s.Compare(v).Merge(a)
	}
}

// Compare returns the agreement of the snapshot's version with answering
// version v, to add jobs to.
func (s *Snapshot) Compare(v string) *Agreement {
	if s.Agreement == nil {
		s.Agreement = map[string]*Agreement{}
	}
	a := s.Agreement[v]
	if a == nil {
		a = &Agreement{}
		s.Agreement[v] = a
	}
	return a
}

// Drift is a tensor's drift against a baseline.
type Drift struct {
	Kind   string `json:"kind"` // input or output
	Tensor string `json:"tensor"`
	// PSI of the values' histogram, and of the classes' shares where the
	// tensor has classes.
	PSI      *float64 `json:"psi,omitempty"`
	ClassPSI *float64 `json:"class_psi,omitempty"`
	// Drifted is PSI or ClassPSI over Threshold.
	Drifted bool `json:"drifted"`
}

// Threshold is the PSI past which a tensor has drifted: the usual 0.25.
const Threshold = 0.25

// Compare is the drift of every tensor of cur against base, sorted by
// kind and name; tensors with nothing to compare are left out.
func Compare(base, cur *Snapshot) []Drift {
	var out []Drift
	for _, side := range []struct {
		kind      string
		base, cur map[string]*Stats
	}{{"input", base.Inputs, cur.Inputs}, {"output", base.Outputs, cur.Outputs}} {
		for name, b := range side.base {
			c := side.cur[name]
			if c == nil {
				continue
			}
			d := Drift{Kind: side.kind, Tensor: name}
			if p, ok := PSI(b.Hist, c.Hist); ok {
				d.PSI = &p
				d.Drifted = p > Threshold
			}
			if p, ok := ClassPSI(b.Classes, c.Classes); ok {
				d.ClassPSI = &p
				d.Drifted = d.Drifted || p > Threshold
			}
			if d.PSI != nil || d.ClassPSI != nil {
				out = append(out, d)
			}
		}
	}
	slices.SortFunc(out, func(a, b Drift) int { return strings.Compare(a.Kind+"/"+a.Tensor, b.Kind+"/"+b.Tensor) })
	return out
}
