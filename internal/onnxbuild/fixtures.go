package onnxbuild

// Small models, each the shape of a case a real exported model presents to
// a batching server. Tests run them through inferq and through ONNX
// Runtime directly and compare.

// Elem pairs an ONNX element type with the V2 datatype name it travels as.
type Elem struct {
	Type int
	V2   string
}

// Elems returns every element type the V2 protocol carries.
func Elems() []Elem {
	return []Elem{
		{Bool, "BOOL"}, {Uint8, "UINT8"}, {Uint16, "UINT16"}, {Uint32, "UINT32"}, {Uint64, "UINT64"},
		{Int8, "INT8"}, {Int16, "INT16"}, {Int32, "INT32"}, {Int64, "INT64"},
		{Float16, "FP16"}, {Float, "FP32"}, {Double, "FP64"}, {String, "BYTES"},
	}
}

// Identities passes one input of each element type, in_<V2 name> shaped
// [batch, 2], through to out_<V2 name>.
func Identities() []byte {
	m := New("identities")
	for _, e := range Elems() {
		in, out := "in_"+e.V2, "out_"+e.V2
		m.Input(in, e.Type, -1, 2)
		m.Output(out, e.Type, -1, 2)
		m.Node("Identity", []string{in}, []string{out})
	}
	return m.Bytes()
}

// Conditioned has a batched input next to inputs that are not: y =
// x*temperature + bias, where x is [batch, 4], temperature a scalar and
// bias a fixed [4]. Requests may be batched only with others that carry
// the same temperature and bias.
func Conditioned() []byte {
	m := New("conditioned")
	m.Input("x", Float, -1, 4)
	m.Input("temperature", Float)
	m.Input("bias", Float, 4)
	m.Output("y", Float, -1, 4)
	m.Node("Mul", []string{"x", "temperature"}, []string{"scaled"})
	m.Node("Add", []string{"scaled", "bias"}, []string{"y"})
	return m.Bytes()
}

// Total reduces x [batch, 3] to a scalar sum: an output that cannot be
// split back per request, so the model runs one request at a time.
func Total() []byte {
	m := New("total")
	m.Input("x", Float, -1, 3)
	m.Output("sum", Float)
	m.Node("ReduceSum", []string{"x"}, []string{"sum"}, Int("keepdims", 0))
	return m.Bytes()
}

// Recurrent is one step of a recurrent cell with its state laid out
// [layers, batch, hidden] (batch on the second axis, as ONNX's RNN, GRU and
// LSTM take it): h' = tanh(h + x), y = h'[0]. The state input and output
// have a fixed first dimension.
func Recurrent() []byte {
	m := New("recurrent")
	m.Input("x", Float, -1, 4)
	m.Input("h", Float, 1, -1, 4)
	m.Output("y", Float, -1, 4)
	m.Output("h_next", Float, 1, -1, 4)
	m.Node("Add", []string{"h", "x"}, []string{"sum"})
	m.Node("Tanh", []string{"sum"}, []string{"h_next"})
	m.Int64s("zero", []int64{1}, []int64{0})
	m.Node("Squeeze", []string{"h_next", "zero"}, []string{"y"})
	return m.Bytes()
}

// StateOnAxis1 takes a state laid out [1, batch, 4] and returns only
// y = tanh(h + x)[0], whose first dimension is the batch. Stacking x while
// sharing one request's h would broadcast that state over every row and
// return wrong answers without an error, so the model must not be
// batched: its metadata says so only through the input.
func StateOnAxis1() []byte {
	m := New("state_on_axis_1")
	m.Input("x", Float, -1, 4)
	m.Input("h", Float, 1, -1, 4)
	m.Output("y", Float, -1, 4)
	m.Node("Add", []string{"h", "x"}, []string{"sum"})
	m.Node("Tanh", []string{"sum"}, []string{"h_next"})
	m.Int64s("zero", []int64{1}, []int64{0})
	m.Node("Squeeze", []string{"h_next", "zero"}, []string{"y"})
	return m.Bytes()
}

// SeqFirst is a running sum over a sequence laid out [seq, batch, 4], as
// recurrent nets are without batch_first, with its axes so named: y[t] is
// the sum of x[0..t]. Stacked along its first axis, requests would run as
// one long sequence, each summing the ones before it, without an error:
// only the axis names say that the batch is on the second.
func SeqFirst() []byte {
	m := New("seq_first")
	m.InputNamed("x", Float, []string{"seq", "batch"}, -1, -1, 4)
	m.OutputNamed("y", Float, []string{"seq", "batch"}, -1, -1, 4)
	m.Int64s("axis", nil, []int64{0})
	m.Node("CumSum", []string{"x", "axis"}, []string{"y"})
	return m.Bytes()
}

// Boxes scales a request's boxes by the sum of its image: image [batch,
// 4] and boxes [num_boxes, 2] to y [num_boxes, 2]. Both inputs have a
// dynamic first axis, but different ones, as their names say: one request
// sends one image with any number of boxes, and stacking would scale one
// request's boxes by the sum of every image in the run.
func Boxes() []byte {
	m := New("boxes")
	m.InputNamed("image", Float, []string{"batch"}, -1, 4)
	m.InputNamed("boxes", Float, []string{"num_boxes"}, -1, 2)
	m.OutputNamed("y", Float, []string{"num_boxes"}, -1, 2)
	m.Node("ReduceSum", []string{"image"}, []string{"total"}, Int("keepdims", 0))
	m.Node("Mul", []string{"boxes", "total"}, []string{"y"})
	return m.Bytes()
}

// Lookup gathers rows of a fixed 10x3 table by index: idx INT64 [batch]
// to y [batch, 3]. An index outside 0..9 makes ONNX Runtime fail the run,
// which is how tests put one bad request into a batch.
func Lookup() []byte { return LookupRows(10) }

// LookupRows is Lookup with a table of n rows, row i holding 3i, 3i+1
// and 3i+2.
func LookupRows(n int) []byte {
	m := New("lookup")
	m.Input("idx", Int64, -1)
	m.Output("y", Float, -1, 3)
	table := make([]float32, 3*n)
	for i := range table {
		table[i] = float32(i)
	}
	m.Floats("table", []int64{int64(n), 3}, table)
	m.Node("Gather", []string{"table", "idx"}, []string{"y"}, Int("axis", 0))
	return m.Bytes()
}

// FivesSum sums x [batch, width] in groups of five: y [batch, width/5].
// A width that is not a multiple of five fails the run.
func FivesSum() []byte {
	m := New("fives_sum")
	m.Input("x", Float, -1, -1)
	m.Output("y", Float, -1, -1)
	m.Int64s("fives", []int64{3}, []int64{0, -1, 5})
	m.Int64s("last", []int64{1}, []int64{2})
	m.Node("Reshape", []string{"x", "fives"}, []string{"grouped"})
	m.Node("ReduceSum", []string{"grouped", "last"}, []string{"y"}, Int("keepdims", 0))
	return m.Bytes()
}

// RowSum sums each row of x [batch, width] with a dynamic width: requests
// of different widths cannot share a run.
func RowSum() []byte {
	m := New("rowsum")
	m.Input("x", Float, -1, -1)
	m.Output("y", Float, -1)
	m.Int64s("axes", []int64{1}, []int64{1})
	m.Node("ReduceSum", []string{"x", "axes"}, []string{"y"}, Int("keepdims", 0))
	return m.Bytes()
}

// Flattened declares an output with a dynamic first dimension that is not
// the batch: x [batch, 4] flattens to y [4*batch]. Its metadata promises a
// split that the run does not deliver.
func Flattened() []byte {
	m := New("flattened")
	m.Input("x", Float, -1, 4)
	m.Output("y", Float, -1)
	m.Int64s("shape", []int64{1}, []int64{-1})
	m.Node("Reshape", []string{"x", "shape"}, []string{"y"})
	return m.Bytes()
}

// MaskedSum is a sequence model that ignores padding: x and mask are
// [batch, length] with a dynamic length; y = x*mask per position and
// total = the sum of y over the length. Padding x and mask with zeros
// changes neither, once y is trimmed back.
func MaskedSum() []byte {
	m := New("maskedsum")
	m.Input("x", Float, -1, -1)
	m.Input("mask", Float, -1, -1)
	m.Output("y", Float, -1, -1)
	m.Output("total", Float, -1)
	m.Node("Mul", []string{"x", "mask"}, []string{"y"})
	m.Int64s("axes", []int64{1}, []int64{1})
	m.Node("ReduceSum", []string{"y", "axes"}, []string{"total"}, Int("keepdims", 0))
	return m.Bytes()
}

// BatchCentered subtracts the batch's mean from each row: x [batch, 4]
// gives y = x - mean(x over the batch). Its outputs depend on which rows
// share a run, which is why such a model is served with max_batch_size 1:
// run a row at a time, every y is zero.
func BatchCentered() []byte {
	m := New("batchcentered")
	m.Input("x", Float, -1, 4)
	m.Output("y", Float, -1, 4)
	m.Node("ReduceMean", []string{"x"}, []string{"mean"}, Ints("axes", 0), Int("keepdims", 1))
	m.Node("Sub", []string{"x", "mean"}, []string{"y"})
	return m.Bytes()
}

// TableLookup gathers rows of a table the request gives: table [10, 3]
// (fixed: shared by a batch) and idx INT64 [batch] to y [batch, 3]. An
// index outside 0..9 makes ONNX Runtime fail the run.
func TableLookup() []byte {
	m := New("tablelookup")
	m.Input("table", Float, 10, 3)
	m.Input("idx", Int64, -1)
	m.Output("y", Float, -1, 3)
	m.Node("Gather", []string{"table", "idx"}, []string{"y"}, Int("axis", 0))
	return m.Bytes()
}

// Shapeless doubles x, whose type gives no shape at all (no rank): a
// request may send any shape, and nothing tells where a batch axis would
// be, so it runs one request at a time.
func Shapeless() []byte {
	m := New("shapeless")
	m.InputAnyShape("x", Float)
	m.OutputAnyShape("y", Float)
	m.Floats("two", nil, []float32{2})
	m.Node("Mul", []string{"x", "two"}, []string{"y"})
	return m.Bytes()
}

// Classifier takes what the iris model takes and answers as it does (x
// [batch, 4] to probabilities [batch, 3] and label INT64 [batch]), by a
// linear layer of weights w (4x3, row-major) and a softmax: a version of
// iris that disagrees with it, for the rollout tests.
func Classifier(w []float32) []byte {
	m := New("classifier")
	m.Input("x", Float, -1, 4)
	m.Output("probabilities", Float, -1, 3)
	m.Output("label", Int64, -1)
	m.Floats("w", []int64{4, 3}, w)
	m.Node("MatMul", []string{"x", "w"}, []string{"scores"})
	m.Node("Softmax", []string{"scores"}, []string{"probabilities"}, Int("axis", 1))
	m.Node("ArgMax", []string{"scores"}, []string{"label"}, Int("axis", 1), Int("keepdims", 0))
	return m.Bytes()
}

// LengthMean takes x [batch, length] with a dynamic length and gives y =
// 2x, of x's length, and mean, the mean of each row over the length:
// padding a row changes its mean, so it tells whether a row ran at its
// own length.
func LengthMean() []byte {
	m := New("lengthmean")
	m.Input("x", Float, -1, -1)
	m.Output("y", Float, -1, -1)
	m.Output("mean", Float, -1)
	m.Floats("two", nil, []float32{2})
	m.Node("Mul", []string{"x", "two"}, []string{"y"})
	m.Node("ReduceMean", []string{"x"}, []string{"mean"}, Ints("axes", 1), Int("keepdims", 0))
	return m.Bytes()
}
