package tensor

import (
	"errors"
	"testing"
)

// FuzzDecodeRequest: whatever a client sends, decoding returns a request
// whose tensors are consistent with their shapes, or an ErrInvalid error,
// never a panic. The seeds below run as ordinary tests; `go test -fuzz
// FuzzDecodeRequest ./tensor` explores further.
func FuzzDecodeRequest(f *testing.F) {
	for _, seed := range []string{
		`{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}`,
		`{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}`,
		`{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["a","\u00e9"]}]}`,
		`{"inputs":[{"name":"h","shape":[1],"datatype":"FP16","data":["NaN"]}],"outputs":[{"name":"y"}]}`,
		`{"inputs":[{"name":"b","shape":[3],"datatype":"BOOL","data":[true,false,1]}]}`,
		`{"inputs":[{"name":"r","shape":[1,4],"datatype":"FP32","parameters":{"inferq_object":"t/x.raw"}}]}`,
		`{"inputs":[{"name":"x","shape":[9223372036854775807,2],"datatype":"INT64","data":[1]}]}`,
		`{"inputs":[{"name":"x","shape":[-1],"datatype":"INT8","data":[1]}]}`,
		`{"inputs":[{"name":"x","shape":[1],"datatype":"UINT8","data":[300]}]}`,
		`{"inputs":[{"name":"x","shape":[],"datatype":"FP64","data":[1e308]}]}`,
		`{"inputs":[]}`, `{}`, `[]`, `null`, `{"inputs":[{"name":"x"`,
		`{"custom_id":7,"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[[[[1]]]]}]}`,
	} {
		f.Add([]byte(seed))
	}
	lim := Limits{MaxElements: 1 << 16}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodeRequest(body, lim)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not marked invalid: %v", err)
			}
			return
		}
		for i := range req.Inputs {
			in := &req.Inputs[i]
			if in.Object != "" {
				continue
			}
			if err := in.CheckData(); err != nil {
				t.Fatalf("decoded an inconsistent tensor from %q: %v", body, err)
			}
			// What decodes encodes and decodes back the same.
			enc, n, err := (&Request{Inputs: []Tensor{*in}}).MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			back, err := DecodeBinaryRequest(enc, n, lim)
			if err != nil || string(back.Inputs[0].Data) != string(in.Data) {
				t.Fatalf("binary round trip of %q: %v", body, err)
			}
		}
	})
}
