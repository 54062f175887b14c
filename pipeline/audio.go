package pipeline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/inferq/inferq/tensor"
)

// decodeAudio: BYTES [1] of a WAV file -> FP32 [1, samples], mono (the
// channels averaged), resampled to rate.
type decodeAudio struct {
	one
	rate int64
}

func (d *decodeAudio) check() error {
	if d.rate <= 0 || d.rate > 384_000 {
		return fmt.Errorf("rate %d: want samples a second, such as 16000", d.rate)
	}
	return nil
}

func (d *decodeAudio) Run(in map[string]tensor.Tensor) (map[string]tensor.Tensor, error) {
	file, err := oneFile(in["x"], "audio.decode", "audio")
	if err != nil {
		return nil, err
	}
	w, err := DecodeWAV(file)
	if err != nil {
		return nil, err
	}
	samples := Resample(w.Mono(), w.Rate, int(d.rate))
	data := make([]byte, 4*len(samples))
	for i, v := range samples {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	return map[string]tensor.Tensor{"y": {Name: "y", Datatype: tensor.FP32, Shape: []int64{1, int64(len(samples))}, Data: data}}, nil
}

// WAV is a decoded WAV file: its samples in [-1, 1], interleaved by
// channel.
type WAV struct {
	Rate, Channels int
	Samples        []float32
}

// Mono is the channels averaged.
func (w *WAV) Mono() []float32 {
	if w.Channels == 1 {
		return w.Samples
	}
	out := make([]float32, len(w.Samples)/w.Channels)
	for i := range out {
		var sum float32
		for c := range w.Channels {
			sum += w.Samples[i*w.Channels+c]
		}
		out[i] = sum / float32(w.Channels)
	}
	return out
}

// DecodeWAV reads a RIFF WAVE file of PCM (8, 16, 24 or 32 bits) or IEEE
// float (32 or 64 bits) samples, plain or WAVE_FORMAT_EXTENSIBLE. A file
// whose chunks claim more bytes than it holds is an error that says so.
func DecodeWAV(b []byte) (*WAV, error) {
	if len(b) < 12 || string(b[:4]) != "RIFF" || string(b[8:12]) != "WAVE" {
		return nil, errors.New("not a WAV file (no RIFF WAVE header)")
	}
	le := binary.LittleEndian
	var format, channels, bits int
	var rate int
	var data []byte
	seenFmt := false
	for at := 12; at+8 <= len(b); {
		id, size := string(b[at:at+4]), int(le.Uint32(b[at+4:]))
		body := at + 8
		if size < 0 || body+size > len(b) {
			if id == "data" && seenFmt {
				return nil, fmt.Errorf("the WAV's data chunk claims %d bytes; the file holds %d after it (cut short, or its header lies)", size, len(b)-body)
			}
			return nil, fmt.Errorf("the WAV's %q chunk claims %d bytes; the file holds %d after it", id, size, len(b)-body)
		}
		switch id {
		case "fmt ":
			if size < 16 {
				return nil, fmt.Errorf("the WAV's fmt chunk is %d bytes: want at least 16", size)
			}
			f := b[body:]
			format, channels, rate, bits = int(le.Uint16(f)), int(le.Uint16(f[2:])), int(le.Uint32(f[4:])), int(le.Uint16(f[14:]))
			if format == 0xFFFE && size >= 26 {
				format = int(le.Uint16(f[24:])) // the sub-format's first two bytes
			}
			seenFmt = true
		case "data":
			data = b[body : body+size]
		}
		at = body + size + size%2 // chunks are padded to even sizes
	}
	switch {
	case !seenFmt:
		return nil, errors.New("the WAV has no fmt chunk")
	case data == nil:
		return nil, errors.New("the WAV has no data chunk")
	case channels < 1 || channels > 64:
		return nil, fmt.Errorf("the WAV has %d channels", channels)
	case rate < 1 || rate > 768_000:
		return nil, fmt.Errorf("the WAV's rate is %d samples a second", rate)
	}
	size := bits / 8
	var read func([]byte) float32
	switch {
	case format == 1 && bits == 8:
		read = func(p []byte) float32 { return (float32(p[0]) - 128) / 128 }
	case format == 1 && bits == 16:
		read = func(p []byte) float32 { return float32(int16(le.Uint16(p))) / (1 << 15) }
	case format == 1 && bits == 24:
		read = func(p []byte) float32 {
			return float32(int32(uint32(p[0])<<8|uint32(p[1])<<16|uint32(p[2])<<24)>>8) / (1 << 23)
		}
	case format == 1 && bits == 32:
		read = func(p []byte) float32 { return float32(float64(int32(le.Uint32(p))) / (1 << 31)) }
	case format == 3 && bits == 32:
		read = func(p []byte) float32 { return math.Float32frombits(le.Uint32(p)) }
	case format == 3 && bits == 64:
		read = func(p []byte) float32 { return float32(math.Float64frombits(le.Uint64(p))) }
	default:
		return nil, fmt.Errorf("the WAV's samples are format %d, %d bits: inferq reads PCM of 8, 16, 24 or 32 bits and float of 32 or 64", format, bits)
	}
	frame := size * channels
	n := len(data) / frame
	w := &WAV{Rate: rate, Channels: channels, Samples: make([]float32, n*channels)}
	for i := range w.Samples {
		w.Samples[i] = read(data[i*size:])
	}
	return w, nil
}

// Resample converts samples from rate from to rate to with a windowed
// sinc (Kaiser, 16 zero crossings a side) whose cutoff is the lower
// Nyquist frequency: band-limited, not the nearest sample.
func Resample(in []float32, from, to int) []float32 {
	if from == to || len(in) == 0 {
		return in
	}
	ratio := float64(to) / float64(from)
	n := int(math.Round(float64(len(in)) * ratio))
	out := make([]float32, n)
	cutoff := math.Min(1, ratio) // of the input's Nyquist
	const zeros = 16
	half := zeros / cutoff // the window's half width, in input samples
	const beta = 8.6
	i0beta := bessel0(beta)
	for j := range out {
		center := float64(j) / ratio
		lo, hi := int(math.Ceil(center-half)), int(math.Floor(center+half))
		var sum, norm float64
		for k := max(lo, 0); k <= min(hi, len(in)-1); k++ {
			t := float64(k) - center
			x := t / half
			win := bessel0(beta*math.Sqrt(max(0, 1-x*x))) / i0beta
			v := cutoff * sinc(cutoff*t) * win
			sum += float64(in[k]) * v
			norm += v
		}
		if norm != 0 {
			out[j] = float32(sum / norm)
		}
	}
	return out
}

func sinc(x float64) float64 {
	if x == 0 {
		return 1
	}
	return math.Sin(math.Pi*x) / (math.Pi * x)
}

// bessel0 is the modified Bessel function of the first kind, order 0.
func bessel0(x float64) float64 {
	sum, term := 1.0, 1.0
	for k := 1; k < 50; k++ {
		term *= (x / (2 * float64(k))) * (x / (2 * float64(k)))
		sum += term
		if term < 1e-12*sum {
			break
		}
	}
	return sum
}
