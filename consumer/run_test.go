package consumer

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/tensor"
)

// poison, as a row's first value, fails any run that holds the row, as a
// bad request fails ONNX Runtime.
const poison = -1

// doubler is a fake session of a model from x [rows, 2] to y: y is x
// doubled, row by row, so that each job's outputs say whose inputs they
// came from. With flat set, y is instead one value, the sum of x, which
// does not follow the batch dimension and so cannot be split per job.
type doubler struct {
	flat bool
	runs []int // the rows of each run, in order
}

func (d *doubler) Run(in []tensor.Tensor) ([]tensor.Tensor, error) {
	x := floats(in[0])
	d.runs = append(d.runs, int(in[0].Shape[0]))
	for row := 0; row < len(x); row += 2 {
		if x[row] == poison {
			return nil, errors.New("poisoned row")
		}
	}
	if d.flat {
		var sum float32
		for _, v := range x {
			sum += v
		}
		return []tensor.Tensor{fp32("y", []int64{1}, sum)}, nil
	}
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = 2 * v
	}
	return []tensor.Tensor{fp32("y", slices.Clone(in[0].Shape), y...)}, nil
}

func fp32(name string, shape []int64, v ...float32) tensor.Tensor {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return tensor.Tensor{Name: name, Datatype: tensor.FP32, Shape: shape, Data: b}
}

func floats(t tensor.Tensor) []float32 {
	v := make([]float32, len(t.Data)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return v
}

// rowsOf is x for rows whose two values are each of vals.
func rowsOf(vals []float32) tensor.Tensor {
	var x []float32
	for _, v := range vals {
		x = append(x, v, v)
	}
	return fp32("x", []int64{int64(len(vals)), 2}, x...)
}

func TestRunnerStrategies(t *testing.T) {
	batchable := &model.Model{Name: "m", Version: 1, Stackable: true, Batchable: true, Batched: []bool{true}}
	// job is a job of one request whose rows are vals.
	job := func(vals ...float32) *item {
		return &item{job: &jobs.Job{ID: "j", Request: &tensor.Request{}}, model: batchable, inputs: []tensor.Tensor{rowsOf(vals)}, rows: len(vals)}
	}
	// lines is a job of requests laid end to end, each of the rows given.
	lines := func(reqs ...[]float32) *item {
		it := job()
		it.inputs, it.rows = nil, 0
		for _, vals := range reqs {
			it.lines = append(it.lines, []tensor.Tensor{rowsOf(vals)})
			it.lineRows = append(it.lineRows, len(vals))
			it.rows += len(vals)
		}
		return it
	}
	// stacked is a job stacked from requests of the rows given, as a
	// batch file's lines are packed.
	stacked := func(reqs ...[]float32) *item {
		it := job(slices.Concat(reqs...)...)
		for _, vals := range reqs {
			it.lineRows = append(it.lineRows, len(vals))
		}
		return it
	}
	doubled := func(vals ...float32) []float32 {
		var y []float32
		for _, v := range vals {
			y = append(y, 2*v, 2*v)
		}
		return y
	}
	for _, tc := range []struct {
		name     string
		maxBatch int
		flat     bool
		items    []*item
		runs     []int       // rows per session run
		want     [][]float32 // y per job; nil where the job fails
		failed   float64     // failed runs counted
		linesBad []int       // per job, how many of its requests failed
		noBatch  bool        // batching switched off for the version
	}{{
		name: "a batch runs once", maxBatch: 8,
		items: []*item{job(1), job(2, 3), job(4)},
		runs:  []int{4},
		want:  [][]float32{doubled(1), doubled(2, 3), doubled(4)},
	}, {
		name: "a bad job fails alone, found by halving", maxBatch: 8,
		items:  []*item{job(1), job(2), job(poison), job(4)},
		runs:   []int{4, 2, 2, 1, 1},
		want:   [][]float32{doubled(1), doubled(2), nil, doubled(4)},
		failed: 3,
	}, {
		name: "outputs that do not split run each job alone, and batching stops", maxBatch: 8, flat: true,
		items:   []*item{job(1), job(2)},
		runs:    []int{2, 1, 1},
		want:    [][]float32{{2}, {4}},
		noBatch: true,
	}, {
		name: "a job over the max batch size runs in slices", maxBatch: 2,
		items: []*item{job(1, 2, 3, 4, 5)},
		runs:  []int{2, 2, 1},
		want:  [][]float32{doubled(1, 2, 3, 4, 5)},
	}, {
		name: "slices whose outputs do not join run the job whole", maxBatch: 2, flat: true,
		items: []*item{job(1, 2, 3, 4, 5)},
		runs:  []int{2, 2, 1, 5},
		want:  [][]float32{{30}},
	}, {
		name: "requests laid end to end share a run", maxBatch: 8,
		items: []*item{lines([]float32{1}, []float32{2, 3}, []float32{4})},
		runs:  []int{4},
		want:  [][]float32{doubled(1, 2, 3, 4)},
	}, {
		name: "requests laid end to end share runs of at most the max batch size", maxBatch: 2,
		items: []*item{lines([]float32{1}, []float32{2}, []float32{3}, []float32{4})},
		runs:  []int{2, 2},
		want:  [][]float32{doubled(1, 2, 3, 4)},
	}, {
		name: "a bad request laid end to end fails alone", maxBatch: 8,
		items:    []*item{lines([]float32{1}, []float32{poison}, []float32{3})},
		runs:     []int{3, 1, 1, 1},
		want:     [][]float32{doubled(1, 3)},
		failed:   2,
		linesBad: []int{1},
	}, {
		name: "a job whose every request fails fails", maxBatch: 8,
		items:  []*item{lines([]float32{poison}, []float32{poison})},
		runs:   []int{2, 1, 1},
		want:   [][]float32{nil},
		failed: 4,
	}, {
		name: "a stacked job that fails is cut back into its requests", maxBatch: 8,
		items:    []*item{stacked([]float32{1}, []float32{poison, 3})},
		runs:     []int{3, 3, 1, 2},
		want:     [][]float32{doubled(1)},
		failed:   2,
		linesBad: []int{1},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := &doubler{flat: tc.flat}
			metrics, err := NewMetrics(prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			r := &runner{
				name: "m", policy: batching.Policy{MaxBatchSize: tc.maxBatch},
				sessions: map[int64]session{1: s}, metrics: metrics, log: slog.New(slog.DiscardHandler),
			}
			ran := r.run(tc.items)
			if !slices.Equal(s.runs, tc.runs) {
				t.Errorf("runs of %v rows, want %v", s.runs, tc.runs)
			}
			for i, it := range tc.items {
				if tc.want[i] == nil {
					if ran.errs[i] == nil {
						t.Errorf("job %d: no error, want one", i)
					}
					continue
				}
				if ran.errs[i] != nil {
					t.Errorf("job %d: %v", i, ran.errs[i])
					continue
				}
				if got := floats(ran.outputs[i][0]); !slices.Equal(got, tc.want[i]) {
					t.Errorf("job %d: y = %v, want %v", i, got, tc.want[i])
				}
				bad := 0
				if tc.linesBad != nil {
					bad = tc.linesBad[i]
				}
				if it.linesFailed != bad {
					t.Errorf("job %d: %d requests failed, want %d", i, it.linesFailed, bad)
				}
				if bad > 0 && !strings.Contains(string(it.params), "poisoned row") {
					t.Errorf("job %d: parameters %s do not say why its request failed", i, it.params)
				}
			}
			if got := counted(t, metrics.failedRuns.WithLabelValues("m")); got != tc.failed {
				t.Errorf("%v failed runs counted, want %v", got, tc.failed)
			}
			if got := r.unbatched(batchable); got != tc.noBatch {
				t.Errorf("batching switched off: %v, want %v", got, tc.noBatch)
			}
		})
	}
}

func TestRunnerVersionNotLoaded(t *testing.T) {
	metrics, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{name: "m", policy: batching.Policy{MaxBatchSize: 4}, sessions: map[int64]session{}, metrics: metrics, log: slog.New(slog.DiscardHandler)}
	m := &model.Model{Name: "m", Version: 3, Stackable: true, Batchable: true, Batched: []bool{true}}
	it := &item{job: &jobs.Job{ID: "j", Request: &tensor.Request{}}, model: m, inputs: []tensor.Tensor{rowsOf([]float32{1})}, rows: 1}
	ran := r.run([]*item{it})
	if ran.errs[0] == nil || !strings.Contains(ran.errs[0].Error(), "version 3 is not loaded") {
		t.Fatalf("err = %v, want version 3 is not loaded", ran.errs[0])
	}
}

func counted(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// The buffers batches are stacked into come back empty, with room for what
// was asked, rounded up to a power of two so that batches of nearby sizes
// share them.
func TestStackBuffers(t *testing.T) {
	var p stackBuffers
	for _, tc := range []struct{ n, cap int }{{1, 1}, {3, 4}, {4, 4}, {110_592, 131_072}, {16 * 110_592, 2_097_152}} {
		b := p.get(tc.n)
		if len(b) != 0 || cap(b) < tc.n {
			t.Fatalf("get(%d): len %d cap %d", tc.n, len(b), cap(b))
		}
		if cap(b) == tc.n || cap(b) == tc.cap {
			p.put(append(b, 1))
			continue
		}
		t.Fatalf("get(%d) made a buffer of %d bytes, want %d", tc.n, cap(b), tc.cap)
	}
	if b := p.get(100); len(b) != 0 || cap(b) < 100 {
		t.Fatalf("a buffer given back came out with len %d cap %d", len(b), cap(b))
	}
}
