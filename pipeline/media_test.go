package pipeline

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"math"
	"os"
	"strings"
	"testing"

	"golang.org/x/image/bmp"

	"github.com/inferq/inferq/tensor"
)

// picture is a w x h picture whose pixel (x, y) is c(x, y).
func picture(w, h int, c func(x, y int) color.Color) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, c(x, y))
		}
	}
	return img
}

func file(t *testing.T, img image.Image, enc func(*bytes.Buffer, image.Image) error) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := enc(&b, img); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func bytesTensor(files ...[]byte) tensor.Tensor {
	var data []byte
	for _, f := range files {
		data = tensor.AppendBytesElement(data, f)
	}
	return tensor.Tensor{Name: "x", Datatype: tensor.Bytes, Shape: []int64{int64(len(files))}, Data: data}
}

func runOp(t *testing.T, name string, with map[string]any, x tensor.Tensor) (tensor.Tensor, error) {
	t.Helper()
	op, err := NewOp(name, with, "")
	if err != nil {
		t.Fatal(err)
	}
	out, err := op.Run(map[string]tensor.Tensor{"x": x})
	return out["y"], err
}

// exifOriented inserts an EXIF APP1 segment of orientation o after a
// JPEG's SOI marker.
func exifOriented(jpg []byte, o uint16) []byte {
	var tiff bytes.Buffer
	tiff.WriteString("II*\x00")
	binary.Write(&tiff, binary.LittleEndian, uint32(8))
	binary.Write(&tiff, binary.LittleEndian, uint16(1))           // one entry
	binary.Write(&tiff, binary.LittleEndian, []uint16{0x0112, 3}) // orientation, SHORT
	binary.Write(&tiff, binary.LittleEndian, uint32(1))           // count
	binary.Write(&tiff, binary.LittleEndian, []uint16{o, 0})      // value
	binary.Write(&tiff, binary.LittleEndian, uint32(0))           // no next IFD
	app1 := append([]byte("Exif\x00\x00"), tiff.Bytes()...)
	seg := append([]byte{0xFF, 0xE1, byte((len(app1) + 2) >> 8), byte(len(app1) + 2)}, app1...)
	return append(append(append([]byte{}, jpg[:2]...), seg...), jpg[2:]...)
}

func TestImageDecode(t *testing.T) {
	// Left half red, right half blue: 8x4.
	halves := picture(8, 4, func(x, y int) color.Color {
		if x < 4 {
			return color.NRGBA{255, 0, 0, 255}
		}
		return color.NRGBA{0, 0, 255, 255}
	})
	pngEnc := func(b *bytes.Buffer, i image.Image) error { return png.Encode(b, i) }
	jpgEnc := func(b *bytes.Buffer, i image.Image) error { return jpeg.Encode(b, i, &jpeg.Options{Quality: 100}) }
	gifEnc := func(b *bytes.Buffer, i image.Image) error { return gif.Encode(b, i, nil) }
	bmpEnc := func(b *bytes.Buffer, i image.Image) error { return bmp.Encode(b, i) }
	grey := image.NewGray(image.Rect(0, 0, 2, 1))
	grey.Pix[0], grey.Pix[1] = 10, 200
	// Alpha dropped, colour kept: a transparent green pixel stays green.
	alpha := picture(1, 1, func(x, y int) color.Color { return color.NRGBA{0, 200, 0, 0} })
	jpg := file(t, halves, jpgEnc)
	// Made by sharp (libvips), which Go's encoders cannot: a lossless
	// WebP and a CMYK JPEG of the same halves.
	webp, err := os.ReadFile("testdata/halves.webp")
	if err != nil {
		t.Fatal(err)
	}
	cmyk, err := os.ReadFile("testdata/halves-cmyk.jpg")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		data  []byte
		shape string
		// pixels: (x, y) -> RGB wanted, within tol.
		pixels map[[2]int][3]int
		tol    int
	}{
		{"png", file(t, halves, pngEnc), "[4 8 3]", map[[2]int][3]int{{0, 0}: {255, 0, 0}, {7, 3}: {0, 0, 255}}, 0},
		{"jpeg", jpg, "[4 8 3]", map[[2]int][3]int{{0, 0}: {255, 0, 0}, {7, 3}: {0, 0, 255}}, 40},
		{"gif", file(t, halves, gifEnc), "[4 8 3]", map[[2]int][3]int{{0, 0}: {255, 0, 0}, {7, 3}: {0, 0, 255}}, 0},
		{"bmp", file(t, halves, bmpEnc), "[4 8 3]", map[[2]int][3]int{{0, 0}: {255, 0, 0}, {7, 3}: {0, 0, 255}}, 0},
		{"webp", webp, "[4 8 3]", map[[2]int][3]int{{0, 0}: {255, 0, 0}, {7, 3}: {0, 0, 255}}, 0},
		// Colours come back without its ICC profile (the standard
		// library converts CMYK plainly): near, not exact.
		{"cmyk jpeg", cmyk, "[4 8 3]", map[[2]int][3]int{{0, 0}: {255, 0, 0}, {7, 3}: {0, 0, 255}}, 64},
		{"grey png", file(t, grey, pngEnc), "[1 2 3]", map[[2]int][3]int{{0, 0}: {10, 10, 10}, {1, 0}: {200, 200, 200}}, 0},
		{"grey jpeg", file(t, grey, jpgEnc), "[1 2 3]", map[[2]int][3]int{{0, 0}: {10, 10, 10}, {1, 0}: {200, 200, 200}}, 8},
		{"png with alpha", file(t, alpha, pngEnc), "[1 1 3]", map[[2]int][3]int{{0, 0}: {0, 200, 0}}, 0},
		// EXIF orientation 6: stored turned left, shown turned right:
		// the red half comes out on top.
		{"jpeg rotated by exif", exifOriented(jpg, 6), "[8 4 3]", map[[2]int][3]int{{0, 0}: {255, 0, 0}, {3, 7}: {0, 0, 255}}, 40},
		{"jpeg mirrored by exif", exifOriented(jpg, 2), "[4 8 3]", map[[2]int][3]int{{0, 0}: {0, 0, 255}, {7, 3}: {255, 0, 0}}, 40},
	} {
		t.Run(c.name, func(t *testing.T) {
			y, err := runOp(t, "image.decode", nil, bytesTensor(c.data))
			if err != nil {
				t.Fatal(err)
			}
			if y.Datatype != tensor.Uint8 || tensor.FormatShape(y.Shape) != c.shape {
				t.Fatalf("%s %s, want UINT8 %s", y.Datatype, tensor.FormatShape(y.Shape), c.shape)
			}
			w := int(y.Shape[1])
			for at, want := range c.pixels {
				i := 3 * (at[1]*w + at[0])
				for ch := range 3 {
					if d := int(y.Data[i+ch]) - want[ch]; d > c.tol || -d > c.tol {
						t.Fatalf("pixel %v is %v, want %v", at, y.Data[i:i+3], want)
					}
				}
			}
		})
	}
}

// pngOf is a PNG whose header declares w x h, with nothing after it: a
// decompression bomb's header.
func pngOf(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := binary.BigEndian.AppendUint32(nil, w)
	ihdr = binary.BigEndian.AppendUint32(ihdr, h)
	ihdr = append(ihdr, 8, 2, 0, 0, 0)
	binary.Write(&b, binary.BigEndian, uint32(len(ihdr)))
	chunk := append([]byte("IHDR"), ihdr...)
	b.Write(chunk)
	binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(chunk))
	return b.Bytes()
}

func TestImageDecodeRefuses(t *testing.T) {
	small := picture(4, 4, func(x, y int) color.Color { return color.NRGBA{1, 2, 3, 255} })
	noise := picture(64, 64, func(x, y int) color.Color { return color.NRGBA{uint8(x * y), uint8(x ^ y), uint8(x + 3*y), 255} })
	var p, j, big bytes.Buffer
	png.Encode(&p, small)
	jpeg.Encode(&j, small, nil)
	jpeg.Encode(&big, noise, nil)
	badCRC := bytes.Clone(p.Bytes())
	badCRC[29] ^= 0xFF // the IHDR chunk's CRC
	for _, c := range []struct {
		name string
		x    tensor.Tensor
		want string
	}{
		{"jpeg cut in its header", bytesTensor(j.Bytes()[:len(j.Bytes())/4]), "ends within its header"},
		{"jpeg cut in its pixels", bytesTensor(big.Bytes()[:len(big.Bytes())*9/10]), "decode the jpeg: "},
		{"png with a bad crc", bytesTensor(badCRC), "checksum"},
		{"not a picture", bytesTensor([]byte("hello")), "not a picture"},
		{"a decompression bomb", bytesTensor(pngOf(20000, 20000)), "more than the 40000000 allowed"},
		{"two files", bytesTensor(p.Bytes(), p.Bytes()), "one picture a job"},
		{"not bytes", tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{1}, Data: make([]byte, 4)}, "want BYTES"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := runOp(t, "image.decode", nil, c.x); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one with %q", err, c.want)
			}
		})
	}
}

func TestImageResize(t *testing.T) {
	for _, c := range []struct {
		with         map[string]any
		w, h         int
		wantW, wantH int
	}{
		{map[string]any{"size": []any{48, 192}}, 100, 30, 192, 48},
		{map[string]any{"max_side": 960, "multiple_of": 32}, 1000, 500, 960, 480},
		{map[string]any{"max_side": 960, "multiple_of": 32}, 100, 50, 96, 64},
		{map[string]any{"max_side": 960, "multiple_of": 32}, 10, 10, 32, 32},
		{map[string]any{"max_side": 640}, 1280, 720, 640, 360},
	} {
		// A uniform picture stays uniform, whatever the scale.
		x := imageTensor("x", toRGB(picture(c.w, c.h, func(x, y int) color.Color { return color.NRGBA{10, 120, 250, 255} })))
		y, err := runOp(t, "image.resize", c.with, x)
		if err != nil {
			t.Fatal(err)
		}
		if got := tensor.FormatShape(y.Shape); got != tensor.FormatShape([]int64{int64(c.wantH), int64(c.wantW), 3}) {
			t.Errorf("%v of %dx%d: shape %s, want %dx%d", c.with, c.w, c.h, got, c.wantW, c.wantH)
		}
		for i := 0; i < len(y.Data); i += 3 {
			if y.Data[i] != 10 || y.Data[i+1] != 120 || y.Data[i+2] != 250 {
				t.Fatalf("%v: pixel %d is %v", c.with, i/3, y.Data[i:i+3])
			}
		}
	}
	// Two columns, black and white, doubled: bilinear puts the ramp between.
	x := imageTensor("x", toRGB(picture(2, 1, func(x, y int) color.Color { return color.Gray{uint8(255 * x)} })))
	y, err := runOp(t, "image.resize", map[string]any{"size": []any{1, 4}}, x)
	if err != nil {
		t.Fatal(err)
	}
	var reds []byte
	for i := 0; i < len(y.Data); i += 3 {
		reds = append(reds, y.Data[i])
	}
	if reds[0] != 0 || reds[3] != 255 || !(reds[1] > 0 && reds[1] < reds[2] && reds[2] < 255) {
		t.Errorf("a black-white edge resized to 4: %v", reds)
	}
	for _, with := range []map[string]any{{}, {"size": []any{1, 2}, "max_side": 10}, {"size": []any{3}}} {
		if _, err := NewOp("image.resize", with, ""); err == nil {
			t.Errorf("image.resize %v accepted", with)
		}
	}
}

func TestImageNormalize(t *testing.T) {
	// One pixel (255, 0, 128), one picture.
	x := tensor.Tensor{Name: "x", Datatype: tensor.Uint8, Shape: []int64{1, 2, 3}, Data: []byte{255, 0, 128, 0, 255, 0}}
	with := map[string]any{"scale": 1.0 / 255, "mean": []any{0.5, 0.5, 0.5}, "std": []any{0.5, 0.5, 0.5}}
	y, err := runOp(t, "image.normalize", with, x)
	if err != nil {
		t.Fatal(err)
	}
	if tensor.FormatShape(y.Shape) != "[1 3 1 2]" {
		t.Fatalf("NCHW shape %s", tensor.FormatShape(y.Shape))
	}
	// NCHW: the red plane, then green, then blue.
	want := []float64{1, -1, -1, 1, 128.0/255/0.5 - 1, -1}
	for i, w := range want {
		if got := math.Float32frombits(binary.LittleEndian.Uint32(y.Data[4*i:])); math.Abs(float64(got)-w) > 1e-6 {
			t.Fatalf("element %d is %g, want %g", i, got, w)
		}
	}
	with["layout"] = "NHWC"
	y, err = runOp(t, "image.normalize", with, x)
	if err != nil || tensor.FormatShape(y.Shape) != "[1 1 2 3]" {
		t.Fatalf("NHWC: %v %v", err, y.Shape)
	}
	if got := math.Float32frombits(binary.LittleEndian.Uint32(y.Data[4:])); got != -1 {
		t.Errorf("NHWC element 1 (green of the first pixel) is %g, want -1", got)
	}
	if _, err := NewOp("image.normalize", map[string]any{"std": []any{1, 0, 1}}, ""); err == nil {
		t.Error("a std of 0 accepted")
	}
}

// wav is a WAV file of format (1 PCM, 3 float) and bits, with frames
// laid out as given (already encoded), and a data chunk that claims
// claim bytes (-1: its true length).
func wav(format, channels, rate, bits int, data []byte, claim int) []byte {
	if claim < 0 {
		claim = len(data)
	}
	le := binary.LittleEndian
	var b []byte
	b = append(b, "RIFF"...)
	b = le.AppendUint32(b, uint32(4+24+8+len(data)))
	b = append(b, "WAVEfmt "...)
	b = le.AppendUint32(b, 16)
	b = le.AppendUint16(b, uint16(format))
	b = le.AppendUint16(b, uint16(channels))
	b = le.AppendUint32(b, uint32(rate))
	b = le.AppendUint32(b, uint32(rate*channels*bits/8))
	b = le.AppendUint16(b, uint16(channels*bits/8))
	b = le.AppendUint16(b, uint16(bits))
	b = append(b, "data"...)
	b = le.AppendUint32(b, uint32(claim))
	return append(b, data...)
}

func floatsOf(t tensor.Tensor) []float64 {
	out := make([]float64, len(t.Data)/4)
	for i := range out {
		out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:])))
	}
	return out
}

func TestAudioDecode(t *testing.T) {
	le := binary.LittleEndian
	// 16-bit stereo: left 0.5, right -0.25 -> mono 0.125.
	var pcm16 []byte
	left, right := int16(16384), int16(-8192)
	for range 4 {
		pcm16 = le.AppendUint16(pcm16, uint16(left))
		pcm16 = le.AppendUint16(pcm16, uint16(right))
	}
	// 24-bit mono: -1 and 0.5.
	pcm24 := []byte{0x00, 0x00, 0x80, 0x00, 0x00, 0x40}
	// 32-bit float mono.
	var f32 []byte
	for _, v := range []float32{0.25, -0.75} {
		f32 = le.AppendUint32(f32, math.Float32bits(v))
	}
	for _, c := range []struct {
		name string
		file []byte
		want []float64
	}{
		{"pcm16 stereo to mono", wav(1, 2, 16000, 16, pcm16, -1), []float64{0.125, 0.125, 0.125, 0.125}},
		{"pcm24", wav(1, 1, 16000, 24, pcm24, -1), []float64{-1, 0.5}},
		{"float32", wav(3, 1, 16000, 32, f32, -1), []float64{0.25, -0.75}},
	} {
		t.Run(c.name, func(t *testing.T) {
			y, err := runOp(t, "audio.decode", map[string]any{"rate": 16000}, bytesTensor(c.file))
			if err != nil {
				t.Fatal(err)
			}
			got := floatsOf(y)
			if tensor.FormatShape(y.Shape) != tensor.FormatShape([]int64{1, int64(len(c.want))}) {
				t.Fatalf("shape %s", tensor.FormatShape(y.Shape))
			}
			for i := range c.want {
				if math.Abs(got[i]-c.want[i]) > 1e-6 {
					t.Fatalf("samples %v, want %v", got, c.want)
				}
			}
		})
	}
	for _, c := range []struct {
		name, want string
		file       []byte
	}{
		{"a header lying about its length", "claims 4000 bytes", wav(1, 1, 16000, 16, make([]byte, 40), 4000)},
		{"not a wav", "not a WAV file", []byte("RIFX0000WAVE")},
		{"mu-law", "format 7, 8 bits", wav(7, 1, 8000, 8, make([]byte, 8), -1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := runOp(t, "audio.decode", map[string]any{"rate": 16000}, bytesTensor(c.file)); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want one with %q", err, c.want)
			}
		})
	}
}

// A 1 kHz tone at 48 kHz resampled to 16 kHz is the same tone, sample for
// sample within 1 %; a 12 kHz tone, above the new Nyquist frequency, is
// filtered out rather than folded down to 4 kHz.
func TestResample(t *testing.T) {
	tone := func(freq float64, rate, n int) []float32 {
		out := make([]float32, n)
		for i := range out {
			out[i] = float32(math.Sin(2 * math.Pi * freq * float64(i) / float64(rate)))
		}
		return out
	}
	got := Resample(tone(1000, 48000, 48000), 48000, 16000)
	want := tone(1000, 16000, 16000)
	if len(got) != len(want) {
		t.Fatalf("%d samples, want %d", len(got), len(want))
	}
	for i := 200; i < len(want)-200; i++ { // away from the edges
		if math.Abs(float64(got[i]-want[i])) > 0.01 {
			t.Fatalf("sample %d: %g, want %g", i, got[i], want[i])
		}
	}
	var energy float64
	high := Resample(tone(12000, 48000, 48000), 48000, 16000)
	for _, v := range high[200 : len(high)-200] {
		energy += float64(v * v)
	}
	if rms := math.Sqrt(energy / float64(len(high)-400)); rms > 0.01 {
		t.Errorf("a 12 kHz tone at 16 kHz kept an RMS of %g; it should be filtered out (a sine's is 0.71)", rms)
	}
}
