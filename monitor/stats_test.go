package monitor

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/inferq/inferq/tensor"
)

func f32(shape []int64, vs ...float32) tensor.Tensor {
	t := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: shape}
	for _, v := range vs {
		t.Data = binary.LittleEndian.AppendUint32(t.Data, math.Float32bits(v))
	}
	return t
}

func TestObserve(t *testing.T) {
	var s Stats
	x := f32([]int64{2, 3}, 1, 2, 3, float32(math.NaN()), float32(math.Inf(1)), -6)
	s.Observe(&x, false)
	if s.Count != 4 || s.NaN != 1 || s.Inf != 1 || s.Min != -6 || s.Max != 3 || s.Mean() != 0 || s.Classes != nil {
		t.Errorf("stats %+v", s)
	}
	if got := math.Sqrt((1 + 4 + 9 + 36) / 4.0); math.Abs(s.Std()-got) > 1e-9 {
		t.Errorf("std %g, want %g", s.Std(), got)
	}
	var n int64
	for _, c := range s.Hist {
		n += c
	}
	if n != 4 {
		t.Errorf("histogram holds %d values, want 4", n)
	}

	// An output of scores per class: its rows' argmax are its classes.
	var scores Stats
	p := f32([]int64{3, 3}, 0.1, 0.7, 0.2, 0.9, 0.05, 0.05, 0.2, 0.3, 0.5)
	scores.Observe(&p, true)
	if scores.Classes["0"] != 1 || scores.Classes["1"] != 1 || scores.Classes["2"] != 1 {
		t.Errorf("argmax classes %v", scores.Classes)
	}
	// An integer label per row.
	var labels Stats
	l := tensor.Tensor{Name: "label", Datatype: tensor.Int64, Shape: []int64{3}}
	for _, v := range []int64{2, 2, 0} {
		l.Data = binary.LittleEndian.AppendUint64(l.Data, uint64(v))
	}
	labels.Observe(&l, true)
	if labels.Classes["2"] != 2 || labels.Classes["0"] != 1 {
		t.Errorf("label classes %v", labels.Classes)
	}
	// Strings are counted, not parsed.
	var strs Stats
	b := tensor.Tensor{Name: "s", Datatype: tensor.Bytes, Shape: []int64{2}, Data: tensor.AppendBytesElement(tensor.AppendBytesElement(nil, []byte("a")), []byte("bc"))}
	strs.Observe(&b, true)
	if strs.Values != 2 || strs.Count != 0 {
		t.Errorf("strings %+v", strs)
	}
}

// Classes are capped: past MaxClasses, values count as "other".
func TestClassCap(t *testing.T) {
	var s Stats
	l := tensor.Tensor{Name: "label", Datatype: tensor.Int64, Shape: []int64{200}}
	for v := range 200 {
		l.Data = binary.LittleEndian.AppendUint64(l.Data, uint64(v))
	}
	s.Observe(&l, true)
	if len(s.Classes) != MaxClasses+1 || s.Classes[Other] != 200-MaxClasses {
		t.Errorf("%d classes, other %d", len(s.Classes), s.Classes[Other])
	}
}

// Merging snapshots is the same as observing everything in one.
func TestMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	all := NewSnapshot("m", "1", "", time.Unix(0, 0))
	parts := []*Snapshot{NewSnapshot("m", "1", "", time.Unix(60, 0)), NewSnapshot("m", "1", "", time.Unix(0, 0))}
	for i := range 100 {
		x := f32([]int64{1, 2}, float32(rng.NormFloat64()), float32(rng.NormFloat64()*10))
		all.Observe(1, []tensor.Tensor{x}, nil)
		parts[i%2].Observe(1, []tensor.Tensor{x}, nil)
	}
	merged := NewSnapshot("m", "1", "", time.Unix(60, 0))
	for _, p := range parts {
		merged.Merge(p)
	}
	a, m := all.Inputs["x"], merged.Inputs["x"]
	if a.Count != m.Count || a.Min != m.Min || a.Max != m.Max || math.Abs(a.Sum-m.Sum) > 1e-9 || merged.Jobs != 100 || !merged.Start.Equal(time.Unix(0, 0)) {
		t.Fatalf("merged %+v, all %+v", m, a)
	}
	for i := range a.Hist {
		if a.Hist[i] != m.Hist[i] {
			t.Fatalf("bucket %d: %d vs %d", i, a.Hist[i], m.Hist[i])
		}
	}
}

// PSI is about 0 for two samples of one distribution and large for a
// shifted one; Compare says which tensors drifted.
func TestPSIAndCompare(t *testing.T) {
	sample := func(seed uint64, mean float64) *Snapshot {
		rng := rand.New(rand.NewPCG(seed, 3))
		s := NewSnapshot("m", "1", "", time.Time{})
		for range 2000 {
			v := mean + rng.NormFloat64()
			x := f32([]int64{1, 1}, float32(v))
			label := tensor.Tensor{Name: "label", Datatype: tensor.Int64, Shape: []int64{1}, Data: binary.LittleEndian.AppendUint64(nil, uint64(map[bool]int{true: 1, false: 0}[v > 5]))}
			s.Observe(1, []tensor.Tensor{x}, []tensor.Tensor{label})
		}
		return s
	}
	base, same, shifted := sample(1, 5), sample(2, 5), sample(3, 8)
	for _, tt := range []struct {
		name    string
		cur     *Snapshot
		drifted bool
	}{{"a second sample", same, false}, {"a shifted sample", shifted, true}} {
		d := Compare(base, tt.cur)
		if len(d) != 2 {
			t.Fatalf("%s: %+v", tt.name, d)
		}
		for _, x := range d {
			if x.Drifted != tt.drifted {
				t.Errorf("%s: %s %s drifted=%v (psi %v, class psi %v), want %v", tt.name, x.Kind, x.Tensor, x.Drifted, deref(x.PSI), deref(x.ClassPSI), tt.drifted)
			}
		}
	}
	if _, ok := PSI([]int64{0, 0}, []int64{1, 2}); ok {
		t.Error("PSI of an empty base")
	}
}

func deref(p *float64) float64 {
	if p == nil {
		return math.NaN()
	}
	return *p
}

// A large tensor's every element counts in the moments, extremes and
// non-finite counts; its histogram takes evenly spaced elements, at most
// HistSample, and keeps their shape.
func TestObserveSamplesLargeTensorsForTheHistogram(t *testing.T) {
	const n = 27648 // a 3×48×192 image
	vs := make([]float32, n)
	for i := range vs {
		vs[i] = float32(i%2 + 1) // half 1s, half 2s
	}
	vs[n-1] = float32(math.NaN()) // past every sampled element's neighbourhood
	vs[n-2] = 1e6                 // the maximum, not sampled
	// FP32 has a loop of its own; FP64 goes the general way.
	x64 := tensor.Tensor{Name: "x", Datatype: tensor.FP64, Shape: []int64{1, n}}
	for _, v := range vs {
		x64.Data = binary.LittleEndian.AppendUint64(x64.Data, math.Float64bits(float64(v)))
	}
	for _, x := range []tensor.Tensor{f32([]int64{1, n}, vs...), x64} {
		t.Run(x.Datatype.String(), func(t *testing.T) { checkSampled(t, &x, n) })
	}
}

func checkSampled(t *testing.T, x *tensor.Tensor, n int64) {
	var s Stats
	s.Observe(x, false)
	if s.Count != n-1 || s.NaN != 1 || s.Max != 1e6 || s.Min != 1 {
		t.Errorf("count %d, NaN %d, max %g, min %g; want %d, 1, 1e6, 1", s.Count, s.NaN, s.Max, s.Min, n-1)
	}
	var sampled, ones, twos int64
	for i, c := range s.Hist {
		sampled += c
		switch {
		case i == bucket(1):
			ones += c
		case i == bucket(2):
			twos += c
		}
	}
	if sampled > HistSample || sampled < HistSample/2 {
		t.Errorf("histogram holds %d values, want at most %d and not far fewer", sampled, HistSample)
	}
	// Evenly spaced samples of alternating values: both seen.
	if ones == 0 || twos == 0 || ones+twos != sampled {
		t.Errorf("histogram: %d ones, %d twos of %d", ones, twos, sampled)
	}
}

// BenchmarkObserveImage: the statistics of one 3×48×192 FP32 image, as a
// worker keeps them for each job of an image model.
func BenchmarkObserveImage(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	vs := make([]float32, 3*48*192)
	for i := range vs {
		vs[i] = rng.Float32()*2 - 1
	}
	x := f32([]int64{1, 3, 48, 192}, vs...)
	b.SetBytes(int64(len(x.Data)))
	var s Stats
	for b.Loop() {
		s.Observe(&x, false)
	}
}
