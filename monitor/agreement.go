package monitor

import (
	"bytes"

	"github.com/inferq/inferq/tensor"
)

// Agreement is how a shadow version's outputs compared with those of the
// version that answered the same jobs: per output, for class-like outputs
// (a label per row, or class scores: see Stats.Observe) the rows of the
// same class, for the others the mean absolute difference of their
// values, element by element. An output the two give in different
// datatypes or shapes is counted as compared and differing (Mismatched).
type Agreement struct {
	Jobs    int64                       `json:"jobs"`
	Outputs map[string]*OutputAgreement `json:"outputs"`
}

// OutputAgreement is one output's part of an Agreement.
type OutputAgreement struct {
	// Rows compared by class, and those whose classes are equal.
	Rows  int64 `json:"rows,omitempty"`
	Equal int64 `json:"equal,omitempty"`
	// Values compared element by element, and the sum of the absolute
	// differences of the numeric ones (BYTES elements count as equal or
	// not: a difference of 1 each).
	Values  int64   `json:"values,omitempty"`
	AbsDiff float64 `json:"abs_diff,omitempty"`
	// Mismatched counts the jobs whose two outputs could not be compared
	// (another datatype or shape, or missing from one).
	Mismatched int64 `json:"mismatched,omitempty"`
}

// Compare adds one job: shadow's outputs against answer's.
func (a *Agreement) Compare(shadow, answer []tensor.Tensor) {
	a.Jobs++
	if a.Outputs == nil {
		a.Outputs = map[string]*OutputAgreement{}
	}
	for i := range answer {
		want := &answer[i]
		o := a.Outputs[want.Name]
		if o == nil {
			o = &OutputAgreement{}
			a.Outputs[want.Name] = o
		}
		var got *tensor.Tensor
		for j := range shadow {
			if shadow[j].Name == want.Name {
				got = &shadow[j]
			}
		}
		if got == nil || got.Datatype != want.Datatype || !equalShape(got.Shape, want.Shape) {
			o.Mismatched++
			continue
		}
		fg, n := numbers(got)
		fw, _ := numbers(want)
		if fg == nil { // BYTES
			ge, err1 := tensor.SplitBytes(got.Data)
			we, err2 := tensor.SplitBytes(want.Data)
			if err1 != nil || err2 != nil || len(ge) != len(we) {
				o.Mismatched++
				continue
			}
			for k := range we {
				o.Values++
				if !bytes.Equal(ge[k], we[k]) {
					o.AbsDiff++
				}
			}
			continue
		}
		if cg, cw := rowClasses(got, fg, n), rowClasses(want, fw, n); cw != nil && len(cg) == len(cw) {
			for k := range cw {
				o.Rows++
				if cg[k] == cw[k] {
					o.Equal++
				}
			}
			continue
		}
		for k := range n {
			o.Values++
			d := fg(k) - fw(k)
			if d < 0 {
				d = -d
			}
			o.AbsDiff += d
		}
	}
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Merge adds o to a.
func (a *Agreement) Merge(o *Agreement) {
	a.Jobs += o.Jobs
	if a.Outputs == nil {
		a.Outputs = map[string]*OutputAgreement{}
	}
	for name, x := range o.Outputs {
		y := a.Outputs[name]
		if y == nil {
			y = &OutputAgreement{}
			a.Outputs[name] = y
		}
		y.Rows += x.Rows
		y.Equal += x.Equal
		y.Values += x.Values
		y.AbsDiff += x.AbsDiff
		y.Mismatched += x.Mismatched
	}
}

// LabelAgreement is the share of rows of equal classes over the
// class-like outputs; false when there were none.
func (a *Agreement) LabelAgreement() (float64, bool) {
	var rows, equal int64
	for _, o := range a.Outputs {
		rows += o.Rows
		equal += o.Equal
	}
	if rows == 0 {
		return 0, false
	}
	return float64(equal) / float64(rows), true
}

// MeanAbsDiff is the mean absolute difference over the other outputs'
// values; false when there were none.
func (a *Agreement) MeanAbsDiff() (float64, bool) {
	var values int64
	var diff float64
	for _, o := range a.Outputs {
		values += o.Values
		diff += o.AbsDiff
	}
	if values == 0 {
		return 0, false
	}
	return diff / float64(values), true
}
