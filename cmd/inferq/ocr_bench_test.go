package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"golang.org/x/image/font/gofont/gomono"
	"golang.org/x/image/font/gofont/goregular"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/tensor"
)

var ocrWords = strings.Fields("invoice total order receipt item price quantity date number batch queue model text line page " +
	"paid due amount tax net gross customer address street city code phone account bank transfer note thank you")

// ocrPages are n pictures of one to four lines of random words and
// numbers, in two fonts, as PNG files, with their text.
func ocrPages(b testing.TB, n int, dir string) (files []string, pics [][]byte) {
	rng := rand.New(rand.NewPCG(12, 34))
	for i := range n {
		var lines []string
		for range 1 + rng.IntN(4) {
			var words []string
			for range 2 + rng.IntN(4) {
				if rng.IntN(4) == 0 {
					words = append(words, fmt.Sprintf("%d.%02d", rng.IntN(1000), rng.IntN(100)))
				} else {
					words = append(words, ocrWords[rng.IntN(len(ocrWords))])
				}
			}
			lines = append(lines, strings.Join(words, " "))
		}
		ttf := goregular.TTF
		if i%2 == 1 {
			ttf = gomono.TTF
		}
		pic := renderText(b, ttf, lines, 24+float64(rng.IntN(12)))
		file := filepath.Join(dir, fmt.Sprintf("page%03d.png", i))
		writeFile(b, file, pic)
		files, pics = append(files, file), append(pics, pic)
	}
	return files, pics
}

// BenchmarkOCR: pictures a second through the OCR example (examples/ocr:
// decode, resize, normalise, PP-OCRv4 det, text.boxes, image.crop,
// normalise, rec, ctc_decode), 200 pages of one to four lines, side by
// side in one run on the same cores: submitted as jobs by 16 clients
// (PNG bodies), against @gutenye/ocr-node reading them one after another
// in one Node process, and against an in-process Go loop that runs the
// same steps (the pipeline package's operations, ONNX Runtime sessions of
// the same models, the recognizer's lines each at its own width as the
// example's config has it) one picture after another.
func BenchmarkOCR(b *testing.B) {
	const n = 200
	dir := b.TempDir()
	files, pics := ocrPages(b, n, dir)

	// The peer.
	_, peerRate := ocrPeer(b, files)

	// The in-process loop: the example's steps, in its order.
	raw, err := os.ReadFile(filepath.Join(testenv.Root(b), "examples", "ocr", "pipeline.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	var spec pipeline.Spec
	if err := yaml.Unmarshal(raw, &spec); err != nil {
		b.Fatal(err)
	}
	keys := filepath.Dir(testenv.ThirdParty(b, "ppocr/ppocr_keys_v1.txt"))
	rt := testenv.Runtime(b)
	sessions := map[string]*onnx.Session{}
	for name, file := range map[string]string{"ocrdet": "ppocr/ch_PP-OCRv4_det_infer.onnx", "ocrrec": "ppocr/ch_PP-OCRv4_rec_infer.onnx"} {
		path := testenv.ThirdParty(b, file)
		sig, err := rt.Inspect(path)
		if err != nil {
			b.Fatal(err)
		}
		sess, err := rt.NewSession(path, sig, onnx.SessionOptions{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { sess.Close() })
		sessions[name] = sess
	}
	// The recognizer's lines at their own widths, as the example's config
	// has inferq run them.
	var recConfig model.Config
	raw, err = os.ReadFile(filepath.Join(testenv.Root(b), "examples", "ocr", "ocrrec.config.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &recConfig); err != nil || recConfig.Ragged == nil {
		b.Fatalf("examples/ocr/ocrrec.config.yaml: ragged %v, %v", recConfig.Ragged, err)
	}
	ops := map[string]pipeline.Op{}
	for _, st := range spec.Steps {
		if st.Op != "" {
			if ops[st.Name], err = pipeline.NewOp(st.Op, st.With, keys); err != nil {
				b.Fatal(err)
			}
		}
	}
	start := time.Now()
	for _, pic := range pics {
		values := map[string]tensor.Tensor{"$image": {Name: "image", Datatype: tensor.Bytes, Shape: []int64{1}, Data: tensor.AppendBytesElement(nil, pic)}}
		for _, st := range spec.Steps {
			in := map[string]tensor.Tensor{}
			for name, ref := range st.Inputs {
				t := values[ref]
				t.Name = name
				in[name] = t
			}
			var out map[string]tensor.Tensor
			if st.Op != "" {
				if out, err = ops[st.Name].Run(in); err != nil {
					b.Fatal(err)
				}
			} else {
				x := in["x"]
				if x.Shape[0] == 0 {
					continue
				}
				var res []tensor.Tensor
				if st.Model == "ocrrec" {
					res = recLines(b, sessions[st.Model], recConfig.Ragged, x)
				} else if res, err = sessions[st.Model].Run([]tensor.Tensor{x}); err != nil {
					b.Fatal(err)
				}
				out = map[string]tensor.Tensor{}
				for _, t := range res {
					out[t.Name] = t
				}
			}
			for name, t := range out {
				values[st.Name+"."+name] = t
			}
		}
	}
	loopRate := n / time.Since(start).Seconds()

	// Through inferq: as a batch file of stored pictures, and as jobs.
	objects := b.TempDir()
	var lines strings.Builder
	for i, pic := range pics {
		key := fmt.Sprintf("inputs/ocr/page%03d.png", i)
		writeFile(b, filepath.Join(objects, key), pic)
		fmt.Fprintf(&lines, `{"custom_id":%d,"object":%q}`+"\n", i, key)
	}
	s, _ := benchServer(b, ocrRepo(b), "--storage", objects)
	var rate, jobRate float64
	for range b.N {
		rec, _, elapsed := runBatchFile(b, s, "ocr", []byte(lines.String()))
		if rec.Counts.Succeeded != n {
			b.Fatalf("batch %+v", rec)
		}
		rate = n / elapsed.Seconds()
		start := time.Now()
		runJobs(b, s, "/v1/models/ocr/jobs", n, func(i int) ([]byte, []string) { return pics[i], []string{"Content-Type", "image/png"} })
		jobRate = n / time.Since(start).Seconds()
	}
	b.ReportMetric(rate, "inferq_images/s")
	b.ReportMetric(jobRate, "inferq_jobs_images/s")
	b.ReportMetric(peerRate, "peer_images/s")
	b.ReportMetric(loopRate, "loop_images/s")
	b.ReportMetric(rate/peerRate, "inferq/peer")
	b.ReportMetric(rate/loopRate, "inferq/loop")
}

// recLines runs the recognizer on x [lines, 3, 48, width] as the example's
// config (rg) has inferq run it: each line cut to its own width, one at
// a time, the probabilities padded back with zeros to the longest line's.
func recLines(b *testing.B, s *onnx.Session, rg *model.Ragged, x tensor.Tensor) []tensor.Tensor {
	widths, err := batching.RowLengths(x, rg.Axis, rg.Value)
	if err != nil {
		b.Fatal(err)
	}
	rows, err := batching.Unstack([]tensor.Tensor{x}, nil, batching.EachRow(len(widths)))
	if err != nil {
		b.Fatal(err)
	}
	outs := make([][]tensor.Tensor, len(rows))
	for i, row := range rows {
		line, err := batching.Trim(row[0], rg.Axis, batching.RaggedLength(widths[i], x.Shape[rg.Axis], rg.MultipleOf))
		if err != nil {
			b.Fatal(err)
		}
		if outs[i], err = s.Run([]tensor.Tensor{line}); err != nil {
			b.Fatal(err)
		}
	}
	joined, err := batching.JoinRagged(outs, rg.Outputs)
	if err != nil {
		b.Fatal(err)
	}
	return joined
}
