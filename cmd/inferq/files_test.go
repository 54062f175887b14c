package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"math"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// directionPipeline is a pipeline for PaddleOCR's text direction
// classifier (model ocrcls, input in, output out) that takes a photo as
// its one BYTES input: decoded, resized to 48x192 and normalised as
// PaddleOCR does.
func directionPipeline(in, out string) string {
	return fmt.Sprintf(`inputs: [{name: photo, datatype: BYTES, shape: [1]}]
steps:
  - {name: decode, op: image.decode, inputs: {x: $photo}}
  - {name: resize, op: image.resize, with: {size: [48, 192]}, inputs: {x: decode.y}}
  - {name: norm, op: image.normalize, with: {scale: 0.00392156862745098, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}, inputs: {x: resize.y}}
  - {name: cls, model: ocrcls, inputs: {%s: norm.y}}
outputs: {probs: cls.%s}
`, in, out)
}

// directionOps are the operations directionPipeline runs before its
// model.
func directionOps(t testing.TB) []pipeline.Op {
	t.Helper()
	var ops []pipeline.Op
	for _, st := range []struct {
		op   string
		with map[string]any
	}{
		{"image.decode", nil},
		{"image.resize", map[string]any{"size": []any{48, 192}}},
		{"image.normalize", map[string]any{"scale": 1.0 / 255, "mean": []any{0.5, 0.5, 0.5}, "std": []any{0.5, 0.5, 0.5}}},
	} {
		op, err := pipeline.NewOp(st.op, st.with, "")
		if err != nil {
			t.Fatal(err)
		}
		ops = append(ops, op)
	}
	return ops
}

// runOps runs ops on a file as a BYTES tensor, one after the other, and
// names the result in.
func runOps(t testing.TB, ops []pipeline.Op, file []byte, in string) tensor.Tensor {
	t.Helper()
	x := tensor.Tensor{Name: "x", Datatype: tensor.Bytes, Shape: []int64{1}, Data: tensor.AppendBytesElement(nil, file)}
	for _, op := range ops {
		y, err := op.Run(map[string]tensor.Tensor{"x": x})
		if err != nil {
			t.Fatal(err)
		}
		x = y["y"]
	}
	x.Name = in
	return x
}

// directionInput is what directionPipeline hands its model for the
// picture file: its steps run by hand, the tensor named in.
func directionInput(t testing.TB, file []byte, in string) tensor.Tensor {
	t.Helper()
	return runOps(t, directionOps(t), file, in)
}

// loudnessRepo is a repository of a pipeline that decodes a WAV at 16
// kHz and sums its samples with a tiny model (rowsum), with extra files.
func loudnessRepo(t testing.TB, extra map[string]string) string {
	t.Helper()
	sum := filepath.Join(t.TempDir(), "rowsum.onnx")
	writeFile(t, sum, onnxbuild.RowSum())
	files := map[string]string{
		"rowsum/1/model.onnx": "@" + sum,
		"loudness/pipeline.yaml": `inputs: [{name: clip, datatype: BYTES, shape: [1]}]
steps:
  - {name: decode, op: audio.decode, with: {rate: 16000}, inputs: {x: $clip}}
  - {name: total, model: rowsum, inputs: {x: decode.y}}
outputs: {total: total.y}
`,
	}
	for k, v := range extra {
		files[k] = v
	}
	return testenv.ModelRepo(t, files)
}

// runJobs submits n jobs from 16 clients at once, job i's body and
// headers (name, value pairs) made by body, and waits for each to
// succeed: their ids.
func runJobs(t testing.TB, s *server, path string, n int, body func(i int) ([]byte, []string)) []string {
	t.Helper()
	ids := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				data, h := body(i)
				r := do(t, "POST", s.url+path, data, h...)
				if r.code != http.StatusAccepted {
					t.Errorf("POST %s: %d %s", path, r.code, r.body)
					return
				}
				var rec record.Record
				r.json(t, &rec)
				ids[i] = rec.ID
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, id := range ids {
		if rec := s.await(t, id, 5*time.Minute); rec.Status != record.Succeeded {
			t.Fatalf("%+v", rec)
		}
	}
	return ids
}

// postFile submits a file as a job's whole body.
func postFile(t *testing.T, s *server, path, contentType string, body []byte) response {
	t.Helper()
	return do(t, "POST", s.url+path, body, "Content-Type", contentType)
}

// A JPEG sent as it is to a pipeline that decodes, resizes and
// normalises it for PaddleOCR's text direction classifier answers what
// the classifier gives for the same steps run by hand; and the same
// picture sent as an FP32 tensor to the classifier itself answers the
// same. Bad files are 400s that say why, a file to a model of no BYTES
// input a 415.
func TestFileBodies(t *testing.T) {
	cls := testenv.ThirdParty(t, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
	ref := openDirect(t, cls)
	in, out := ref.sig.Inputs[0].Name, ref.sig.Outputs[0].Name
	dir := t.TempDir()
	sum := filepath.Join(dir, "rowsum.onnx")
	writeFile(t, sum, onnxbuild.RowSum())
	objects := t.TempDir()
	s := startServe(t, testenv.ModelRepo(t, map[string]string{
		"ocrcls/1/model.onnx":     "@" + cls,
		"rowsum/1/model.onnx":     "@" + sum,
		"direction/pipeline.yaml": directionPipeline(in, out),
		"loudness/pipeline.yaml": `inputs: [{name: clip, datatype: BYTES, shape: [1]}]
steps:
  - {name: decode, op: audio.decode, with: {rate: 16000}, inputs: {x: $clip}}
  - {name: total, model: rowsum, inputs: {x: decode.y}}
outputs: {total: total.y}
`,
	}), "--storage", objects)
	// A picture of stripes, 120 wide and 40 high.
	img := image.NewRGBA(image.Rect(0, 0, 120, 40))
	for y := range 40 {
		for x := range 120 {
			img.Set(x, y, color.RGBA{uint8(2 * x), uint8(6 * y), uint8(255 * ((x / 10) % 2)), 255})
		}
	}
	var jpg bytes.Buffer
	if err := jpeg.Encode(&jpg, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	// The steps by hand.
	normalized := directionInput(t, jpg.Bytes(), in)
	want := ref.run(t, []tensor.Tensor{normalized})
	want[0].Name = "probs"

	r := postFile(t, s, "/v1/models/direction/jobs", "image/jpeg", jpg.Bytes())
	if r.code != http.StatusAccepted {
		t.Fatalf("a JPEG body: %d %s", r.code, r.body)
	}
	var rec record.Record
	r.json(t, &rec)
	if got := s.await(t, rec.ID, time.Minute); got.Status != record.Succeeded {
		t.Fatalf("%+v", got)
	}
	assertClose(t, "the JPEG through the pipeline", s.result(t, rec.ID).Outputs, want)

	// The same picture as an FP32 tensor to the classifier.
	id := s.submit(t, "/v1/models/ocrcls/jobs", requestJSON([]tensor.Tensor{normalized}))
	if got := s.await(t, id, time.Minute); got.Status != record.Succeeded {
		t.Fatalf("%+v", got)
	}
	fp32 := s.result(t, id).Outputs
	fp32[0].Name = "probs"
	assertClose(t, "the FP32 tensor to the classifier", fp32, want)
	t.Logf("the picture: %d bytes as a JPEG, %d as an FP32 tensor", jpg.Len(), len(normalized.Data))

	// A WAV: 0.5 s of a constant 0.25 at 8 kHz, resampled to 16 kHz:
	// 8,000 samples summing to 2,000.
	pcm := make([]byte, 0, 8000)
	for range 4000 {
		pcm = binary.LittleEndian.AppendUint16(pcm, uint16(8192))
	}
	wavFile := wavBytes(8000, pcm)
	r = postFile(t, s, "/v1/models/loudness/jobs", "audio/wav", wavFile)
	if r.code != http.StatusAccepted {
		t.Fatalf("a WAV body: %d %s", r.code, r.body)
	}
	r.json(t, &rec)
	if got := s.await(t, rec.ID, time.Minute); got.Status != record.Succeeded {
		t.Fatalf("%+v", got)
	}
	total := s.result(t, rec.ID).Outputs[0]
	if v := math.Float32frombits(binary.LittleEndian.Uint32(total.Data)); math.Abs(float64(v)-2000) > 1 {
		t.Errorf("the WAV's samples sum to %g, want 2000", v)
	}

	// A batch file whose lines name stored files: the pipeline reads
	// each from the store in its first step's worker.
	writeFile(t, filepath.Join(objects, "inputs", "direction", "a.jpg"), jpg.Bytes())
	writeFile(t, filepath.Join(objects, "inputs", "direction", "b.jpg"), jpg.Bytes())
	lines := `{"custom_id":"a","object":"inputs/direction/a.jpg"}` + "\n" +
		`{"custom_id":"missing","object":"inputs/direction/nothing.jpg"}` + "\n" +
		`{"custom_id":"b","object":"inputs/direction/b.jpg"}` + "\n"
	batch := postBatch(t, s, "direction", strings.NewReader(lines))
	if batch = awaitBatch(t, s, batch.ID, time.Minute); batch.Counts.Succeeded != 2 || batch.Counts.Failed != 1 {
		t.Fatalf("a batch of stored files: %+v", batch)
	}
	assertOutputLines(t, s, batch.ID, 3, func(i int) ([]tensor.Tensor, string) {
		if i == 1 {
			return nil, "nothing.jpg"
		}
		return want, ""
	})
	// A line naming a file, to a model that takes tensors: that line
	// fails, saying why.
	batch = postBatch(t, s, "ocrcls", strings.NewReader(`{"object":"inputs/ocrcls/a.jpg"}`+"\n"))
	batch = awaitBatch(t, s, batch.ID, time.Minute)
	assertOutputLines(t, s, batch.ID, 1, func(int) ([]tensor.Tensor, string) { return nil, "one BYTES input" })

	// The command line sends a file as it is.
	photo := filepath.Join(t.TempDir(), "photo.jpg")
	writeFile(t, photo, jpg.Bytes())
	out, errOut, code := runCLI(t, s.url, "", "submit", "--model", "direction", "--file", photo, "--wait")
	resp, err := tensor.DecodeResponse([]byte(out))
	if code != 0 || err != nil {
		t.Fatalf("inferq submit --file: %d %v\n%s\n%s", code, err, out, errOut)
	}
	assertClose(t, "inferq submit --file", resp.Outputs, want)

	for _, c := range []struct {
		name, path, ctype string
		body              []byte
		code              int
		want              string
	}{
		{"text sent as a PNG", "/v1/models/direction/jobs", "image/png", []byte("hello"), 400, "not a picture"},
		{"a decompression bomb", "/v1/models/direction/jobs", "image/png", bombPNG(20000, 20000), 400, "more than the 40000000 allowed"},
		{"a cut WAV", "/v1/models/loudness/jobs", "audio/wav", wavFile[:len(wavFile)/2], 400, "cut short, or its header lies"},
		{"a picture to a model of tensors", "/v1/models/ocrcls/jobs", "image/jpeg", jpg.Bytes(), 415, "exactly one BYTES input"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := postFile(t, s, c.path, c.ctype, c.body)
			if r.code != c.code || !strings.Contains(string(r.body), c.want) {
				t.Errorf("%d %s, want %d with %q", r.code, r.body, c.code, c.want)
			}
		})
	}
}

// wavBytes is a mono 16-bit WAV of pcm at rate.
func wavBytes(rate int, pcm []byte) []byte {
	le := binary.LittleEndian
	b := append([]byte("RIFF"), le.AppendUint32(nil, uint32(36+len(pcm)))...)
	b = append(b, "WAVEfmt "...)
	b = le.AppendUint32(b, 16)
	b = le.AppendUint16(b, 1)
	b = le.AppendUint16(b, 1)
	b = le.AppendUint32(b, uint32(rate))
	b = le.AppendUint32(b, uint32(2*rate))
	b = le.AppendUint16(b, 2)
	b = le.AppendUint16(b, 16)
	b = append(b, "data"...)
	b = le.AppendUint32(b, uint32(len(pcm)))
	return append(b, pcm...)
}

// bombPNG is a small PNG whose header declares w x h pixels: a 1x1
// picture with its IHDR chunk rewritten (and its checksum made again).
func bombPNG(w, h uint32) []byte {
	var b bytes.Buffer
	png.Encode(&b, image.NewGray(image.Rect(0, 0, 1, 1)))
	out := b.Bytes()
	binary.BigEndian.PutUint32(out[16:], w) // IHDR data starts at 16
	binary.BigEndian.PutUint32(out[20:], h)
	binary.BigEndian.PutUint32(out[29:], crc32.ChecksumIEEE(out[12:29]))
	return out
}
