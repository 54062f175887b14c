package tensor

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecodeRequestRoundTrip(t *testing.T) {
	cases := []struct {
		name, datatype, data, shape string
		want                        string // expected data after a JSON round trip
	}{
		{"fp32 flat", "FP32", "[1.5, -2, 3e2, 0.1]", "[4]", "[1.5,-2,300,0.1]"},
		{"fp32 nested", "FP32", "[[1, 2], [3, 4]]", "[2,2]", "[1,2,3,4]"},
		{"fp64", "FP64", "[0.1, 1e300]", "[2]", "[0.1,1e+300]"},
		{"fp16", "FP16", "[0.5, -65504, 1]", "[3]", "[0.5,-65504,1]"},
		{"non-finite", "FP32", `["NaN", "Infinity", "-Infinity"]`, "[3]", `["NaN","Infinity","-Infinity"]`},
		{"int8", "INT8", "[-128, 127]", "[2]", "[-128,127]"},
		{"int16", "INT16", "[-32768, 32767]", "[1,2]", "[-32768,32767]"},
		{"int32", "INT32", "[-5]", "[1]", "[-5]"},
		{"int64", "INT64", "[-9223372036854775808, 9223372036854775807]", "[2]", "[-9223372036854775808,9223372036854775807]"},
		{"uint8", "UINT8", "[0, 255]", "[2]", "[0,255]"},
		{"uint16", "UINT16", "[65535]", "[1]", "[65535]"},
		{"uint32", "UINT32", "[4294967295]", "[1]", "[4294967295]"},
		{"uint64", "UINT64", "[18446744073709551615]", "[1]", "[18446744073709551615]"},
		{"bool", "BOOL", "[true, false]", "[2]", "[true,false]"},
		{"bytes", "BYTES", `["hello", "wörld", "a\"b\\n", ""]`, "[4]", `["hello","wörld","a\"b\\n",""]`},
		{"scalar", "FP32", "7", "[]", "[7]"},
		{"empty", "FP32", "[]", "[0,3]", "[]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := `{"id":"c1","inputs":[{"name":"x","datatype":"` + c.datatype + `","shape":` + c.shape + `,"data":` + c.data + `}]}`
			req, err := DecodeRequest([]byte(body), Limits{})
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			in := req.Inputs[0]
			if err := in.CheckData(); err != nil {
				t.Fatalf("check: %v", err)
			}
			resp := Response{ModelName: "m", ModelVersion: "1", ID: req.ID, Outputs: []Tensor{in}}
			js := string(resp.AppendJSON(nil))
			if !strings.Contains(js, `"data":`+c.want) {
				t.Fatalf("encoded %s, want data %s", js, c.want)
			}
			back, err := DecodeResponse([]byte(js))
			if err != nil {
				t.Fatalf("decode response: %v", err)
			}
			if !bytes.Equal(back.Outputs[0].Data, in.Data) {
				t.Fatalf("round trip changed data: %v != %v", back.Outputs[0].Data, in.Data)
			}
		})
	}
}

func TestDecodeRequestErrors(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"not json", `{"inputs":`, "not valid V2 JSON"},
		{"no inputs", `{"inputs":[]}`, "no inputs"},
		{"no name", `{"inputs":[{"datatype":"FP32","shape":[1],"data":[1]}]}`, "no name"},
		{"bad datatype", `{"inputs":[{"name":"x","datatype":"FLOAT","shape":[1],"data":[1]}]}`, `unknown datatype "FLOAT"`},
		{"no shape", `{"inputs":[{"name":"x","datatype":"FP32","data":[1]}]}`, "no shape"},
		{"negative dim", `{"inputs":[{"name":"x","datatype":"FP32","shape":[-1],"data":[1]}]}`, "negative dimension"},
		{"no data", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}`, "has no data"},
		{"too few", `{"inputs":[{"name":"x","datatype":"FP32","shape":[3],"data":[1,2]}]}`, "data has 2 elements but its shape needs 3"},
		{"too many", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1,2]}]}`, "more elements than the 1"},
		{"string in float", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":["a"]}]}`, "must be numbers"},
		{"float in int", `{"inputs":[{"name":"x","datatype":"INT32","shape":[1],"data":[1.5]}]}`, "not an integer"},
		{"int range", `{"inputs":[{"name":"x","datatype":"UINT8","shape":[1],"data":[256]}]}`, "out of range for UINT8"},
		{"negative uint", `{"inputs":[{"name":"x","datatype":"UINT32","shape":[1],"data":[-1]}]}`, "not an integer"},
		{"fp16 range", `{"inputs":[{"name":"x","datatype":"FP16","shape":[1],"data":[70000]}]}`, "out of range for FP16"},
		{"fp32 range", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1e39]}]}`, "out of range for FP32"},
		{"bool", `{"inputs":[{"name":"x","datatype":"BOOL","shape":[1],"data":[1]}]}`, "true or false"},
		{"bytes number", `{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":[1]}]}`, "must be strings"},
		{"object data", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":{"a":1}}]}`, "not an object"},
		{"duplicate", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]},{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}`, "appears twice"},
		{"too big", `{"inputs":[{"name":"x","datatype":"FP32","shape":[100000,100000,100000],"data":[1]}]}`, "exceeds the limit"},
		{"overflow", `{"inputs":[{"name":"x","datatype":"FP32","shape":[4294967296,4294967296,4294967296],"data":[1]}]}`, "exceeds the limit"},
		{"deep", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":` + strings.Repeat("[", 40) + "1" + strings.Repeat("]", 40) + `}]}`, "nested deeper"},
		{"name twice", `{"inputs":[{"name":"x","name":"y","datatype":"FP32","shape":[1],"data":[1]}]}`, `duplicate object member name "name" within "/inputs/0"`},
		{"invalid utf-8", "{\"inputs\":[{\"name\":\"\xff\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[1]}]}", `invalid UTF-8 within "/inputs/0/name"`},
		{"trailing data", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]} x`, "after offset"},
		{"inputs not an array", `{"inputs":{}}`, "inputs must be an array, got an object"},
		{"fractional dim", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1.5],"data":[1]}]}`, "inputs[0]: shape: 1.5 is not an integer"},
		{"numeric name", `{"inputs":[{"name":5,"datatype":"FP32","shape":[1],"data":[1]}]}`, "inputs[0]: name must be a string, got a number"},
		{"name in other case", `{"Inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}`, `unknown member "Inputs": member names are case-sensitive; did you mean "inputs"?`},
		{"tensor member in other case", `{"inputs":[{"name":"x","DataType":"FP32","shape":[1],"data":[1]}]}`, `inputs[0]: unknown member "DataType"`},
		{"null data", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":null}]}`, "has no data"},
		{"unnamed output", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"outputs":[{}]}`, "outputs has no name"},
		{"an output asked for twice", `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"outputs":[{"name":"y"},{"name":"z"},{"name":"y"}]}`, "asked for twice"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodeRequest([]byte(c.body), Limits{})
			if err == nil {
				t.Fatalf("decoded without error, want %q", c.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q, want it to contain %q", err, c.want)
			}
		})
	}
}

func TestBinaryRoundTrip(t *testing.T) {
	body := `{"id":"b","parameters":{"k":1},"inputs":[
		{"name":"a","datatype":"FP32","shape":[2,2],"data":[1,2,3,4]},
		{"name":"s","datatype":"BYTES","shape":[2],"data":["x","yz"]}],
		"outputs":[{"name":"o"}]}`
	req, err := DecodeRequest([]byte(body), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	data, n, err := req.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeBinaryRequest(data, n, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if back.ID != "b" || string(back.Parameters) != `{"k":1}` || len(back.Outputs) != 1 || back.Outputs[0] != "o" {
		t.Fatalf("header fields lost: %+v", back)
	}
	for i := range req.Inputs {
		if !bytes.Equal(req.Inputs[i].Data, back.Inputs[i].Data) || FormatShape(req.Inputs[i].Shape) != FormatShape(back.Inputs[i].Shape) {
			t.Fatalf("input %d differs after binary round trip", i)
		}
	}
	if _, err := DecodeBinaryRequest(data[:len(data)-1], n, Limits{}); err == nil {
		t.Fatal("truncated binary data decoded without error")
	}
	if _, err := DecodeBinaryRequest(data, len(data)+1, Limits{}); err == nil {
		t.Fatal("header length past the body decoded without error")
	}
}

func TestSpecAccepts(t *testing.T) {
	spec := Spec{Name: "x", Datatype: FP32, Shape: []int64{-1, 3}}
	cases := []struct {
		name string
		t    Tensor
		want string
	}{
		{"ok", Tensor{Name: "x", Datatype: FP32, Shape: []int64{5, 3}}, ""},
		{"datatype", Tensor{Name: "x", Datatype: FP64, Shape: []int64{5, 3}}, "has datatype FP64, the model expects FP32"},
		{"rank", Tensor{Name: "x", Datatype: FP32, Shape: []int64{3}}, "expects 2 dimensions"},
		{"dim", Tensor{Name: "x", Datatype: FP32, Shape: []int64{1, 4}}, "dimension 1 must be 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := spec.Accepts(&c.t)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want %q", err, c.want)
			}
		})
	}
}

func TestFloatEncoding(t *testing.T) {
	// FP32 values print with the shortest representation that reads back
	// to the same float32, not float64 noise.
	tt := Tensor{Name: "y", Datatype: FP32, Shape: []int64{1}}
	tt.Data = appendFloat(nil, FP32, float64(float32(0.1)))
	got := string(tt.AppendJSON(nil))
	if !strings.Contains(got, `"data":[0.1]`) {
		t.Fatalf("got %s", got)
	}
}

// A response is valid JSON whatever its strings hold: control characters
// and DEL in a client's request id (strconv quoting wrote them as \x01,
// which JSON has not), quotes, backslashes, and invalid UTF-8 in BYTES
// data (written as U+FFFD, as encoding/json does). Each reads back.
func TestResponseStrings(t *testing.T) {
	tests := []struct{ id, elem, wantElem string }{
		{"a\x01b\x7fc", "plain", "plain"},
		{`"quoted" \ back`, "<tag> & \u2028", "<tag> & \u2028"},
		{"é ✓", "bad \xff byte", "bad \ufffd byte"},
	}
	for _, tt := range tests {
		r := &Response{ModelName: "m", ModelVersion: "1", ID: tt.id, Outputs: []Tensor{
			{Name: "s", Datatype: Bytes, Shape: []int64{1}, Data: AppendBytesElement(nil, []byte(tt.elem))},
		}}
		b := r.AppendJSON(nil)
		if !json.Valid(b) {
			t.Fatalf("id %q: invalid JSON %s", tt.id, b)
		}
		got, err := DecodeResponse(b)
		if err != nil {
			t.Fatalf("id %q: %v", tt.id, err)
		}
		elems, err := SplitBytes(got.Outputs[0].Data)
		if err != nil || got.ID != tt.id || len(elems) != 1 || string(elems[0]) != tt.wantElem {
			t.Errorf("read back id %q, elements %q (%v); want %q, %q", got.ID, elems, err, tt.id, tt.wantElem)
		}
	}
}

// A request written by Request.AppendJSON reads back the same: inputs
// with data, an input given by reference as the reference (not the data
// read for it), and the outputs asked for.
func TestRequestAppendJSON(t *testing.T) {
	req := &Request{
		Inputs: []Tensor{
			{Name: "x", Datatype: FP32, Shape: []int64{1, 2}, Data: []byte{0, 0, 128, 63, 0, 0, 0, 64}},
			{Name: "img", Datatype: Uint8, Shape: []int64{1, 3}, Object: "inputs/m/a \"b\".raw", Data: []byte{1, 2, 3}},
		},
		Outputs: []string{"y"},
	}
	got, err := DecodeRequest(req.AppendJSON(nil), Limits{})
	if err != nil {
		t.Fatalf("%s: %v", req.AppendJSON(nil), err)
	}
	x, img := got.Input("x"), got.Input("img")
	if x == nil || string(x.Data) != string(req.Inputs[0].Data) || img == nil || img.Object != req.Inputs[1].Object || len(img.Data) != 0 ||
		len(got.Outputs) != 1 || got.Outputs[0] != "y" {
		t.Fatalf("read back %+v from %s", got, req.AppendJSON(nil))
	}
}
