package pipeline

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/inferq/inferq/tensor"
)

// probMap is an FP32 [1, 1, h, w] map of 0.05 with rectangles of p.
func probMap(w, h int, rects ...[5]float64) tensor.Tensor {
	data := make([]byte, 4*w*h)
	for y := range h {
		for x := range w {
			v := float32(0.05)
			for _, r := range rects { // x0, y0, x1, y1 (inclusive), p
				if float64(x) >= r[0] && float64(x) <= r[2] && float64(y) >= r[1] && float64(y) <= r[3] {
					v = float32(r[4])
				}
			}
			binary.LittleEndian.PutUint32(data[4*(y*w+x):], math.Float32bits(v))
		}
	}
	return tensor.Tensor{Name: "map", Datatype: tensor.FP32, Shape: []int64{1, 1, int64(h), int64(w)}, Data: data}
}

func uint8Picture(w, h int, px func(x, y int) [3]byte) tensor.Tensor {
	data := make([]byte, 0, 3*w*h)
	for y := range h {
		for x := range w {
			p := px(x, y)
			data = append(data, p[:]...)
		}
	}
	return tensor.Tensor{Name: "image", Datatype: tensor.Uint8, Shape: []int64{int64(h), int64(w), 3}, Data: data}
}

// TestTextBoxes: on a synthetic map (100x40, for a picture twice its
// size), a text region of 40x10 pixels centres (39x9 between them) comes
// out as its minimum box grown by the unclip distance, 1.5 * area /
// perimeter = 5.484 a side, in the picture's coordinates; the line below
// it comes second; a 2x2 speck and a faint region are dropped.
func TestTextBoxes(t *testing.T) {
	op, err := NewOp("text.boxes", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	m := probMap(100, 40,
		[5]float64{20, 10, 59, 19, 0.9}, // a line
		[5]float64{5, 28, 30, 33, 0.8},  // the line below, further left
		[5]float64{80, 2, 81, 3, 0.9},   // a speck: shorter side 1 < min_size
		[5]float64{70, 25, 95, 35, 0.4}, // above threshold, below box_threshold
	)
	img := uint8Picture(200, 80, func(x, y int) [3]byte { return [3]byte{255, 255, 255} })
	out, err := op.Run(map[string]tensor.Tensor{"map": m, "image": img})
	if err != nil {
		t.Fatal(err)
	}
	boxes, scores := out["boxes"], out["scores"]
	if tensor.FormatShape(boxes.Shape) != "[2 4 2]" || tensor.FormatShape(scores.Shape) != "[2]" {
		t.Fatalf("boxes %s, scores %s: want two boxes", tensor.FormatShape(boxes.Shape), tensor.FormatShape(scores.Shape))
	}
	b, s := floatsOf(boxes), floatsOf(scores)
	// 20-5.484 .. 59+5.484 and 10-5.484 .. 19+5.484, doubled and rounded.
	want := []float64{29, 9, 129, 9, 129, 49, 29, 49}
	for i, w := range want {
		if b[i] != w {
			t.Fatalf("first box %v, want %v", b[:8], want)
		}
	}
	if math.Abs(s[0]-0.9) > 1e-6 || math.Abs(s[1]-0.8) > 1e-6 {
		t.Errorf("scores %v, want 0.9 and 0.8", s)
	}
	if b[9] < b[1] {
		t.Errorf("the lower line came first: %v", b)
	}
}

// TestImageCrop: boxes cut out of a picture, rectified, resized to the
// height and padded with black to the widest; a tall box is turned.
func TestImageCrop(t *testing.T) {
	// 40x20: left half red, right half blue; a green square at x 30-35.
	img := uint8Picture(40, 20, func(x, y int) [3]byte {
		switch {
		case x >= 30 && x < 36 && y >= 2 && y < 18:
			return [3]byte{0, 200, 0}
		case x < 20:
			return [3]byte{200, 0, 0}
		}
		return [3]byte{0, 0, 200}
	})
	box := func(x0, y0, x1, y1 float64) []float64 { return []float64{x0, y0, x1, y0, x1, y1, x0, y1} }
	var flat []float64
	flat = append(flat, box(0, 0, 20, 10)...)  // red, 20x10 -> 20 high: 40 wide
	flat = append(flat, box(20, 0, 30, 5)...)  // blue, 10x5 -> 20 high: 40 wide
	flat = append(flat, box(30, 2, 36, 18)...) // green, 6x16: tall, turned to 16x6 -> 20 high: 54 wide
	boxes := encode("boxes", tensor.FP32, []int64{3, 4, 2}, flat)
	op, err := NewOp("image.crop", map[string]any{"height": 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	out, err := op.Run(map[string]tensor.Tensor{"image": img, "boxes": boxes})
	if err != nil {
		t.Fatal(err)
	}
	y := out["y"]
	if got := tensor.FormatShape(y.Shape); got != "[3 20 54 3]" {
		t.Fatalf("crops %s, want [3 20 54 3]", got)
	}
	px := func(n, row, col int) [3]byte {
		i := ((n*20+row)*54 + col) * 3
		return [3]byte{y.Data[i], y.Data[i+1], y.Data[i+2]}
	}
	for _, c := range []struct {
		n, row, col int
		want        [3]byte
	}{
		{0, 10, 20, [3]byte{200, 0, 0}}, // red inside
		{0, 10, 50, [3]byte{0, 0, 0}},   // padded black past 40
		{1, 10, 20, [3]byte{0, 0, 200}}, // blue
		{2, 10, 27, [3]byte{0, 200, 0}}, // green, turned
	} {
		if got := px(c.n, c.row, c.col); got != c.want {
			t.Errorf("crop %d at (%d, %d) is %v, want %v", c.n, c.col, c.row, got, c.want)
		}
	}
	if _, err := NewOp("image.crop", map[string]any{"height": 0}, ""); err == nil {
		t.Error("a height of 0 accepted")
	}
}

// TestHomography: the map of a square onto a quadrilateral takes each
// corner to its corner.
func TestHomography(t *testing.T) {
	from := [4]point{{0, 0}, {10, 0}, {10, 10}, {0, 10}}
	to := [4]point{{3, 1}, {14, 2}, {12, 15}, {1, 11}}
	h := homography(from, to)
	for i, p := range from {
		z := h[6]*p.x + h[7]*p.y + h[8]
		x, y := (h[0]*p.x+h[1]*p.y+h[2])/z, (h[3]*p.x+h[4]*p.y+h[5])/z
		if math.Abs(x-to[i].x) > 1e-9 || math.Abs(y-to[i].y) > 1e-9 {
			t.Errorf("corner %v went to (%g, %g), want %v", p, x, y, to[i])
		}
	}
}
