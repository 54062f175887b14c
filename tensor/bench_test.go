package tensor

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkDecodeRequest: a V2 JSON request of n FP32 elements decoded
// through the jsontext reader, and through encoding/json (the reader
// before it) as the baseline, side by side.
func BenchmarkDecodeRequest(b *testing.B) {
	for _, n := range []int{4, 1024, 3 * 224 * 224} {
		rng := rand.New(rand.NewPCG(1, 1))
		data := make([]byte, 4*n)
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		t := Tensor{Name: "x", Datatype: FP32, Shape: []int64{1, int64(n)}, Data: make([]byte, 0, 4*n)}
		for range n {
			t.Data = appendFloat(t.Data, FP32, rng.NormFloat64())
		}
		body := append([]byte(`{"id":"r1","inputs":[`), t.AppendJSON(nil)...)
		body = append(body, `],"outputs":[{"name":"y"}]}`...)
		benchReaders(b, fmt.Sprintf("%d/", n), body, readWireRequest, func(w wireRequest) []wireTensor { return w.Inputs })
	}
}

// BenchmarkDecodeManyInputs: a request of n single-element inputs, per
// input, at two sizes side by side: the cost an input should not grow with
// the inputs before it (checking names pairwise made 50,000 inputs take
// 3 s).
func BenchmarkDecodeManyInputs(b *testing.B) {
	for _, n := range []int{100, 50_000} {
		var body []byte
		body = append(body, `{"inputs":[`...)
		for i := range n {
			if i > 0 {
				body = append(body, ',')
			}
			body = fmt.Appendf(body, `{"name":"x%d","shape":[1],"datatype":"FP32","data":[1]}`, i)
		}
		body = append(body, "]}"...)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				if _, err := DecodeRequest(body, Limits{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/input")
		})
	}
}

// BenchmarkDecodeResponse: reading back a stored V2 response, as the
// batch output route does for each job of a batch file (256 rows of the
// iris classifier: probabilities [256, 3] FP32 and label [256] INT64),
// with the jsontext reader and with encoding/json side by side.
func BenchmarkDecodeResponse(b *testing.B) {
	rng := rand.New(rand.NewPCG(2, 2))
	probs := Tensor{Name: "probabilities", Datatype: FP32, Shape: []int64{256, 3}}
	label := Tensor{Name: "label", Datatype: Int64, Shape: []int64{256}}
	for range 256 * 3 {
		probs.Data = appendFloat(probs.Data, FP32, rng.Float64())
	}
	for range 256 {
		label.Data = binary.LittleEndian.AppendUint64(label.Data, uint64(rng.IntN(3)))
	}
	body := (&Response{ModelName: "iris", ModelVersion: "1", ID: "01M8AC3HC9HN8C9Y1TTYX2JS5H", Outputs: []Tensor{probs, label}}).AppendJSON(nil)
	benchReaders(b, "", body, readWireResponse, func(w wireResponse) []wireTensor { return w.Outputs })
}

// benchReaders runs body through encoding/json and through read, the
// jsontext reader, side by side, decoding the tensors of each reading.
func benchReaders[W any](b *testing.B, prefix string, body []byte, read func([]byte) (W, error), tensors func(W) []wireTensor) {
	readers := map[string]func([]byte) (W, error){
		"jsontext": read,
		"encoding_json": func(body []byte) (w W, err error) {
			err = json.Unmarshal(body, &w)
			return w, err
		},
	}
	for _, name := range []string{"encoding_json", "jsontext"} {
		b.Run(prefix+name, func(b *testing.B) {
			lim := Limits{}.withDefaults()
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				w, err := readers[name](body)
				if err != nil {
					b.Fatal(err)
				}
				for _, t := range tensors(w) {
					if _, _, err := t.decode(nil, lim, lim.MaxElements); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
