package main

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// TestBinaryOutputs: outputs asked in the binary tensor extension
// (binary_data_output for all, binary_data per output) come back as raw
// bytes after a JSON header whose length Inference-Header-Content-Length
// gives, for every datatype, on the synchronous infer call and on a job's
// result, and decode to exactly what the same request answered in JSON
// gets. A client that accepts only JSON gets the binary result as JSON.
func TestBinaryOutputs(t *testing.T) {
	repo, files := fixtures(t, map[string]string{"identities": "max_queue_delay: 5ms\n"})
	s := startServe(t, repo)
	d := openDirect(t, files["identities"])
	rng := rand.New(rand.NewPCG(9, 9))
	req := &tensor.Request{Inputs: randomInputs(rng, d.sig.Inputs, 3)}
	body := req.AppendJSON(nil)

	// The reference: JSON in, JSON out.
	want := postInfer(t, s, body, nil)
	if len(want.Outputs) != len(d.sig.Outputs) {
		t.Fatalf("JSON answer has %d outputs, want %d", len(want.Outputs), len(d.sig.Outputs))
	}
	all := bytes.Replace(body, []byte(`{"inputs":`), []byte(`{"parameters":{"binary_data_output":true},"inputs":`), 1)
	some := req.AppendJSON(nil)
	some = append(some[:len(some)-1], `,"outputs":[{"name":"out_FP32","parameters":{"binary_data":true}},{"name":"out_BYTES","parameters":{"binary_data":true}},{"name":"out_INT64"}]}`...)

	tests := []struct {
		name   string
		body   []byte
		binary []string // outputs that must come as binary
		json   []string // outputs that must come as JSON
	}{
		{"binary_data_output", all, outputNames(want), nil},
		{"binary_data per output", some, []string{"out_FP32", "out_BYTES"}, []string{"out_INT64"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			check := func(t *testing.T, where string, got *tensor.Response, header []byte) {
				t.Helper()
				binary, asJSON := tt.binary, tt.json
				if header == nil { // converted to JSON: nothing to read in a header
					binary, asJSON = nil, nil
				}
				for _, name := range binary {
					if !bytes.Contains(header, []byte(`"name":"`+name+`","datatype"`)) || !bytes.Contains(header, []byte(`"binary_data_size"`)) {
						t.Errorf("%s: header %s does not give %s as binary", where, header, name)
					}
				}
				for _, name := range asJSON {
					i := bytes.Index(header, []byte(`"name":"`+name+`"`))
					if i < 0 || !bytes.HasPrefix(header[bytes.Index(header[i:], []byte(`]`))+i+1:], []byte(`,"data":`)) {
						t.Errorf("%s: header %s does not give %s as JSON data", where, header, name)
					}
				}
				for _, w := range want.Outputs {
					if !slices.Contains(tt.binary, w.Name) && !slices.Contains(tt.json, w.Name) && len(tt.json) > 0 {
						continue // not asked for
					}
					g := findOutput(got, w.Name)
					if g == nil || g.Datatype != w.Datatype || !slices.Equal(g.Shape, w.Shape) || !bytes.Equal(g.Data, w.Data) {
						t.Errorf("%s: output %s is %+v, want %+v", where, w.Name, g, w)
					}
				}
			}
			var header []byte
			got := postInfer(t, s, tt.body, &header)
			check(t, "infer", got, header)

			id := s.submit(t, "/v1/models/identities/jobs", tt.body)
			if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded {
				t.Fatalf("job %+v", rec)
			}
			got, header = getBinaryResult(t, s, id, "")
			check(t, "job result", got, header)

			// Asked for as JSON only: converted.
			r := do(t, "GET", s.url+"/v1/jobs/"+id+"/result", nil, "Accept", "application/json")
			if r.code != 200 || r.header.Get(jobs.HeaderHeaderLength) != "" {
				t.Fatalf("GET result as JSON: %d, %s %q", r.code, jobs.HeaderHeaderLength, r.header.Get(jobs.HeaderHeaderLength))
			}
			asJSON, err := tensor.DecodeResponse(r.body)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(r.body, []byte("binary_data_size")) {
				t.Errorf("GET result as JSON: %.200s", r.body)
			}
			check(t, "job result as JSON", asJSON, nil)
		})
	}
}

// postInfer calls the synchronous infer with body and decodes the answer,
// binary or JSON as its headers say; header, when given, receives its
// JSON part.
func postInfer(t *testing.T, s *server, body []byte, header *[]byte) *tensor.Response {
	t.Helper()
	res, err := http.Post(s.url+"/v2/models/identities/infer", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	return decodeAnswer(t, res, header)
}

func getBinaryResult(t *testing.T, s *server, id, accept string) (*tensor.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", s.url+"/v1/jobs/"+id+"/result", nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var header []byte
	return decodeAnswer(t, res, &header), header
}

func decodeAnswer(t *testing.T, res *http.Response, header *[]byte) *tensor.Response {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("%s: %d %s", res.Request.URL.Path, res.StatusCode, b)
	}
	hl := res.Header.Get(jobs.HeaderHeaderLength)
	if hl == "" {
		if header != nil {
			*header = b
		}
		resp, err := tensor.DecodeResponse(b)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	n, err := strconv.Atoi(hl)
	if err != nil || res.Header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("binary answer with %s %q, Content-Type %q", jobs.HeaderHeaderLength, hl, res.Header.Get("Content-Type"))
	}
	if header != nil {
		*header = b[:n]
	}
	resp, err := tensor.DecodeBinaryResponse(b, n)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func outputNames(r *tensor.Response) []string {
	var names []string
	for _, o := range r.Outputs {
		names = append(names, o.Name)
	}
	return names
}

func findOutput(r *tensor.Response, name string) *tensor.Tensor {
	for i := range r.Outputs {
		if r.Outputs[i].Name == name {
			return &r.Outputs[i]
		}
	}
	return nil
}

// TestMalformedBinaryRequests: a binary request whose lengths lie, or that
// is cut short, is a 400 naming the problem, on the job and infer paths,
// and nothing is queued for it.
func TestMalformedBinaryRequests(t *testing.T) {
	repo, _ := fixtures(t, map[string]string{"identities": ""})
	s := startServe(t, repo)
	header := `{"inputs":[{"name":"in_FP32","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}`
	data := make([]byte, 8)
	tests := []struct {
		name, headerLen string
		body            []byte
		want            string
	}{
		{"header length not a number", "ten", append([]byte(header), data...), "not a number"},
		{"header length past the body", strconv.Itoa(len(header) + 100), append([]byte(header), data...), ""},
		{"header length negative", "-5", append([]byte(header), data...), ""},
		{"header cut short", strconv.Itoa(len(header) - 5), append([]byte(header), data...), ""},
		{"data truncated", strconv.Itoa(len(header)), append([]byte(header), data[:5]...), "binary_data_size"},
		{"bytes after the last input", strconv.Itoa(len(header)), append(append([]byte(header), data...), 1, 2, 3), "follow the last binary input"},
		{"size not a count", strconv.Itoa(len(header) + 2), append(bytes.Replace([]byte(header), []byte(":8}"), []byte(`:"x"}`), 1), data...), "binary_data_size"},
		{"size past the shape", strconv.Itoa(len(header) + 1), append(bytes.Replace([]byte(header), []byte(":8}"), []byte(":12}"), 1), make([]byte, 12)...), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, path := range []string{"/v1/models/identities/jobs", "/v2/models/identities/infer"} {
				r := do(t, "POST", s.url+path, tt.body, "Content-Type", "application/octet-stream", jobs.HeaderHeaderLength, tt.headerLen)
				if r.code != http.StatusBadRequest || !bytes.Contains(r.body, []byte(tt.want)) {
					t.Errorf("%s: %d %s; want 400 naming %q", path, r.code, r.body, tt.want)
				}
			}
		})
	}
	m := s.metrics(t)
	if n := m["inferq_jobs_accepted_total,model=identities"]; n != 0 {
		t.Errorf("%v jobs queued", n)
	}
	if n := m["inferq_jobs_rejected_total,model=identities,reason=invalid"]; n != float64(2*len(tests)) {
		t.Errorf("%v requests counted invalid, want %d", n, 2*len(tests))
	}
}
