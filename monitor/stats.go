// Package monitor keeps statistics of what models are asked and answer:
// per tensor, count, mean and spread, extremes, non-finite values and a
// histogram over fixed buckets; per class-like output, the count of each
// class. Workers observe every run and publish a snapshot a minute; the
// API merges them into windows and compares a window with a baseline by
// the population stability index. Pure logic: no NATS, no storage.
package monitor

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"slices"
	"strconv"

	"github.com/x448/float16"

	"github.com/inferq/inferq/tensor"
)

// MaxClasses bounds the classes counted per output; past it, values count
// as "other".
const MaxClasses = 64

// Other is the class of values past MaxClasses.
const Other = "other"

// Edges are the histogram's bucket bounds, fixed so that histograms of
// any process and any time add up and compare: 0, and ±10^(k/8) for k
// from -24 to 32 (1e-3 to 1e4, eight buckets a decade, each about a third
// wider than the last). Bucket i holds values in [Edges[i-1], Edges[i]);
// the first and last are open.
var Edges = func() []float64 {
	var pos []float64
	for k := -24; k <= 32; k++ {
		pos = append(pos, math.Pow(10, float64(k)/8))
	}
	out := make([]float64, 0, 2*len(pos)+1)
	for i := len(pos) - 1; i >= 0; i-- {
		out = append(out, -pos[i])
	}
	out = append(out, 0)
	return append(out, pos...)
}()

// bucket is the histogram bucket of a finite v.
func bucket(v float64) int {
	i, _ := slices.BinarySearch(Edges, v)
	if i < len(Edges) && Edges[i] == v {
		i++
	}
	return i
}

// Stats are the statistics of one tensor over many rows. The zero value
// is empty; Observe and Merge add to it. The histogram samples large
// tensors (see HistSample): its counts are in proportion, not equal, to
// Count.
type Stats struct {
	Datatype string `json:"datatype"`
	// Count is the finite numbers seen; NaN and Inf count them apart.
	Count int64   `json:"count"`
	Sum   float64 `json:"sum"`
	SumSq float64 `json:"sum_sq"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	NaN   int64   `json:"nan,omitempty"`
	Inf   int64   `json:"inf,omitempty"`
	// Hist counts the finite values per bucket of Edges (len(Edges)+1).
	Hist []int64 `json:"hist,omitempty"`
	// Classes counts the class of each row, for class-like outputs (an
	// integer label per row, or the argmax of a [rows, classes] float
	// output).
	Classes map[string]int64 `json:"classes,omitempty"`
	// Values counts elements that are not numbers (strings, sequences,
	// maps): counted, not parsed.
	Values int64 `json:"values,omitempty"`
}

// MarshalJSON writes the statistics with their mean and standard
// deviation.
func (s Stats) MarshalJSON() ([]byte, error) {
	type plain Stats
	return json.Marshal(struct {
		plain
		Mean float64 `json:"mean"`
		Std  float64 `json:"std"`
	}{plain(s), s.Mean(), s.Std()})
}

// Mean is the mean of the finite values.
func (s *Stats) Mean() float64 {
	if s.Count == 0 {
		return 0
	}
	return s.Sum / float64(s.Count)
}

// Std is their standard deviation.
func (s *Stats) Std() float64 {
	if s.Count == 0 {
		return 0
	}
	m := s.Mean()
	return math.Sqrt(math.Max(0, s.SumSq/float64(s.Count)-m*m))
}

// HistSample is the most elements of one tensor of one job that go into
// the histogram; a larger tensor (an image) contributes evenly spaced
// elements. Every element still counts in the moments, the extremes and
// the non-finite counts, which cost little; placing one in its bucket
// costs more, and on every pixel of every image it took a third of a
// serving process's CPU.
const HistSample = 1024

// add counts a finite or non-finite v in the moments and extremes, and
// in the histogram when hist is set.
func (s *Stats) add(v float64, hist bool) {
	switch {
	case math.IsNaN(v):
		s.NaN++
		return
	case math.IsInf(v, 0):
		s.Inf++
		return
	}
	if s.Count == 0 || v < s.Min {
		s.Min = v
	}
	if s.Count == 0 || v > s.Max {
		s.Max = v
	}
	s.Count++
	s.Sum += v
	s.SumSq += v * v
	if !hist {
		return
	}
	if s.Hist == nil {
		s.Hist = make([]int64, len(Edges)+1)
	}
	s.Hist[bucket(v)]++
}

// addFloat32s is add for each FP32 element of d, in a loop of its own:
// images and embeddings are FP32, and a call per element through Observe's
// accessor cost as much again as the arithmetic.
func (s *Stats) addFloat32s(d []byte, step int) {
	var count, nan, inf int64
	var sum, sumSq float64
	lo, hi := math.Inf(1), math.Inf(-1)
	n := len(d) / 4
	for k := range n {
		v := float64(math.Float32frombits(binary.LittleEndian.Uint32(d[4*k:])))
		if v-v != 0 { // NaN or ±Inf
			if v != v {
				nan++
			} else {
				inf++
			}
			continue
		}
		count++
		sum += v
		sumSq += v * v
		if v < lo {
			lo = v
		}
		if v > hi {
			hi = v
		}
	}
	s.NaN += nan
	s.Inf += inf
	if count > 0 {
		if s.Count == 0 || lo < s.Min {
			s.Min = lo
		}
		if s.Count == 0 || hi > s.Max {
			s.Max = hi
		}
		s.Count += count
		s.Sum += sum
		s.SumSq += sumSq
	}
	for i := 0; i+4 <= len(d); i += 4 * step {
		v := float64(math.Float32frombits(binary.LittleEndian.Uint32(d[i:])))
		if v-v != 0 {
			continue
		}
		if s.Hist == nil {
			s.Hist = make([]int64, len(Edges)+1)
		}
		s.Hist[bucket(v)]++
	}
}

func (s *Stats) class(c string) {
	if s.Classes == nil {
		s.Classes = map[string]int64{}
	}
	if _, ok := s.Classes[c]; !ok && len(s.Classes) >= MaxClasses {
		c = Other
	}
	s.Classes[c]++
}

// classOf names an integer class without allocating for the small ones.
func classOf(v float64) string {
	if v >= 0 && v < float64(len(smallClasses)) && v == math.Trunc(v) {
		return smallClasses[int(v)]
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

var smallClasses = func() []string {
	out := make([]string, MaxClasses)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}()

// Observe adds a tensor's elements, and for an output, the class of each
// of its rows where it looks like a classifier's: an integer tensor of
// one value per row (a label), or a float tensor of [rows, 2..64] (class
// scores, whose argmax is the class).
func (s *Stats) Observe(t *tensor.Tensor, output bool) {
	s.Datatype = t.Datatype.String()
	f, n := numbers(t)
	if f == nil { // BYTES, and what travels as them (sequences, maps)
		if elems, err := tensor.SplitBytes(t.Data); err == nil {
			s.Values += int64(len(elems))
		}
		return
	}
	step := (n + HistSample - 1) / HistSample // 1 up to HistSample elements
	if t.Datatype == tensor.FP32 {
		s.addFloat32s(t.Data[:4*n], step)
	} else {
		next := 0
		for i := range n {
			hist := i == next
			if hist {
				next += step
			}
			s.add(f(i), hist)
		}
	}
	if output {
		for _, c := range rowClasses(t, f, n) {
			s.class(classOf(float64(c)))
		}
	}
}

// numbers returns a reader of a numeric tensor's elements as float64 and
// their count; nil for BYTES.
func numbers(t *tensor.Tensor) (func(i int) float64, int) {
	d, le := t.Data, binary.LittleEndian
	var f func(i int) float64
	switch t.Datatype {
	case tensor.Bool, tensor.Uint8:
		f = func(i int) float64 { return float64(d[i]) }
	case tensor.Int8:
		f = func(i int) float64 { return float64(int8(d[i])) }
	case tensor.Uint16:
		f = func(i int) float64 { return float64(le.Uint16(d[2*i:])) }
	case tensor.Int16:
		f = func(i int) float64 { return float64(int16(le.Uint16(d[2*i:]))) }
	case tensor.Uint32:
		f = func(i int) float64 { return float64(le.Uint32(d[4*i:])) }
	case tensor.Int32:
		f = func(i int) float64 { return float64(int32(le.Uint32(d[4*i:]))) }
	case tensor.Uint64:
		f = func(i int) float64 { return float64(le.Uint64(d[8*i:])) }
	case tensor.Int64:
		f = func(i int) float64 { return float64(int64(le.Uint64(d[8*i:]))) }
	case tensor.FP16:
		f = func(i int) float64 { return float64(float16.Frombits(le.Uint16(d[2*i:])).Float32()) }
	case tensor.FP32:
		f = func(i int) float64 { return float64(math.Float32frombits(le.Uint32(d[4*i:]))) }
	case tensor.FP64:
		f = func(i int) float64 { return math.Float64frombits(le.Uint64(d[8*i:])) }
	default:
		return nil, 0
	}
	return f, len(d) / t.Datatype.Size()
}

// rowClasses is the class of each row of an output that looks like a
// classifier's: an integer tensor of one value per row (a label), or a
// float tensor of [rows, 2..64] (class scores, whose argmax is the
// class). Nil for any other output.
func rowClasses(t *tensor.Tensor, f func(int) float64, n int) []int64 {
	if f == nil || len(t.Shape) == 0 || t.Shape[0] <= 0 {
		return nil
	}
	rows := int(t.Shape[0])
	switch {
	case t.Datatype != tensor.FP16 && t.Datatype != tensor.FP32 && t.Datatype != tensor.FP64 && t.Datatype != tensor.Bool && n == rows:
		out := make([]int64, rows)
		for i := range rows {
			out[i] = int64(f(i))
		}
		return out
	case (t.Datatype == tensor.FP32 || t.Datatype == tensor.FP64 || t.Datatype == tensor.FP16) && len(t.Shape) == 2 && t.Shape[1] >= 2 && t.Shape[1] <= MaxClasses && n == rows*int(t.Shape[1]):
		c := int(t.Shape[1])
		out := make([]int64, rows)
		for r := range rows {
			best := 0
			for j := 1; j < c; j++ {
				if f(r*c+j) > f(r*c+best) {
					best = j
				}
			}
			out[r] = int64(best)
		}
		return out
	}
	return nil
}

// Merge adds o to s.
func (s *Stats) Merge(o *Stats) {
	if o == nil {
		return
	}
	if s.Datatype == "" {
		s.Datatype = o.Datatype
	}
	if o.Count > 0 {
		if s.Count == 0 || o.Min < s.Min {
			s.Min = o.Min
		}
		if s.Count == 0 || o.Max > s.Max {
			s.Max = o.Max
		}
	}
	s.Count += o.Count
	s.Sum += o.Sum
	s.SumSq += o.SumSq
	s.NaN += o.NaN
	s.Inf += o.Inf
	s.Values += o.Values
	if o.Hist != nil {
		if s.Hist == nil {
			s.Hist = make([]int64, len(Edges)+1)
		}
		for i, c := range o.Hist {
			if i < len(s.Hist) {
				s.Hist[i] += c
			}
		}
	}
	for c, n := range o.Classes {
		if s.Classes == nil {
			s.Classes = map[string]int64{}
		}
		if _, ok := s.Classes[c]; !ok && len(s.Classes) >= MaxClasses {
			c = Other
		}
		s.Classes[c] += n
	}
}

// PSI is the population stability index of cur against base, over the
// histogram's buckets (and for classes, over the classes), each share
// floored at 1e-4 so that an empty bucket does not make it infinite: the
// sum of (cur - base) * ln(cur / base). Under 0.1 is stable, 0.1 to 0.25
// a shift worth a look, over 0.25 a drift. ok is false where either side
// has nothing to compare.
func PSI(base, cur []int64) (psi float64, ok bool) {
	var nb, nc int64
	for i := range base {
		nb += base[i]
	}
	for i := range cur {
		nc += cur[i]
	}
	if nb == 0 || nc == 0 || len(base) != len(cur) {
		return 0, false
	}
	for i := range base {
		b := math.Max(float64(base[i])/float64(nb), 1e-4)
		c := math.Max(float64(cur[i])/float64(nc), 1e-4)
		psi += (c - b) * math.Log(c/b)
	}
	return psi, true
}

// ClassPSI is PSI over the classes of base and cur.
func ClassPSI(base, cur map[string]int64) (float64, bool) {
	var keys []string
	for k := range base {
		keys = append(keys, k)
	}
	for k := range cur {
		if _, ok := base[k]; !ok {
			keys = append(keys, k)
		}
	}
	b, c := make([]int64, len(keys)), make([]int64, len(keys))
	for i, k := range keys {
		b[i], c[i] = base[k], cur[k]
	}
	return PSI(b, c)
}
