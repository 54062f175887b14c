package pipeline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"math"
	"slices"

	xdraw "golang.org/x/image/draw"

	"github.com/inferq/inferq/tensor"
)

// The two operations between a text detector and a text recognizer, as
// PaddleOCR's own pipeline runs them: text.boxes (its DB
// post-processing) and image.crop (its rotated crops). Both are written
// here: the geometry they need is small (connected components, a convex
// hull, a minimum-area rectangle by rotating calipers, a perspective
// transform), and a box is a rectangle, whose offset by a distance (the
// "unclip" PaddleOCR does with a polygon clipping library) has for its
// minimum-area rectangle the rectangle grown by that distance on every
// side: computed exactly, with no library.

// point is a position in pixels.
type point struct{ x, y float64 }

func (p point) sub(q point) point     { return point{p.x - q.x, p.y - q.y} }
func (p point) dist(q point) float64  { return math.Hypot(p.x-q.x, p.y-q.y) }
func cross(o, a, b point) float64     { return (a.x-o.x)*(b.y-o.y) - (a.y-o.y)*(b.x-o.x) }
func dot(a, b point) float64          { return a.x*b.x + a.y*b.y }
func (p point) scale(f float64) point { return point{p.x * f, p.y * f} }
func (p point) add(q point) point     { return point{p.x + q.x, p.y + q.y} }

// textBoxes: a text probability map [1, 1, h, w] (map) and the picture
// it was made from [H, W, 3] (image) -> the text's boxes [N, 4, 2] in
// the picture's coordinates (top-left, top-right, bottom-right,
// bottom-left; in reading order) and their scores [N].
type textBoxes struct {
	threshold, boxThreshold, unclipRatio, minSize float64
	maxCandidates                                 int
}

func (*textBoxes) Inputs() []string  { return []string{"image", "map"} }
func (*textBoxes) Outputs() []string { return []string{"boxes", "scores"} }

func (b *textBoxes) check() error {
	switch {
	case b.threshold <= 0 || b.threshold >= 1 || b.boxThreshold <= 0 || b.boxThreshold >= 1:
		return errors.New("threshold and box_threshold are probabilities, between 0 and 1")
	case b.unclipRatio <= 0:
		return errors.New("unclip_ratio must be positive")
	}
	return nil
}

func (b *textBoxes) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	m := in["map"]
	s := m.Shape
	for len(s) > 2 && s[0] == 1 {
		s = s[1:]
	}
	if m.Datatype != tensor.FP32 || len(s) != 2 {
		return nil, fmt.Errorf("map is %s %s: want FP32 [1, 1, h, w], a text detector's probabilities", m.Datatype, tensor.FormatShape(m.Shape))
	}
	h, w := int(s[0]), int(s[1])
	prob := make([]float32, h*w)
	for i := range prob {
		prob[i] = math.Float32frombits(binary.LittleEndian.Uint32(m.Data[4*i:]))
	}
	img := in["image"]
	if img.Datatype != tensor.Uint8 || len(img.Shape) != 3 || img.Shape[2] != 3 {
		return nil, fmt.Errorf("image is %s %s: want the picture, UINT8 [H, W, 3]", img.Datatype, tensor.FormatShape(img.Shape))
	}
	H, W := float64(img.Shape[0]), float64(img.Shape[1])
	var boxes [][4]point
	var scores []float64
	for _, comp := range components(prob, w, h, float32(b.threshold), b.maxCandidates) {
		box, side := miniBox(convexHull(comp))
		if side < b.minSize {
			continue
		}
		score := boxScore(prob, w, h, box)
		if score < b.boxThreshold {
			continue
		}
		box, side = unclip(box, b.unclipRatio)
		if side < b.minSize+2 {
			continue
		}
		for i := range box {
			box[i] = point{
				x: min(max(math.Round(box[i].x/float64(w)*W), 0), W),
				y: min(max(math.Round(box[i].y/float64(h)*H), 0), H),
			}
		}
		boxes, scores = append(boxes, box), append(scores, score)
	}
	order := readingOrder(boxes)
	flat := make([]float64, 0, 8*len(boxes))
	sorted := make([]float64, 0, len(boxes))
	for _, i := range order {
		for _, p := range boxes[i] {
			flat = append(flat, p.x, p.y)
		}
		sorted = append(sorted, scores[i])
	}
	n := int64(len(boxes))
	return map[string]tensor.Tensor{
		"boxes":  encode("boxes", tensor.FP32, []int64{n, 4, 2}, flat),
		"scores": encode("scores", tensor.FP32, []int64{n}, sorted),
	}, nil
}

// components are the 8-connected regions of prob above threshold, each
// as its pixels' centres, at most limit of them.
func components(prob []float32, w, h int, threshold float32, limit int) [][]point {
	seen := make([]bool, len(prob))
	var out [][]point
	var queue []int
	for start := range prob {
		if seen[start] || prob[start] <= threshold {
			continue
		}
		if limit > 0 && len(out) == limit {
			break
		}
		var comp []point
		seen[start] = true
		queue = append(queue[:0], start)
		for len(queue) > 0 {
			i := queue[len(queue)-1]
			queue = queue[:len(queue)-1]
			x, y := i%w, i/w
			comp = append(comp, point{float64(x), float64(y)})
			for dy := -1; dy <= 1; dy++ {
				for dx := -1; dx <= 1; dx++ {
					nx, ny := x+dx, y+dy
					if nx < 0 || ny < 0 || nx >= w || ny >= h {
						continue
					}
					j := ny*w + nx
					if !seen[j] && prob[j] > threshold {
						seen[j] = true
						queue = append(queue, j)
					}
				}
			}
		}
		out = append(out, comp)
	}
	return out
}

// convexHull is the hull of pts, counter-clockwise (Andrew's monotone
// chain).
func convexHull(pts []point) []point {
	pts = slices.Clone(pts)
	slices.SortFunc(pts, func(a, b point) int {
		if a.x != b.x {
			return cmpFloat(a.x, b.x)
		}
		return cmpFloat(a.y, b.y)
	})
	pts = slices.Compact(pts)
	if len(pts) < 3 {
		return pts
	}
	hull := make([]point, 0, 2*len(pts))
	for _, p := range pts {
		for len(hull) >= 2 && cross(hull[len(hull)-2], hull[len(hull)-1], p) <= 0 {
			hull = hull[:len(hull)-1]
		}
		hull = append(hull, p)
	}
	lower := len(hull) + 1
	for i := len(pts) - 2; i >= 0; i-- {
		p := pts[i]
		for len(hull) >= lower && cross(hull[len(hull)-2], hull[len(hull)-1], p) <= 0 {
			hull = hull[:len(hull)-1]
		}
		hull = append(hull, p)
	}
	return hull[:len(hull)-1]
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// rect is a rotated rectangle: its centre, its unit axes and its half
// sizes along them.
type rect struct {
	c      point
	u, v   point
	hu, hv float64
}

// minAreaRect is the rectangle of least area around a convex hull
// (rotating calipers: one of its sides lies on an edge of the hull).
func minAreaRect(hull []point) rect {
	if len(hull) == 0 {
		return rect{}
	}
	if len(hull) == 1 {
		return rect{c: hull[0], u: point{1, 0}, v: point{0, 1}}
	}
	best, bestArea := rect{}, math.Inf(1)
	for i := range hull {
		e := hull[(i+1)%len(hull)].sub(hull[i])
		l := math.Hypot(e.x, e.y)
		if l == 0 {
			continue
		}
		u := e.scale(1 / l)
		v := point{-u.y, u.x}
		minU, maxU, minV, maxV := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
		for _, p := range hull {
			a, b := dot(p, u), dot(p, v)
			minU, maxU, minV, maxV = min(minU, a), max(maxU, a), min(minV, b), max(maxV, b)
		}
		if area := (maxU - minU) * (maxV - minV); area < bestArea {
			bestArea = area
			c := u.scale((minU + maxU) / 2).add(v.scale((minV + maxV) / 2))
			best = rect{c: c, u: u, v: v, hu: (maxU - minU) / 2, hv: (maxV - minV) / 2}
		}
	}
	return best
}

// corners are a rectangle's corners, ordered as PaddleOCR orders a box:
// of the two leftmost, the upper is first and the lower last; of the two
// rightmost, the upper second and the lower third.
func (r rect) corners() [4]point {
	pts := []point{
		r.c.add(r.u.scale(-r.hu)).add(r.v.scale(-r.hv)),
		r.c.add(r.u.scale(r.hu)).add(r.v.scale(-r.hv)),
		r.c.add(r.u.scale(r.hu)).add(r.v.scale(r.hv)),
		r.c.add(r.u.scale(-r.hu)).add(r.v.scale(r.hv)),
	}
	slices.SortStableFunc(pts, func(a, b point) int { return cmpFloat(a.x, b.x) })
	var box [4]point
	if pts[1].y > pts[0].y {
		box[0], box[3] = pts[0], pts[1]
	} else {
		box[0], box[3] = pts[1], pts[0]
	}
	if pts[3].y > pts[2].y {
		box[1], box[2] = pts[2], pts[3]
	} else {
		box[1], box[2] = pts[3], pts[2]
	}
	return box
}

// miniBox is the minimum-area box around hull, and its shorter side.
func miniBox(hull []point) ([4]point, float64) {
	r := minAreaRect(hull)
	return r.corners(), 2 * min(r.hu, r.hv)
}

// unclip grows a box by area*ratio/perimeter on every side, as
// PaddleOCR's unclip does to a detector's shrunk text region.
func unclip(box [4]point, ratio float64) ([4]point, float64) {
	wd, ht := box[0].dist(box[1]), box[0].dist(box[3])
	if wd == 0 || ht == 0 {
		return box, 0
	}
	d := wd * ht * ratio / (2 * (wd + ht))
	u := box[1].sub(box[0]).scale(1 / wd)
	v := box[3].sub(box[0]).scale(1 / ht)
	c := box[0].add(box[2]).scale(0.5)
	r := rect{c: c, u: u, v: v, hu: wd/2 + d, hv: ht/2 + d}
	return r.corners(), 2 * min(r.hu, r.hv)
}

// boxScore is the mean probability inside a box (PaddleOCR's fast box
// score: the pixels of its bounding rectangle inside the box).
func boxScore(prob []float32, w, h int, box [4]point) float64 {
	xmin, xmax, ymin, ymax := w-1, 0, h-1, 0
	for _, p := range box {
		xmin, xmax = min(xmin, int(math.Floor(p.x))), max(xmax, int(math.Ceil(p.x)))
		ymin, ymax = min(ymin, int(math.Floor(p.y))), max(ymax, int(math.Ceil(p.y)))
	}
	xmin, ymin, xmax, ymax = max(xmin, 0), max(ymin, 0), min(xmax, w-1), min(ymax, h-1)
	var sum float64
	n := 0
	for y := ymin; y <= ymax; y++ {
		for x := xmin; x <= xmax; x++ {
			if inside(box, point{float64(x), float64(y)}) {
				sum += float64(prob[y*w+x])
				n++
			}
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// inside reports p within the convex box (its edges included).
func inside(box [4]point, p point) bool {
	sign := 0.0
	for i := range box {
		c := cross(box[i], box[(i+1)%4], p)
		if c == 0 {
			continue
		}
		if sign == 0 {
			sign = c
		} else if (c > 0) != (sign > 0) {
			return false
		}
	}
	return true
}

// readingOrder sorts boxes top to bottom, then left to right within a
// line (boxes whose tops are within 10 pixels), as PaddleOCR does.
func readingOrder(boxes [][4]point) []int {
	order := make([]int, len(boxes))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		if c := cmpFloat(boxes[a][0].y, boxes[b][0].y); c != 0 {
			return c
		}
		return cmpFloat(boxes[a][0].x, boxes[b][0].x)
	})
	for i := 0; i+1 < len(order); i++ {
		for j := i; j >= 0; j-- {
			a, b := boxes[order[j]][0], boxes[order[j+1]][0]
			if math.Abs(b.y-a.y) < 10 && b.x < a.x {
				order[j], order[j+1] = order[j+1], order[j]
			} else {
				break
			}
		}
	}
	return order
}

// cropImage: a picture [H, W, 3] and boxes [N, 4, 2] in it -> each box's
// pixels, rectified upright by a perspective transform (a box taller
// than 1.5 times its width is turned a quarter), resized to height
// keeping the ratio (at most maxWidth wide, when set), right-padded to
// the widest with its last column: UINT8 [N, height, W, 3].
type cropImage struct {
	height, maxWidth int64
}

func (*cropImage) Inputs() []string  { return []string{"boxes", "image"} }
func (*cropImage) Outputs() []string { return []string{"y"} }

func (c *cropImage) check() error {
	if c.height <= 0 || c.maxWidth < 0 {
		return errors.New("height must be positive, max_width not negative")
	}
	return nil
}

func (c *cropImage) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	imgs, err := pictures(in["image"])
	if err != nil {
		return nil, err
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("image holds %d pictures: image.crop takes one", len(imgs))
	}
	src := imgs[0]
	bt := in["boxes"]
	if bt.Datatype != tensor.FP32 || len(bt.Shape) != 3 || bt.Shape[1] != 4 || bt.Shape[2] != 2 {
		return nil, fmt.Errorf("boxes is %s %s: want FP32 [N, 4, 2]", bt.Datatype, tensor.FormatShape(bt.Shape))
	}
	v, err := values(bt)
	if err != nil {
		return nil, err
	}
	n := int(bt.Shape[0])
	crops := make([]*image.RGBA, n)
	width := 0
	for i := range n {
		var box [4]point
		for k := range 4 {
			box[k] = point{v[8*i+2*k], v[8*i+2*k+1]}
		}
		crop := rectify(src, box)
		b := crop.Bounds()
		rw := int(math.Ceil(float64(c.height) * float64(b.Dx()) / float64(max(b.Dy(), 1))))
		if c.maxWidth > 0 {
			rw = min(rw, int(c.maxWidth))
		}
		rw = max(rw, 1)
		dst := image.NewRGBA(image.Rect(0, 0, rw, int(c.height)))
		xdraw.CatmullRom.Scale(dst, dst.Bounds(), crop, b, xdraw.Src, nil)
		crops[i] = dst
		width = max(width, rw)
	}
	h := int(c.height)
	out := make([]byte, n*h*width*3)
	for i, crop := range crops {
		cw := crop.Bounds().Dx()
		for y := range h {
			for x := range width {
				// Past its width a crop's last column goes on: the
				// line's own background, not a band the recognizer
				// could read as a mark.
				if x >= cw {
					continue
				}
				p := crop.Pix[crop.PixOffset(x, y):]
				copy(out[((i*h+y)*width+x)*3:][:3], p[:3])
			}
		}
	}
	return map[string]tensor.Tensor{"y": {Name: "y", Datatype: tensor.Uint8, Shape: []int64{int64(n), int64(h), int64(width), 3}, Data: out}}, nil
}

// rectify maps a box of src (top-left, top-right, bottom-right,
// bottom-left) onto an upright rectangle as wide and tall as its longer
// opposite sides, sampling bilinearly with the border replicated; a
// result taller than 1.5 times its width is turned a quarter
// counter-clockwise (a vertical line of text).
func rectify(src *image.RGBA, box [4]point) *image.RGBA {
	cw := int(max(box[0].dist(box[1]), box[3].dist(box[2])))
	ch := int(max(box[0].dist(box[3]), box[1].dist(box[2])))
	cw, ch = max(cw, 1), max(ch, 1)
	hm := homography([4]point{{0, 0}, {float64(cw), 0}, {float64(cw), float64(ch)}, {0, float64(ch)}}, box)
	dst := image.NewRGBA(image.Rect(0, 0, cw, ch))
	for y := range ch {
		for x := range cw {
			fx, fy, fz := float64(x), float64(y), 1.0
			sx := (hm[0]*fx + hm[1]*fy + hm[2]*fz) / (hm[6]*fx + hm[7]*fy + hm[8])
			sy := (hm[3]*fx + hm[4]*fy + hm[5]*fz) / (hm[6]*fx + hm[7]*fy + hm[8])
			copy(dst.Pix[dst.PixOffset(x, y):][:4], bilinear(src, sx, sy))
		}
	}
	if float64(ch) >= 1.5*float64(cw) {
		return rotateLeft(dst)
	}
	return dst
}

// bilinear samples src at (x, y), the border replicated.
func bilinear(src *image.RGBA, x, y float64) []byte {
	w, h := src.Bounds().Dx(), src.Bounds().Dy()
	x, y = min(max(x, 0), float64(w-1)), min(max(y, 0), float64(h-1))
	x0, y0 := int(x), int(y)
	x1, y1 := min(x0+1, w-1), min(y0+1, h-1)
	fx, fy := x-float64(x0), y-float64(y0)
	var out [4]byte
	for ch := range 3 {
		a := float64(src.Pix[src.PixOffset(x0, y0)+ch])*(1-fx) + float64(src.Pix[src.PixOffset(x1, y0)+ch])*fx
		b := float64(src.Pix[src.PixOffset(x0, y1)+ch])*(1-fx) + float64(src.Pix[src.PixOffset(x1, y1)+ch])*fx
		out[ch] = uint8(math.Round(a*(1-fy) + b*fy))
	}
	out[3] = 255
	return out[:]
}

func rotateLeft(src *image.RGBA) *image.RGBA {
	w, h := src.Bounds().Dx(), src.Bounds().Dy()
	dst := image.NewRGBA(image.Rect(0, 0, h, w))
	for y := range h {
		for x := range w {
			copy(dst.Pix[dst.PixOffset(y, w-1-x):][:4], src.Pix[src.PixOffset(x, y):][:4])
		}
	}
	return dst
}

// homography is the 3x3 projective map (row-major, h[8] = 1) taking
// each from[i] to to[i].
func homography(from, to [4]point) [9]float64 {
	var a [8][9]float64
	for i := range 4 {
		x, y, u, v := from[i].x, from[i].y, to[i].x, to[i].y
		a[2*i] = [9]float64{x, y, 1, 0, 0, 0, -u * x, -u * y, u}
		a[2*i+1] = [9]float64{0, 0, 0, x, y, 1, -v * x, -v * y, v}
	}
	// Gaussian elimination with partial pivoting.
	for col := range 8 {
		p := col
		for r := col + 1; r < 8; r++ {
			if math.Abs(a[r][col]) > math.Abs(a[p][col]) {
				p = r
			}
		}
		a[col], a[p] = a[p], a[col]
		if a[col][col] == 0 {
			return [9]float64{1, 0, 0, 0, 1, 0, 0, 0, 1} // degenerate: as it is
		}
		for r := range 8 {
			if r == col {
				continue
			}
			f := a[r][col] / a[col][col]
			for k := col; k < 9; k++ {
				a[r][k] -= f * a[col][k]
			}
		}
	}
	var h [9]float64
	for i := range 8 {
		h[i] = a[i][8] / a[i][i]
	}
	h[8] = 1
	return h
}
