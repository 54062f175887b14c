package main

import (
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/tensor"
)

// BenchmarkImageBodies: PaddleOCR's text direction classifier fed 300
// photos of text-line size (about 200x60), as JPEG bodies to a pipeline
// that decodes, resizes and normalises them in the worker, against the
// same pictures preprocessed by the client and sent as FP32 binary
// tensors to the model, side by side in one run: images/s from the first
// submission to the last result, and the bytes each image puts through
// JetStream (the request messages, counted by a NATS subscriber).
func BenchmarkImageBodies(b *testing.B) {
	const n = 300
	cls := testenv.ThirdParty(b, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
	ref := openDirect(b, cls) // for its signature
	in, out := ref.sig.Inputs[0].Name, ref.sig.Outputs[0].Name
	s, nc := benchServer(b, testenv.ModelRepo(b, map[string]string{
		"ocrcls/1/model.onnx":     "@" + cls,
		"ocrcls/config.yaml":      "max_batch_size: 32\n",
		"direction/pipeline.yaml": directionPipeline(in, out),
	}))
	rng := rand.New(rand.NewPCG(9, 9))
	jpegs := make([][]byte, n)
	tensors := make([][]byte, n)
	headers := make([]int, n)
	steps := []pipeline.Op{}
	for _, st := range []struct {
		op   string
		with map[string]any
	}{{"image.decode", nil}, {"image.resize", map[string]any{"size": []any{48, 192}}},
		{"image.normalize", map[string]any{"scale": 1.0 / 255, "mean": []any{0.5, 0.5, 0.5}, "std": []any{0.5, 0.5, 0.5}}}} {
		op, err := pipeline.NewOp(st.op, st.with, "")
		if err != nil {
			b.Fatal(err)
		}
		steps = append(steps, op)
	}
	for i := range n {
		w, h := 160+rng.IntN(80), 48+rng.IntN(24)
		img := image.NewRGBA(image.Rect(0, 0, w, h))
		for y := range h {
			for x := range w {
				ink := uint8(230)
				if (x/7+y/9)%3 == 0 && y > h/5 && y < 4*h/5 {
					ink = 30
				}
				v := ink + uint8(rng.IntN(12))
				img.Set(x, y, color.RGBA{v, v, v - 5, 255})
			}
		}
		var buf bytes.Buffer
		jpeg.Encode(&buf, img, &jpeg.Options{Quality: 85})
		jpegs[i] = buf.Bytes()
		x := tensor.Tensor{Name: "x", Datatype: tensor.Bytes, Shape: []int64{1}, Data: tensor.AppendBytesElement(nil, jpegs[i])}
		for _, op := range steps {
			y, err := op.Run(map[string]tensor.Tensor{"x": x})
			if err != nil {
				b.Fatal(err)
			}
			x = y["y"]
		}
		x.Name = in
		var err error
		if tensors[i], headers[i], err = (&tensor.Request{Inputs: []tensor.Tensor{x}}).MarshalBinary(); err != nil {
			b.Fatal(err)
		}
	}
	var published atomic.Int64
	sub, err := nc.Subscribe("inferq.requests.>", func(m *nats.Msg) {
		size := len(m.Data)
		for k, vs := range m.Header {
			for _, v := range vs {
				size += len(k) + len(v) + 4
			}
		}
		published.Add(int64(size))
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	run := func(path string, body func(i int) ([]byte, []string)) (perSec float64, bytesEach float64) {
		nc.Flush()
		published.Store(0)
		start := time.Now()
		runJobs(b, s, path, n, body)
		elapsed := time.Since(start)
		nc.Flush()
		return n / elapsed.Seconds(), float64(published.Load()) / n
	}
	for range b.N {
		jpegRate, jpegBytes := run("/v1/models/direction/jobs", func(i int) ([]byte, []string) {
			return jpegs[i], []string{"Content-Type", "image/jpeg"}
		})
		fp32Rate, fp32Bytes := run("/v1/models/ocrcls/jobs", func(i int) ([]byte, []string) {
			return tensors[i], []string{"Content-Type", "application/octet-stream", "Inference-Header-Content-Length", strconv.Itoa(headers[i])}
		})
		b.ReportMetric(jpegRate, "jpeg_images/s")
		b.ReportMetric(fp32Rate, "fp32_images/s")
		b.ReportMetric(jpegRate/fp32Rate, "jpeg/fp32")
		b.ReportMetric(jpegBytes, "jpeg_queue_bytes/image")
		b.ReportMetric(fp32Bytes, "fp32_queue_bytes/image")
		b.ReportMetric(fp32Bytes/jpegBytes, "bytes_fp32/jpeg")
	}
}
