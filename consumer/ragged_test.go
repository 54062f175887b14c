package consumer

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/tensor"
)

// shapes records the shape of each run's first input.
type shapes struct {
	s    session
	runs [][]int64
}

func (r *shapes) Run(in []tensor.Tensor) ([]tensor.Tensor, error) {
	r.runs = append(r.runs, slices.Clone(in[0].Shape))
	return r.s.Run(in)
}

// TestRunnerRagged: with config ragged, each row of a job runs cut to its
// own length (past its trailing padding, rounded up), rows of equal
// length from any job together, in ONNX Runtime: a row's mean is over its
// own values, never the padding, and the outputs listed come back padded
// with zeros to the job's longest row.
func TestRunnerRagged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lengthmean.onnx")
	if err := os.WriteFile(path, onnxbuild.LengthMean(), 0o644); err != nil {
		t.Fatal(err)
	}
	rt := testenv.Runtime(t)
	sig, err := rt.Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := rt.NewSession(path, sig, onnx.SessionOptions{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	row := func(width int, vals ...float32) []float32 { return append(vals, make([]float32, width-len(vals))...) }
	job := func(m *model.Model, width int, rows ...[]float32) *item {
		var data []float32
		for _, r := range rows {
			data = append(data, row(width, r...)...)
		}
		return &item{job: &jobs.Job{ID: "j", Request: &tensor.Request{}}, model: m,
			inputs: []tensor.Tensor{fp32("x", []int64{int64(len(rows)), int64(width)}, data...)}, rows: len(rows)}
	}
	type want struct {
		y     []float32
		shape []int64
		mean  []float32
	}
	for _, tc := range []struct {
		name     string
		ragged   model.Ragged
		maxBatch int
		runs     [][]int64 // the shapes run, in order
		want     []want    // per job: [1,2,3] [4] padded to 5; [5,6] to 3; nothing to 2
		err      string
	}{{
		name:     "each row at its own length",
		ragged:   model.Ragged{Input: "x", Axis: 1, Outputs: map[string]int{"y": 1}},
		maxBatch: 8,
		runs:     [][]int64{{2, 1}, {1, 2}, {1, 3}},
		want: []want{
			{[]float32{2, 4, 6, 8, 0, 0}, []int64{2, 3}, []float32{2, 4}},
			{[]float32{10, 12}, []int64{1, 2}, []float32{5.5}},
			{[]float32{0}, []int64{1, 1}, []float32{0}},
		},
	}, {
		name:     "a run holds at most the max batch size",
		ragged:   model.Ragged{Input: "x", Axis: 1, Outputs: map[string]int{"y": 1}},
		maxBatch: 1,
		runs:     [][]int64{{1, 1}, {1, 1}, {1, 2}, {1, 3}},
		want: []want{
			{[]float32{2, 4, 6, 8, 0, 0}, []int64{2, 3}, []float32{2, 4}},
			{[]float32{10, 12}, []int64{1, 2}, []float32{5.5}},
			{[]float32{0}, []int64{1, 1}, []float32{0}},
		},
	}, {
		name:     "lengths rounded up, never past the job's own",
		ragged:   model.Ragged{Input: "x", Axis: 1, MultipleOf: 4, Outputs: map[string]int{"y": 1}},
		maxBatch: 8,
		runs:     [][]int64{{1, 2}, {1, 3}, {2, 4}},
		want: []want{
			{[]float32{2, 4, 6, 0, 8, 0, 0, 0}, []int64{2, 4}, []float32{1.5, 1}},
			{[]float32{10, 12, 0}, []int64{1, 3}, []float32{11.0 / 3}},
			{[]float32{0, 0}, []int64{1, 2}, []float32{0}},
		},
	}, {
		name:     "an output of the rows' lengths not listed does not join",
		ragged:   model.Ragged{Input: "x", Axis: 1},
		maxBatch: 8,
		err:      "list each output",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			rg := tc.ragged
			m := &model.Model{Name: "m", Version: 1, Inputs: sig.Inputs, Outputs: sig.Outputs, Stackable: true, Batchable: true, Batched: []bool{true},
				Config: model.Config{Ragged: &rg}}
			items := []*item{job(m, 5, []float32{1, 2, 3}, []float32{4}), job(m, 3, []float32{5, 6}), job(m, 2, nil)}
			s := &shapes{s: sess}
			metrics, err := NewMetrics(prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			r := &runner{name: "m", policy: batching.Policy{MaxBatchSize: tc.maxBatch},
				sessions: map[int64]session{1: s}, metrics: metrics, log: slog.New(slog.DiscardHandler)}
			outs, _, err := r.infer(m, items)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("infer = %v, want an error saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(s.runs, tc.runs, slices.Equal) {
				t.Errorf("runs of shapes %v, want %v", s.runs, tc.runs)
			}
			for i, w := range tc.want {
				y, mean := outs[i][0], outs[i][1]
				if y.Name != "y" || !slices.Equal(y.Shape, w.shape) || !slices.Equal(floats(y), w.y) {
					t.Errorf("job %d: %s %v = %v, want y %v = %v", i, y.Name, y.Shape, floats(y), w.shape, w.y)
				}
				if got := floats(mean); !slices.Equal(got, w.mean) {
					t.Errorf("job %d: mean %v, want %v", i, got, w.mean)
				}
			}
		})
	}
}
