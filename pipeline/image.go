package pipeline

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	_ "image/gif"  // a format image.decode reads
	_ "image/jpeg" // a format image.decode reads
	_ "image/png"  // a format image.decode reads
	"io"
	"math"

	"github.com/rwcarlsen/goexif/exif"
	_ "golang.org/x/image/bmp" // a format image.decode reads
	xdraw "golang.org/x/image/draw"
	_ "golang.org/x/image/webp" // a format image.decode reads

	"github.com/inferq/inferq/tensor"
)

// Image operations. Pictures travel between steps as UINT8 [H, W, 3] RGB
// (or [N, H, W, 3]), as image.decode makes them. The libraries: the
// standard library's decoders (JPEG, PNG, GIF) and golang.org/x/image's
// (WebP, BMP) and its draw package for resampling (bilinear, as
// OpenCV's resize defaults to, which the models' own preprocessing used);
// github.com/rwcarlsen/goexif for a JPEG's EXIF orientation.

// MaxImagePixels is the most pixels image.decode decodes: a picture's
// declared size is read first, so that a small file that declares a huge
// picture (a decompression bomb) is refused before its pixels take
// memory. The API checks a file body against its own --max-image-pixels.
const MaxImagePixels = 40_000_000

// CheckImage reads a picture's header: its format, and an error for a
// file that is not a picture of a known format or declares more than
// maxPixels pixels.
func CheckImage(b []byte, maxPixels int64) (format string, err error) {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(b))
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "", fmt.Errorf("the %s file ends within its header: cut short", format)
	}
	if err != nil {
		return "", fmt.Errorf("not a picture inferq reads (JPEG, PNG, WebP, GIF, BMP): %w", err)
	}
	if px := int64(cfg.Width) * int64(cfg.Height); maxPixels > 0 && px > maxPixels {
		return format, fmt.Errorf("the %s declares %dx%d pixels (%d), more than the %d allowed", format, cfg.Width, cfg.Height, px, maxPixels)
	}
	if cfg.Width == 0 || cfg.Height == 0 {
		return format, fmt.Errorf("the %s declares no pixels (%dx%d)", format, cfg.Width, cfg.Height)
	}
	return format, nil
}

// decodeImage: BYTES [1] (or a scalar) of a picture file -> UINT8
// [H, W, 3] RGB, its EXIF orientation applied.
type decodeImage struct{ one }

func (decodeImage) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	file, err := oneFile(in["x"], "image.decode", "picture")
	if err != nil {
		return nil, err
	}
	img, err := DecodeImage(file, MaxImagePixels)
	if err != nil {
		return nil, err
	}
	return map[string]tensor.Tensor{"y": imageTensor("y", img)}, nil
}

// oneFile is the one file a BYTES input holds (a job's body).
func oneFile(x tensor.Tensor, op, what string) ([]byte, error) {
	if x.Datatype != tensor.Bytes {
		return nil, fmt.Errorf("x is %s: want BYTES, the %s's file", x.Datatype, what)
	}
	files, err := tensor.SplitBytes(x.Data)
	if err != nil {
		return nil, fmt.Errorf("x: %w", err)
	}
	if len(files) != 1 {
		return nil, fmt.Errorf("x holds %d files: %s takes one %s a job", len(files), op, what)
	}
	return files[0], nil
}

// DecodeImage decodes a picture file to RGB, its EXIF orientation
// applied; a grey, CMYK or paletted picture, or one with alpha (dropped),
// comes out RGB too.
func DecodeImage(b []byte, maxPixels int64) (*image.RGBA, error) {
	format, err := CheckImage(b, maxPixels)
	if err != nil {
		return nil, err
	}
	src, _, err := image.Decode(bytes.NewReader(b))
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("decode the %s: the file ends before its last pixel: cut short", format)
	}
	if err != nil {
		return nil, fmt.Errorf("decode the %s: %w", format, err)
	}
	rgb := toRGB(src)
	if format == "jpeg" {
		rgb = orient(rgb, orientation(b))
	}
	return rgb, nil
}

// toRGB copies src into an RGBA whose alpha is opaque and whose colour is
// src's own, not premultiplied: a transparent pixel keeps its colour, as
// OpenCV's imread (which drops alpha) gives it.
func toRGB(src image.Image) *image.RGBA {
	b := src.Bounds()
	dst := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	switch s := src.(type) {
	case *image.YCbCr, *image.Gray, *image.CMYK, *image.Paletted:
		if p, ok := s.(*image.Paletted); ok && hasAlpha(p.Palette) {
			break
		}
		draw.Draw(dst, dst.Bounds(), src, b.Min, draw.Src)
		return dst
	}
	for y := 0; y < b.Dy(); y++ {
		for x := 0; x < b.Dx(); x++ {
			c := color.NRGBAModel.Convert(src.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA)
			i := dst.PixOffset(x, y)
			dst.Pix[i], dst.Pix[i+1], dst.Pix[i+2], dst.Pix[i+3] = c.R, c.G, c.B, 255
		}
	}
	return dst
}

func hasAlpha(p color.Palette) bool {
	for _, c := range p {
		if _, _, _, a := c.RGBA(); a != 0xffff {
			return true
		}
	}
	return false
}

// orientation is a JPEG's EXIF orientation, 1 (as stored) when it has
// none or it cannot be read.
func orientation(b []byte) int {
	x, err := exif.Decode(bytes.NewReader(b))
	if err != nil {
		return 1
	}
	tag, err := x.Get(exif.Orientation)
	if err != nil {
		return 1
	}
	o, err := tag.Int(0)
	if err != nil || o < 1 || o > 8 {
		return 1
	}
	return o
}

// orient turns a picture stored with EXIF orientation o upright.
func orient(src *image.RGBA, o int) *image.RGBA {
	if o == 1 {
		return src
	}
	w, h := src.Bounds().Dx(), src.Bounds().Dy()
	dw, dh := w, h
	if o >= 5 {
		dw, dh = h, w
	}
	dst := image.NewRGBA(image.Rect(0, 0, dw, dh))
	for y := range h {
		for x := range w {
			var dx, dy int
			switch o {
			case 2:
				dx, dy = w-1-x, y
			case 3:
				dx, dy = w-1-x, h-1-y
			case 4:
				dx, dy = x, h-1-y
			case 5:
				dx, dy = y, x
			case 6:
				dx, dy = h-1-y, x
			case 7:
				dx, dy = h-1-y, w-1-x
			case 8:
				dx, dy = y, w-1-x
			}
			copy(dst.Pix[dst.PixOffset(dx, dy):][:4], src.Pix[src.PixOffset(x, y):][:4])
		}
	}
	return dst
}

// imageTensor is img as UINT8 [H, W, 3].
func imageTensor(name string, img *image.RGBA) tensor.Tensor {
	w, h := img.Bounds().Dx(), img.Bounds().Dy()
	data := make([]byte, 0, w*h*3)
	for y := range h {
		row := img.Pix[img.PixOffset(0, y):][:4*w]
		for x := 0; x < 4*w; x += 4 {
			data = append(data, row[x], row[x+1], row[x+2])
		}
	}
	return tensor.Tensor{Name: name, Datatype: tensor.Uint8, Shape: []int64{int64(h), int64(w), 3}, Data: data}
}

// pictures reads UINT8 [H, W, 3] or [N, H, W, 3] as N pictures.
func pictures(t tensor.Tensor) ([]*image.RGBA, error) {
	if t.Datatype != tensor.Uint8 {
		return nil, fmt.Errorf("%s is %s: want UINT8 pictures [H, W, 3] (image.decode makes them)", t.Name, t.Datatype)
	}
	s := t.Shape
	n := int64(1)
	switch {
	case len(s) == 3:
	case len(s) == 4:
		n, s = s[0], s[1:]
	default:
		return nil, fmt.Errorf("%s has shape %s: want [H, W, 3] or [N, H, W, 3]", t.Name, tensor.FormatShape(t.Shape))
	}
	if s[2] != 3 || int64(len(t.Data)) != n*s[0]*s[1]*3 {
		return nil, fmt.Errorf("%s has shape %s and %d bytes: want 3 channels", t.Name, tensor.FormatShape(t.Shape), len(t.Data))
	}
	h, w := int(s[0]), int(s[1])
	out := make([]*image.RGBA, n)
	for i := range out {
		img := image.NewRGBA(image.Rect(0, 0, w, h))
		src := t.Data[i*h*w*3:]
		for p := range h * w {
			copy(img.Pix[4*p:4*p+3], src[3*p:3*p+3])
			img.Pix[4*p+3] = 255
		}
		out[i] = img
	}
	return out, nil
}

// resizeImage: UINT8 pictures to a fixed size, or to a longest side of
// at most maxSide with both sides a multiple of multipleOf, keeping the
// ratio (the sides rounded to the nearest multiple, at least one).
type resizeImage struct {
	one
	h, w, maxSide, multipleOf int64
}

func (r *resizeImage) check() error {
	switch {
	case r.h > 0 && r.w > 0 && r.maxSide == 0:
		return nil
	case r.h == 0 && r.w == 0 && r.maxSide > 0:
		if r.multipleOf <= 0 {
			r.multipleOf = 1
		}
		return nil
	}
	return errors.New("give size: [h, w], or max_side (and multiple_of), not both")
}

// Size is the size a picture of w x h is resized to.
func (r *resizeImage) Size(w, h int) (int, int) {
	if r.maxSide == 0 {
		return int(r.w), int(r.h)
	}
	scale := math.Min(1, float64(r.maxSide)/float64(max(w, h)))
	round := func(v float64) int {
		m := float64(r.multipleOf)
		return int(max(m, math.Round(v/m)*m))
	}
	return round(float64(w) * scale), round(float64(h) * scale)
}

func (r *resizeImage) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	imgs, err := pictures(in["x"])
	if err != nil {
		return nil, err
	}
	var out []byte
	var w, h int
	for _, img := range imgs {
		w, h = r.Size(img.Bounds().Dx(), img.Bounds().Dy())
		dst := image.NewRGBA(image.Rect(0, 0, w, h))
		xdraw.BiLinear.Scale(dst, dst.Bounds(), img, img.Bounds(), xdraw.Src, nil)
		out = append(out, imageTensor("y", dst).Data...)
	}
	shape := []int64{int64(h), int64(w), 3}
	if len(in["x"].Shape) == 4 {
		shape = append([]int64{int64(len(imgs))}, shape...)
	}
	return map[string]tensor.Tensor{"y": {Name: "y", Datatype: tensor.Uint8, Shape: shape, Data: out}}, nil
}

// normalizeImage: UINT8 pictures to FP32 (x*scale - mean)/std per
// channel, NCHW (as PaddleOCR's and most vision models take them) or
// NHWC; one picture [H, W, 3] becomes a batch of one.
type normalizeImage struct {
	one
	scale     float64
	mean, std []float64
	nchw      bool
}

func (n *normalizeImage) check() error {
	if len(n.mean) != 3 || len(n.std) != 3 {
		return errors.New("mean and std give a value per channel: three each")
	}
	for _, s := range n.std {
		if s == 0 {
			return errors.New("std has a 0")
		}
	}
	return nil
}

func (n *normalizeImage) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	x := in["x"]
	if _, err := pictures(x); err != nil {
		return nil, err
	}
	s := x.Shape
	count := int64(1)
	if len(s) == 4 {
		count, s = s[0], s[1:]
	}
	h, w := s[0], s[1]
	out := make([]byte, 4*len(x.Data))
	le := binary.LittleEndian
	plane := h * w
	for i := range count {
		for p := range plane {
			for c := range int64(3) {
				v := (float64(x.Data[(i*plane+p)*3+c])*n.scale - n.mean[c]) / n.std[c]
				at := (i*plane+p)*3 + c // NHWC
				if n.nchw {
					at = i*plane*3 + c*plane + p
				}
				le.PutUint32(out[4*at:], math.Float32bits(float32(v)))
			}
		}
	}
	shape := []int64{count, h, w, 3}
	if n.nchw {
		shape = []int64{count, 3, h, w}
	}
	return map[string]tensor.Tensor{"y": {Name: "y", Datatype: tensor.FP32, Shape: shape, Data: out}}, nil
}
