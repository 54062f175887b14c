package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/image/font"
	"golang.org/x/image/font/gofont/gomono"
	"golang.org/x/image/font/gofont/goregular"
	"golang.org/x/image/font/opentype"
	"golang.org/x/image/math/fixed"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// renderText draws lines of dark text on a light page, size points
// high, with a margin: a picture whose text is known.
func renderText(t testing.TB, ttf []byte, lines []string, size float64) []byte {
	t.Helper()
	f, err := opentype.Parse(ttf)
	if err != nil {
		t.Fatal(err)
	}
	face, err := opentype.NewFace(f, &opentype.FaceOptions{Size: size, DPI: 72, Hinting: font.HintingFull})
	if err != nil {
		t.Fatal(err)
	}
	defer face.Close()
	width := 0
	for _, l := range lines {
		width = max(width, font.MeasureString(face, l).Ceil())
	}
	lineH := int(size * 1.8)
	img := image.NewRGBA(image.Rect(0, 0, width+int(size)*2, lineH*len(lines)+int(size)*2))
	draw.Draw(img, img.Bounds(), image.NewUniform(color.RGBA{245, 243, 238, 255}), image.Point{}, draw.Src)
	d := &font.Drawer{Dst: img, Src: image.NewUniform(color.RGBA{25, 25, 30, 255}), Face: face}
	for i, l := range lines {
		d.Dot = fixed.P(int(size), int(size)+lineH*i+int(size))
		d.DrawString(l)
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// ocrRepo is a model repository of the OCR example (examples/ocr), as
// `make ocr-repo` assembles it.
func ocrRepo(t testing.TB) string {
	t.Helper()
	example := filepath.Join(testenv.Root(t), "examples", "ocr")
	return testenv.ModelRepo(t, map[string]string{
		"ocrdet/1/model.onnx":   "@" + testenv.ThirdParty(t, "ppocr/ch_PP-OCRv4_det_infer.onnx"),
		"ocrdet/config.yaml":    "@" + filepath.Join(example, "ocrdet.config.yaml"),
		"ocrrec/1/model.onnx":   "@" + testenv.ThirdParty(t, "ppocr/ch_PP-OCRv4_rec_infer.onnx"),
		"ocrrec/config.yaml":    "@" + filepath.Join(example, "ocrrec.config.yaml"),
		"ocr/pipeline.yaml":     "@" + filepath.Join(example, "pipeline.yaml"),
		"ocr/ppocr_keys_v1.txt": "@" + testenv.ThirdParty(t, "ppocr/ppocr_keys_v1.txt"),
	})
}

// charAccuracy is 1 - the edit distance between got and want over
// want's length, in characters.
func charAccuracy(got, want string) float64 {
	a, b := []rune(got), []rune(want)
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return 1 - float64(prev[len(b)])/float64(max(len(b), 1))
}

// ocrPeer runs the OCR peer (@gutenye/ocr-node, `make ocrpeer`) on
// pictures, one after another in one Node process: each picture's lines,
// and the images a second over them all.
func ocrPeer(t testing.TB, files []string) ([][]string, float64) {
	t.Helper()
	script := filepath.Join(testenv.Root(t), "build", "peers", "ocr-node", "ocr.mjs")
	if _, err := os.Stat(script); err != nil {
		t.Fatalf("no OCR peer at %s: run `make ocrpeer` (make test does)", script)
	}
	out, err := exec.Command("node", append([]string{script}, files...)...).Output()
	if err != nil {
		t.Fatalf("the OCR peer: %v\n%s", err, out)
	}
	var lines [][]string
	var rate float64
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r struct {
			Lines      []string
			ImagesPerS float64 `json:"images_per_s"`
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("the OCR peer printed %q: %v", l, err)
		}
		if r.ImagesPerS > 0 {
			rate = r.ImagesPerS
			continue
		}
		lines = append(lines, r.Lines)
	}
	if len(lines) != len(files) {
		t.Fatalf("the OCR peer read %d of %d pictures", len(lines), len(files))
	}
	return lines, rate
}

// ocrText reads a finished OCR job's lines.
func ocrText(t testing.TB, s *server, id string) []string {
	t.Helper()
	for _, o := range s.result(t, id).Outputs {
		if o.Name != "text" {
			continue
		}
		lines, err := tensor.SplitBytes(o.Data)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]string, len(lines))
		for i, l := range lines {
			out[i] = string(l)
		}
		return out
	}
	t.Fatal("an OCR result with no text")
	return nil
}

// TestOCR sends pictures of known text (in a proportional and a
// monospaced font), as PNG bodies, to the OCR example: each page's lines
// come back, in reading order, with at least 95 % of their characters
// right, and as many lines as the OCR peer reads on the same pictures,
// agreeing with its text on at least 90 % of the characters.
func TestOCR(t *testing.T) {
	s := startServe(t, ocrRepo(t))
	pages := [][]string{
		{"Invoice 2026-12-07", "Total 42.50 EUR", "Thank you for your order"},
		{"inferq reads text from pictures"},
		{"PaddleOCR detector and recognizer", "through two model queues", "Batch 7: 1024 items"},
	}
	dir := t.TempDir()
	var files []string
	var truth, ours [][]string
	for f, ttf := range [][]byte{goregular.TTF, gomono.TTF} {
		for i, page := range pages {
			pic := renderText(t, ttf, page, 28)
			file := filepath.Join(dir, fmt.Sprintf("page%d-font%d.png", i, f))
			writeFile(t, file, pic)
			r := postFile(t, s, "/v1/models/ocr/jobs", "image/png", pic)
			if r.code != 202 {
				t.Fatalf("%d %s", r.code, r.body)
			}
			var rec record.Record
			r.json(t, &rec)
			if got := s.await(t, rec.ID, 2*time.Minute); got.Status != record.Succeeded {
				t.Fatalf("%+v", got)
			}
			files, truth, ours = append(files, file), append(truth, page), append(ours, ocrText(t, s, rec.ID))
		}
	}
	peer, _ := ocrPeer(t, files)
	for i := range files {
		acc := charAccuracy(strings.Join(ours[i], "\n"), strings.Join(truth[i], "\n"))
		peerAcc := charAccuracy(strings.Join(peer[i], "\n"), strings.Join(truth[i], "\n"))
		agree := charAccuracy(strings.Join(ours[i], "\n"), strings.Join(peer[i], "\n"))
		t.Logf("%s: read %q, %.1f %% right; the peer %q, %.1f %% right; %.1f %% agree", filepath.Base(files[i]), ours[i], 100*acc, peer[i], 100*peerAcc, 100*agree)
		if len(ours[i]) != len(truth[i]) || acc < 0.95 {
			t.Errorf("%s: read %q from %q: %.1f %% of characters right, want 95 %%", filepath.Base(files[i]), ours[i], truth[i], 100*acc)
		}
		if len(ours[i]) != len(peer[i]) || agree < 0.9 {
			t.Errorf("%s: read %q, the peer %q: want as many lines and 90 %% of characters the same", filepath.Base(files[i]), ours[i], peer[i])
		}
	}
}
