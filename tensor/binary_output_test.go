package tensor

import (
	"strings"
	"testing"
)

// The binary_data_output and binary_data parameters say which outputs a
// client wants in the binary extension; anything but a boolean is an
// error. They survive the queue's encodings.
func TestBinaryOutputParameters(t *testing.T) {
	in := `"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]`
	tests := []struct {
		name    string
		body    string
		want    map[string]bool // output name → binary
		wantErr string
	}{
		{"none", `{` + in + `}`, map[string]bool{"y": false, "z": false}, ""},
		{"all", `{"parameters":{"binary_data_output":true},` + in + `}`, map[string]bool{"y": true, "z": true}, ""},
		{"per output", `{` + in + `,"outputs":[{"name":"y","parameters":{"binary_data":true}},{"name":"z"}]}`, map[string]bool{"y": true, "z": false}, ""},
		{"all but one", `{"parameters":{"binary_data_output":true},` + in + `,"outputs":[{"name":"y","parameters":{"binary_data":false}},{"name":"z"}]}`, map[string]bool{"y": false, "z": true}, ""},
		{"not a boolean", `{"parameters":{"binary_data_output":"yes"},` + in + `}`, nil, "binary_data_output"},
		{"output not a boolean", `{` + in + `,"outputs":[{"name":"y","parameters":{"binary_data":1}}]}`, nil, `output "y"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := DecodeRequest([]byte(tt.body), Limits{})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			data, hl, err := r.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			queued, err := DecodeBinaryRequest(data, hl, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			again, err := DecodeRequest(r.AppendJSON(nil), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range tt.want {
				for where, req := range map[string]*Request{"decoded": r, "queued": queued, "re-encoded as JSON": again} {
					if where == "re-encoded as JSON" && tt.name != "per output" && tt.name != "none" {
						continue // AppendJSON writes inputs and outputs, not request parameters
					}
					if got := req.WantsBinary(name); got != want {
						t.Errorf("%s: output %s binary %v, want %v", where, name, got, want)
					}
				}
			}
		})
	}
}

// A binary response that lies about its lengths is an error, not a panic
// or a short tensor.
func TestDecodeBinaryResponseRefusesLies(t *testing.T) {
	resp := &Response{ModelName: "m", ModelVersion: "1", ID: "j", Outputs: []Tensor{{Name: "y", Datatype: FP32, Shape: []int64{2}, Data: make([]byte, 8)}}}
	data, hl := resp.AppendBinary(nil, func(string) bool { return true })
	if _, err := DecodeBinaryResponse(data, hl); err != nil {
		t.Fatalf("a true response: %v", err)
	}
	tests := []struct {
		name string
		data []byte
		hl   int
	}{
		{"header longer than the body", data, len(data) + 1},
		{"negative header length", data, -1},
		{"truncated data", data[:len(data)-3], hl},
		{"data past the last output", append(append([]byte{}, data...), 0, 0, 0, 0), hl},
		{"header cut short", data, hl - 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeBinaryResponse(tt.data, tt.hl); err == nil {
				t.Error("decoded")
			}
		})
	}
}
