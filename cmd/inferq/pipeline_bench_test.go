package main

import (
	"bufio"
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/inferq/inferq/batching"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/tensor"
)

// benchPipelineYAML: two compute-bound models with operations before,
// between and after them.
const benchPipelineYAML = `
inputs: [{name: x, datatype: FP32, shape: [-1, 512]}]
steps:
  - {name: scale, op: affine, with: {mul: 0.5, add: 0.1}, inputs: {x: $x}}
  - {name: first, model: first, inputs: {x: scale.y}}
  - {name: norm, op: softmax, inputs: {x: first.y}}
  - {name: second, model: second, inputs: {x: norm.y}}
  - {name: best, op: topk, with: {k: 5}, inputs: {x: second.y}}
outputs: {values: best.values, indices: best.indices}
`

// BenchmarkPipeline: items per second of a 2,000-line batch file through
// a pipeline of two models (dense, 512 wide: 8 deep, about 4 MFLOP a row
// each, or 64 deep, about 34) and three operations, from upload to the
// batch ending, as a fraction of an in-process Go loop that decodes the
// same lines and runs the same operations and models (batches of 32
// rows), on the same cores, side by side in one run. Each line is a
// pipeline job of its own; its model steps are batched on the models'
// queues with the other lines'.
func BenchmarkPipeline(b *testing.B) {
	for _, c := range []struct {
		name  string
		depth int
	}{{"light", 8}, {"heavy", 64}} {
		b.Run(c.name, func(b *testing.B) { benchPipeline(b, c.depth) })
	}
}

func benchPipeline(b *testing.B, depth int) {
	const n, width = 2000, 512
	dir := b.TempDir()
	first, second := filepath.Join(dir, "first.onnx"), filepath.Join(dir, "second.onnx")
	writeFile(b, first, onnxbuild.Repeat(width, depth, 1))
	writeFile(b, second, onnxbuild.Repeat(width, depth, 2))
	rng := rand.New(rand.NewPCG(4, 4))
	var data []byte
	for range n {
		data = append(append(data, requestJSON([]tensor.Tensor{floats(rng, "x", 1, width)})...), '\n')
	}

	// The loop.
	rt := testenv.Runtime(b)
	open := func(path string) *onnx.Session {
		sig, err := rt.Inspect(path)
		if err != nil {
			b.Fatal(err)
		}
		s, err := rt.NewSession(path, sig, onnx.SessionOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	}
	s1, s2 := open(first), open(second)
	op := func(name string, with map[string]any) pipeline.Op {
		o, err := pipeline.NewOp(name, with, "")
		if err != nil {
			b.Fatal(err)
		}
		return o
	}
	scale, norm, best := op("affine", map[string]any{"mul": 0.5, "add": 0.1}), op("softmax", nil), op("topk", map[string]any{"k": 5})
	apply := func(o pipeline.Op, t tensor.Tensor) tensor.Tensor {
		out, err := o.Run(map[string]tensor.Tensor{"x": t})
		if err != nil {
			b.Fatal(err)
		}
		y := out["y"]
		y.Name = "x"
		return y
	}
	run := func(s *onnx.Session, rows []tensor.Tensor) [][]tensor.Tensor {
		reqs := make([][]tensor.Tensor, len(rows))
		cuts := make([]int, len(rows))
		for i, r := range rows {
			reqs[i], cuts[i] = []tensor.Tensor{r}, 1
		}
		in, err := batching.Stack(reqs, nil)
		if err != nil {
			b.Fatal(err)
		}
		out, err := s.Run(in)
		if err != nil {
			b.Fatal(err)
		}
		split, err := batching.Split(out, cuts)
		if err != nil {
			b.Fatal(err)
		}
		return split
	}
	start := time.Now()
	var pending []tensor.Tensor
	flush := func() {
		var mid []tensor.Tensor
		for _, o := range run(s1, pending) {
			mid = append(mid, apply(norm, o[0]))
		}
		for _, o := range run(s2, mid) {
			if _, err := best.Run(map[string]tensor.Tensor{"x": o[0]}); err != nil {
				b.Fatal(err)
			}
		}
		pending = pending[:0]
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		req, err := tensor.DecodeRequest(sc.Bytes(), tensor.Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if pending = append(pending, apply(scale, req.Inputs[0])); len(pending) == 32 {
			flush()
		}
	}
	if len(pending) > 0 {
		flush()
	}
	loop := n / time.Since(start).Seconds()

	// Through inferq.
	s, nc := benchServer(b, testenv.ModelRepo(b, map[string]string{
		"first/1/model.onnx":  "@" + first,
		"second/1/model.onnx": "@" + second,
		"pipe/pipeline.yaml":  benchPipelineYAML,
	}))
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	// Messages each stream took: requests (a model step each), records
	// (record writes) and results (announcements).
	lastSeqs := func() (seqs [3]uint64) {
		for i, name := range []string{jobs.RequestStream, "KV_" + jobs.RecordBucket, jobs.ResultStream} {
			st, err := js.Stream(context.Background(), name)
			if err != nil {
				b.Fatal(err)
			}
			info, err := st.Info(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			seqs[i] = info.State.LastSeq
		}
		return seqs
	}
	var queued float64
	var before, after [3]uint64
	for range b.N {
		before = lastSeqs()
		rec, uploaded, elapsed := runBatchFile(b, s, "pipe", data)
		if rec.Counts.Succeeded != n {
			b.Fatalf("batch %+v", rec)
		}
		queued = n / elapsed.Seconds()
		b.Logf("%d items, uploaded and queued in %v, finished after %v", n, uploaded.Round(time.Millisecond), elapsed.Round(time.Millisecond))
		after = lastSeqs()
	}
	b.ReportMetric(float64(after[0]-before[0])/n, "step_msgs/item")
	b.ReportMetric(float64(after[1]-before[1])/n, "record_writes/item")
	b.ReportMetric(float64(after[2]-before[2])/n, "announcements/item")
	m := s.metricsB(b)
	b.ReportMetric(loop, "loop_items/s")
	b.ReportMetric(queued, "pipeline_items/s")
	b.ReportMetric(queued/loop, "pipeline/loop")
	b.ReportMetric(m["inferq_batch_size,model=first,stat=sum"]/m["inferq_batch_size,model=first,stat=count"], "first_mean_batch")
}
