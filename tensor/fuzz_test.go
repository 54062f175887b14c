package tensor

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"regexp"
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

// FuzzReadWireRequest: the jsontext reader accepts nothing that
// encoding/json rejects, and reads what it accepts as encoding/json does
// (where the body spells every member name in lower case: encoding/json
// also matches names whatever their case).
func FuzzReadWireRequest(f *testing.F) {
	for _, seed := range []string{
		`{"id":"a","parameters":{"k":[1,{"x":null}]},"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"custom_id":{"n":1}}`,
		`{"inputs":[{"name":"x","shape":null,"datatype":"FP32","data":null,"parameters":null}],"outputs":null,"id":null}`,
		`{"inputs":[{"name":"r","shape":[1],"datatype":"INT8","parameters":{"binary_data_size":1}}],"extra":[true,false]}`,
		`{"inputs":[{"name":"\u00e9","shape":[-0],"datatype":"BYTES","data":["\n\\"]}]} `,
		`{"inputs":[{"shape":[1.5]}]}`, `{"inputs":{}}`, `{"id":5}`, `{} {}`, `[]`, ``,
	} {
		f.Add([]byte(seed))
	}
	fuzzAgainstJSON(f, `id|parameters|custom_id|inputs|outputs|name|shape|datatype|data`, readWireRequest, normalize)
}

// fuzzAgainstJSON fuzzes read, a jsontext reader: what it accepts,
// encoding/json must accept too and read the same, after normalize makes
// the two readings comparable. Bodies that spell a member name (one of
// names, a regexp alternation) in other than lower case are passed over:
// encoding/json matches names whatever their case.
func fuzzAgainstJSON[W any](f *testing.F, names string, read func([]byte) (W, error), normalize func(*W)) {
	re := regexp.MustCompile(`(?i)"(` + names + `)"`)
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := read(body)
		if err != nil {
			return
		}
		for _, m := range re.FindAll(body, -1) {
			if !bytes.Equal(m, bytes.ToLower(m)) {
				return
			}
		}
		var want W
		if err := json.Unmarshal(body, &want); err != nil {
			t.Fatalf("read %q, which encoding/json refuses: %v", body, err)
		}
		normalize(&want)
		normalize(&got)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("read %q as\n%+v\nencoding/json reads\n%+v", body, got, want)
		}
	})
}

// normalize makes the two readings comparable: encoding/json keeps a null
// raw value as "null", and leaves empty slices empty rather than nil.
func normalize(w *wireRequest) {
	null := func(r *json.RawMessage) {
		if string(*r) == "null" || len(*r) == 0 {
			*r = nil
		}
	}
	null(&w.Parameters)
	null(&w.CustomID)
	if len(w.Inputs) == 0 {
		w.Inputs = nil
	}
	if len(w.Outputs) == 0 {
		w.Outputs = nil
	}
	normalizeTensors(w.Inputs)
	for i := range w.Outputs {
		null(&w.Outputs[i].Parameters)
	}
}

func normalizeTensors(ts []wireTensor) {
	for i := range ts {
		if string(ts[i].Data) == "null" || len(ts[i].Data) == 0 {
			ts[i].Data = nil
		}
		if len(ts[i].Parameters) == 0 {
			ts[i].Parameters = nil
		}
	}
}

// FuzzReadWireResponse: FuzzReadWireRequest for the response reader, with
// which stored results and announcements are read back.
func FuzzReadWireResponse(f *testing.F) {
	for _, seed := range []string{
		`{"model_name":"iris","model_version":"1","id":"a","parameters":{"inferq_lines":[[1]]},"outputs":[{"name":"y","shape":[2,2],"datatype":"FP32","data":[1,2,"NaN",4],"parameters":{"k":1}}]}`,
		`{"model_name":null,"outputs":[{"name":"s","shape":[1],"datatype":"BYTES","data":["{\"0\":0.5}"]}],"extra":{}}`,
		`{"outputs":null}`, `{"outputs":[{"shape":[1.5]}]}`, `{"id":5}`, `{} {}`, `[]`, ``,
	} {
		f.Add([]byte(seed))
	}
	fuzzAgainstJSON(f, `model_name|model_version|id|parameters|outputs|name|shape|datatype|data`, readWireResponse, func(w *wireResponse) {
		if string(w.Parameters) == "null" || len(w.Parameters) == 0 {
			w.Parameters = nil
		}
		if len(w.Outputs) == 0 {
			w.Outputs = nil
		}
		normalizeTensors(w.Outputs)
	})
}
