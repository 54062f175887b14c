package pipeline

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/inferq/inferq/tensor"
)

// Op is a built-in operation, its parameters checked. Run is a pure
// function of its inputs; it may be called concurrently.
type Op interface {
	Inputs() []string
	Outputs() []string
	Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error)
}

// Ops lists the built-in tensor operations, for docs and tests.
var Ops = []string{"affine", "reshape", "transpose", "cast", "window", "reduce", "softmax", "topk", "ctc_decode",
	"image.decode", "image.resize", "image.normalize", "text.boxes", "image.crop", "audio.decode"}

// NewOp builds operation name with its parameters; dir is the pipeline's
// folder, where the files it names (labels, a dictionary) are read. An
// unknown operation, an unknown or missing parameter, or one of the wrong
// kind is an error that says which.
func NewOp(name string, with map[string]any, dir string) (Op, error) {
	op, p := build(name, with, dir)
	if op == nil {
		return nil, fmt.Errorf("unknown op %q (built-in: %s)", name, strings.Join(Ops, ", "))
	}
	if err := p.finish(); err != nil {
		return nil, err
	}
	if v, ok := op.(interface{ check() error }); ok {
		if err := v.check(); err != nil {
			return nil, fmt.Errorf("op %s: %w", name, err)
		}
	}
	return op, nil
}

// Params are the parameters operation name reads, sorted: what the op
// reference documents (a test holds the two together).
func Params(name string) []string {
	_, p := build(name, map[string]any{}, "")
	return sortedKeys(p.used)
}

// build makes operation name from its parameters, noting in the params
// returned each parameter it reads and the first error; nil for an
// unknown operation.
func build(name string, with map[string]any, dir string) (Op, *params) {
	p := &params{op: name, with: with, used: map[string]bool{}}
	var op Op
	switch name {
	case "affine":
		op = &affine{mul: p.number("mul", 1), add: p.number("add", 0)}
	case "reshape":
		op = &reshape{shape: p.ints("shape", nil)}
	case "transpose":
		op = &transpose{perm: p.ints("perm", nil)}
	case "cast":
		op = &cast{to: p.datatype("to")}
	case "window":
		op = &window{axis: p.integer("axis", nil), size: p.integer("size", nil), stride: p.integer("stride", ptr(int64(1)))}
	case "reduce":
		op = &reduce{op: p.choice("op", "max", "min", "mean", "sum"), axis: p.integer("axis", nil)}
	case "softmax":
		op = &softmax{axis: p.integer("axis", ptr(int64(-1)))}
	case "topk":
		t := &topk{k: p.integer("k", nil), axis: p.integer("axis", ptr(int64(-1)))}
		if f := p.text("labels", ""); f != "" {
			t.labels = p.lines(dir, "labels", f)
		}
		op = t
	case "image.decode":
		op = decodeImage{}
	case "image.resize":
		r := &resizeImage{maxSide: p.integer("max_side", ptr(int64(0))), multipleOf: p.integer("multiple_of", ptr(int64(0)))}
		if size := p.ints("size", []int64{}); len(size) == 2 {
			r.h, r.w = size[0], size[1]
		} else if len(size) != 0 {
			p.fail("size: want [h, w]")
		}
		op = r
	case "image.normalize":
		n := &normalizeImage{scale: p.number("scale", 1), mean: p.floats("mean", []float64{0, 0, 0}), std: p.floats("std", []float64{1, 1, 1})}
		switch layout := p.text("layout", "NCHW"); layout {
		case "NCHW", "NHWC":
			n.nchw = layout == "NCHW"
		default:
			p.fail("layout: want NCHW or NHWC, got %q", layout)
		}
		op = n
	case "text.boxes":
		op = &textBoxes{threshold: p.number("threshold", 0.3), boxThreshold: p.number("box_threshold", 0.6),
			unclipRatio: p.number("unclip_ratio", 1.5), minSize: p.number("min_size", 3), maxCandidates: 1000}
	case "image.crop":
		op = &cropImage{height: p.integer("height", ptr(int64(48))), maxWidth: p.integer("max_width", ptr(int64(0)))}
	case "audio.decode":
		op = &decodeAudio{rate: p.integer("rate", nil)}
	case "ctc_decode":
		c := &ctcDecode{blank: p.integer("blank", ptr(int64(0))), space: p.flag("space", false)}
		c.dict = p.lines(dir, "dict", p.text("dict", ""))
		if c.space {
			c.dict = append(c.dict, " ")
		}
		op = c
	}
	return op, p
}

// one is an op of one input x and one output y.
type one struct{}

func (one) Inputs() []string  { return []string{"x"} }
func (one) Outputs() []string { return []string{"y"} }

// values reads a numeric tensor's elements as float64.
func values(t tensor.Tensor) ([]float64, error) {
	size := t.Datatype.Size()
	if t.Datatype == tensor.Bytes || t.Datatype == tensor.FP16 || size == 0 {
		return nil, fmt.Errorf("%s is %s: want a numeric tensor", t.Name, t.Datatype)
	}
	n := len(t.Data) / size
	if int64(n) != tensor.NumElements(t.Shape) {
		return nil, fmt.Errorf("%s: %d elements for shape %s", t.Name, n, tensor.FormatShape(t.Shape))
	}
	out := make([]float64, n)
	le := binary.LittleEndian
	for i := range out {
		b := t.Data[i*size:]
		switch t.Datatype {
		case tensor.Bool, tensor.Uint8:
			out[i] = float64(b[0])
		case tensor.Int8:
			out[i] = float64(int8(b[0]))
		case tensor.Uint16:
			out[i] = float64(le.Uint16(b))
		case tensor.Int16:
			out[i] = float64(int16(le.Uint16(b)))
		case tensor.Uint32:
			out[i] = float64(le.Uint32(b))
		case tensor.Int32:
			out[i] = float64(int32(le.Uint32(b)))
		case tensor.Uint64:
			out[i] = float64(le.Uint64(b))
		case tensor.Int64:
			out[i] = float64(int64(le.Uint64(b)))
		case tensor.FP32:
			out[i] = float64(math.Float32frombits(le.Uint32(b)))
		case tensor.FP64:
			out[i] = math.Float64frombits(le.Uint64(b))
		}
	}
	return out, nil
}

// encode writes values as datatype dt.
func encode(name string, dt tensor.Datatype, shape []int64, v []float64) tensor.Tensor {
	size := dt.Size()
	data := make([]byte, len(v)*size)
	le := binary.LittleEndian
	for i, f := range v {
		b := data[i*size:]
		switch dt {
		case tensor.Bool:
			if f != 0 {
				b[0] = 1
			}
		case tensor.Uint8:
			b[0] = uint8(clamp(f, 0, math.MaxUint8))
		case tensor.Int8:
			b[0] = uint8(int8(clamp(f, math.MinInt8, math.MaxInt8)))
		case tensor.Uint16:
			le.PutUint16(b, uint16(clamp(f, 0, math.MaxUint16)))
		case tensor.Int16:
			le.PutUint16(b, uint16(int16(clamp(f, math.MinInt16, math.MaxInt16))))
		case tensor.Uint32:
			le.PutUint32(b, uint32(clamp(f, 0, math.MaxUint32)))
		case tensor.Int32:
			le.PutUint32(b, uint32(int32(clamp(f, math.MinInt32, math.MaxInt32))))
		case tensor.Uint64:
			le.PutUint64(b, uint64(clamp(f, 0, math.MaxUint64)))
		case tensor.Int64:
			le.PutUint64(b, uint64(int64(clamp(f, math.MinInt64, math.MaxInt64))))
		case tensor.FP32:
			le.PutUint32(b, math.Float32bits(float32(f)))
		case tensor.FP64:
			le.PutUint64(b, math.Float64bits(f))
		}
	}
	return tensor.Tensor{Name: name, Datatype: dt, Shape: slices.Clone(shape), Data: data}
}

// clamp bounds f to [lo, hi] and truncates it toward zero, as a cast to
// an integer type does; NaN becomes 0.
func clamp(f, lo, hi float64) float64 {
	switch {
	case math.IsNaN(f):
		return 0
	case f < lo:
		return lo
	case f > hi:
		return hi
	}
	return math.Trunc(f)
}

// axisOf normalises a possibly negative axis of a tensor of rank dims.
func axisOf(axis int64, dims int) (int, error) {
	a := int(axis)
	if a < 0 {
		a += dims
	}
	if a < 0 || a >= dims {
		return 0, fmt.Errorf("axis %d is outside a tensor of %d dimensions", axis, dims)
	}
	return a, nil
}

// strides is the element stride of each axis of shape, row-major.
func strides(shape []int64) []int64 {
	s := make([]int64, len(shape))
	n := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		s[i] = n
		n *= shape[i]
	}
	return s
}

type affine struct {
	one
	mul, add float64
}

func (a *affine) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	v, err := values(x)
	if err != nil {
		return nil, err
	}
	for i := range v {
		v[i] = v[i]*a.mul + a.add
	}
	return map[string]tensor.Tensor{"y": encode("y", tensor.FP32, x.Shape, v)}, nil
}

type reshape struct {
	one
	shape []int64
}

func (r *reshape) check() error {
	if slices.ContainsFunc(r.shape, func(d int64) bool { return d < -1 }) || countOf(r.shape, -1) > 1 {
		return fmt.Errorf("shape %v: dimensions are sizes, with at most one -1", r.shape)
	}
	return nil
}

func countOf(s []int64, v int64) int {
	n := 0
	for _, e := range s {
		if e == v {
			n++
		}
	}
	return n
}

func (r *reshape) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	n := tensor.NumElements(x.Shape)
	shape := slices.Clone(r.shape)
	known := int64(1)
	free := -1
	for i, d := range shape {
		if d == -1 {
			free = i
		} else {
			known *= d
		}
	}
	if free >= 0 {
		if known == 0 || n%known != 0 {
			return nil, fmt.Errorf("cannot reshape %s into %v", tensor.FormatShape(x.Shape), r.shape)
		}
		shape[free] = n / known
	} else if known != n {
		return nil, fmt.Errorf("cannot reshape %s (%d elements) into %v", tensor.FormatShape(x.Shape), n, r.shape)
	}
	return map[string]tensor.Tensor{"y": {Name: "y", Datatype: x.Datatype, Shape: shape, Data: x.Data}}, nil
}

type transpose struct {
	one
	perm []int64
}

func (t *transpose) check() error {
	seen := make([]bool, len(t.perm))
	for _, p := range t.perm {
		if p < 0 || int(p) >= len(t.perm) || seen[p] {
			return fmt.Errorf("perm %v is not a permutation of the axes 0 to %d", t.perm, len(t.perm)-1)
		}
		seen[p] = true
	}
	return nil
}

func (t *transpose) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	if len(x.Shape) != len(t.perm) {
		return nil, fmt.Errorf("perm %v for a tensor of %d dimensions", t.perm, len(x.Shape))
	}
	size := x.Datatype.Size()
	if size == 0 {
		return nil, fmt.Errorf("%s is %s: transpose takes fixed-size elements", x.Name, x.Datatype)
	}
	shape := make([]int64, len(t.perm))
	for i, p := range t.perm {
		shape[i] = x.Shape[p]
	}
	src := strides(x.Shape)
	n := tensor.NumElements(shape)
	out := make([]byte, len(x.Data))
	idx := make([]int64, len(shape))
	for o := int64(0); o < n; o++ {
		var from int64
		for i, p := range t.perm {
			from += idx[i] * src[p]
		}
		copy(out[o*int64(size):], x.Data[from*int64(size):(from+1)*int64(size)])
		for i := len(idx) - 1; i >= 0; i-- { // the next index, row-major
			if idx[i]++; idx[i] < shape[i] {
				break
			}
			idx[i] = 0
		}
	}
	return map[string]tensor.Tensor{"y": {Name: "y", Datatype: x.Datatype, Shape: shape, Data: out}}, nil
}

type cast struct {
	one
	to tensor.Datatype
}

func (c *cast) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	v, err := values(x)
	if err != nil {
		return nil, err
	}
	return map[string]tensor.Tensor{"y": encode("y", c.to, x.Shape, v)}, nil
}

type window struct {
	one
	axis, size, stride int64
}

func (w *window) check() error {
	if w.size <= 0 || w.stride <= 0 {
		return fmt.Errorf("size %d and stride %d must be positive", w.size, w.stride)
	}
	return nil
}

func (w *window) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	axis, err := axisOf(w.axis, len(x.Shape))
	if err != nil {
		return nil, err
	}
	size := int64(x.Datatype.Size())
	if size == 0 {
		return nil, fmt.Errorf("%s is %s: window takes fixed-size elements", x.Name, x.Datatype)
	}
	l := x.Shape[axis]
	count := int64(0)
	if l >= w.size {
		count = (l-w.size)/w.stride + 1
	}
	outer := tensor.NumElements(x.Shape[:axis])
	inner := tensor.NumElements(x.Shape[axis+1:]) * size // bytes of one step along the axis
	shape := append([]int64{count}, x.Shape...)
	shape[axis+1] = w.size
	out := make([]byte, 0, count*outer*w.size*inner)
	for k := int64(0); k < count; k++ {
		start := k * w.stride
		for o := int64(0); o < outer; o++ {
			base := o * l * inner
			out = append(out, x.Data[base+start*inner:base+(start+w.size)*inner]...)
		}
	}
	return map[string]tensor.Tensor{"y": {Name: "y", Datatype: x.Datatype, Shape: shape, Data: out}}, nil
}

// alongAxis calls fn with the elements of each line of v along axis, by
// their indexes in v.
func alongAxis(shape []int64, axis int, fn func(line []int64)) {
	l := shape[axis]
	outer := tensor.NumElements(shape[:axis])
	inner := tensor.NumElements(shape[axis+1:])
	line := make([]int64, l)
	for o := int64(0); o < outer; o++ {
		for i := int64(0); i < inner; i++ {
			for j := range line {
				line[j] = (o*l+int64(j))*inner + i
			}
			fn(line)
		}
	}
}

type reduce struct {
	one
	op   string
	axis int64
}

func (r *reduce) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	v, err := values(x)
	if err != nil {
		return nil, err
	}
	axis, err := axisOf(r.axis, len(x.Shape))
	if err != nil {
		return nil, err
	}
	if x.Shape[axis] == 0 && r.op != "sum" {
		return nil, fmt.Errorf("%s of an empty axis", r.op)
	}
	var out []float64
	alongAxis(x.Shape, axis, func(line []int64) {
		acc := 0.0
		switch r.op {
		case "max":
			acc = math.Inf(-1)
		case "min":
			acc = math.Inf(1)
		}
		for _, i := range line {
			switch r.op {
			case "max":
				acc = math.Max(acc, v[i])
			case "min":
				acc = math.Min(acc, v[i])
			default:
				acc += v[i]
			}
		}
		if r.op == "mean" {
			acc /= float64(len(line))
		}
		out = append(out, acc)
	})
	shape := slices.Delete(slices.Clone(x.Shape), axis, axis+1)
	return map[string]tensor.Tensor{"y": encode("y", tensor.FP32, shape, out)}, nil
}

type softmax struct {
	one
	axis int64
}

func (s *softmax) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	v, err := values(x)
	if err != nil {
		return nil, err
	}
	axis, err := axisOf(s.axis, len(x.Shape))
	if err != nil {
		return nil, err
	}
	alongAxis(x.Shape, axis, func(line []int64) {
		m := math.Inf(-1)
		for _, i := range line {
			m = math.Max(m, v[i])
		}
		sum := 0.0
		for _, i := range line {
			v[i] = math.Exp(v[i] - m)
			sum += v[i]
		}
		for _, i := range line {
			v[i] /= sum
		}
	})
	return map[string]tensor.Tensor{"y": encode("y", tensor.FP32, x.Shape, v)}, nil
}

type topk struct {
	k, axis int64
	labels  []string
}

func (t *topk) check() error {
	if t.k <= 0 {
		return fmt.Errorf("k %d must be positive", t.k)
	}
	return nil
}

func (t *topk) Inputs() []string { return []string{"x"} }
func (t *topk) Outputs() []string {
	if t.labels != nil {
		return []string{"values", "indices", "labels"}
	}
	return []string{"values", "indices"}
}

func (t *topk) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	v, err := values(x)
	if err != nil {
		return nil, err
	}
	axis, err := axisOf(t.axis, len(x.Shape))
	if err != nil {
		return nil, err
	}
	k := min(t.k, x.Shape[axis])
	shape := slices.Clone(x.Shape)
	shape[axis] = k
	// Outputs laid out as x is, with k along the axis.
	n := tensor.NumElements(shape)
	vals, idx := make([]float64, n), make([]float64, n)
	var labels []byte
	if t.labels != nil {
		labels = make([]byte, 0, n*8)
	}
	inner := tensor.NumElements(x.Shape[axis+1:])
	line := 0
	order := make([]int, x.Shape[axis])
	var labelOf []string
	if t.labels != nil {
		labelOf = make([]string, n)
	}
	alongAxis(x.Shape, axis, func(elems []int64) {
		for j := range order {
			order[j] = j
		}
		sort.SliceStable(order, func(a, b int) bool { return v[elems[order[a]]] > v[elems[order[b]]] })
		o, i := int64(line)/inner, int64(line)%inner
		for r := int64(0); r < k; r++ {
			at := (o*k+r)*inner + i
			vals[at] = v[elems[order[r]]]
			idx[at] = float64(order[r])
			if labelOf != nil {
				c := order[r]
				if c < len(t.labels) {
					labelOf[at] = t.labels[c]
				} else {
					labelOf[at] = fmt.Sprint(c)
				}
			}
		}
		line++
	})
	out := map[string]tensor.Tensor{
		"values":  encode("values", tensor.FP32, shape, vals),
		"indices": encode("indices", tensor.Int64, shape, idx),
	}
	if labelOf != nil {
		for _, l := range labelOf {
			labels = tensor.AppendBytesElement(labels, []byte(l))
		}
		out["labels"] = tensor.Tensor{Name: "labels", Datatype: tensor.Bytes, Shape: shape, Data: labels}
	}
	return out, nil
}

type ctcDecode struct {
	dict  []string
	blank int64
	space bool
}

func (c *ctcDecode) Inputs() []string  { return []string{"x"} }
func (c *ctcDecode) Outputs() []string { return []string{"text", "score"} }

// Run decodes [N, T, C] class probabilities greedily: the best class at
// each step, repeats collapsed, blanks dropped; class i (i > 0) is the
// dictionary's line i. The score is the mean probability of the classes
// kept (0 for an empty text).
func (c *ctcDecode) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	if len(x.Shape) != 3 {
		return nil, fmt.Errorf("ctc_decode takes [N, T, C], got %s", tensor.FormatShape(x.Shape))
	}
	n, steps, classes := x.Shape[0], x.Shape[1], x.Shape[2]
	if c.blank < 0 || c.blank >= classes {
		return nil, fmt.Errorf("blank %d is not one of the %d classes", c.blank, classes)
	}
	// The best class of each step. FP32 (what recognizers give) is read
	// in place: converting [N, T, C] of thousands of classes to float64
	// first took most of the operation's time.
	var argmax func(step int64) (int64, float64)
	if x.Datatype == tensor.FP32 {
		if int64(len(x.Data)) != n*steps*classes*4 {
			return nil, fmt.Errorf("ctc_decode: %d bytes for FP32 of shape %s", len(x.Data), tensor.FormatShape(x.Shape))
		}
		argmax = func(step int64) (int64, float64) {
			row := x.Data[step*classes*4 : (step+1)*classes*4]
			bestV, best := math.Float32frombits(binary.LittleEndian.Uint32(row)), int64(0)
			for j := int64(1); j < classes; j++ {
				if e := math.Float32frombits(binary.LittleEndian.Uint32(row[j*4:])); e > bestV {
					bestV, best = e, j
				}
			}
			return best, float64(bestV)
		}
	} else {
		v, err := values(x)
		if err != nil {
			return nil, err
		}
		argmax = func(step int64) (int64, float64) {
			row := v[step*classes : (step+1)*classes]
			best := int64(0)
			for j := range row {
				if row[j] > row[best] {
					best = int64(j)
				}
			}
			return best, row[best]
		}
	}
	var texts []byte
	scores := make([]float64, n)
	for i := int64(0); i < n; i++ {
		var text strings.Builder
		sum, kept := 0.0, 0
		prev := int64(-1)
		for t := int64(0); t < steps; t++ {
			best, p := argmax(i*steps + t)
			if best != prev && best != c.blank {
				// Classes are the dictionary's entries after the blank.
				k := best - 1
				if best < c.blank {
					k = best
				}
				if k >= 0 && int(k) < len(c.dict) {
					text.WriteString(c.dict[k])
				}
				sum += p
				kept++
			}
			prev = best
		}
		if kept > 0 {
			scores[i] = sum / float64(kept)
		}
		texts = tensor.AppendBytesElement(texts, []byte(text.String()))
	}
	return map[string]tensor.Tensor{
		"text":  {Name: "text", Datatype: tensor.Bytes, Shape: []int64{n}, Data: texts},
		"score": encode("score", tensor.FP32, []int64{n}, scores),
	}, nil
}
