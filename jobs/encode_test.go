package jobs

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/tensor"
)

// TestJobLinesTravelInAHeader: how a batch file packed a job's lines
// travels beside the request, in a header of its own, not in the
// request's parameters; a job queued by an earlier release, with the
// packing in its parameters, still reads; a header that lies is refused.
func TestJobLinesTravelInAHeader(t *testing.T) {
	in := func() *tensor.Request {
		return &tensor.Request{Inputs: []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{3}, Data: make([]byte, 12)}}}
	}
	tests := []struct {
		name    string
		lines   *batching.Lines
		params  string // the request's parameters, as an earlier release set them
		header  string // set over what EncodeJob wrote, when not empty
		want    *batching.Lines
		wantErr string
	}{
		{name: "one request", want: nil},
		{name: "end to end", lines: &batching.Lines{Shapes: [][][]int64{{{1}}, {{2}}}}, want: &batching.Lines{Shapes: [][][]int64{{{1}}, {{2}}}}},
		{name: "stacked", lines: &batching.Lines{Rows: []int{1, 2}}, want: &batching.Lines{Rows: []int{1, 2}}},
		{name: "queued by an earlier release", params: `{"inferq_line_rows":[2,1]}`, want: &batching.Lines{Rows: []int{2, 1}}},
		{name: "header wins over parameters", lines: &batching.Lines{Rows: []int{1, 2}}, params: `{"inferq_line_rows":[3]}`, want: &batching.Lines{Rows: []int{1, 2}}},
		{name: "no lines", header: `{"inferq_line_rows":[]}`, wantErr: "lists no requests"},
		{name: "not JSON", header: `{"inferq_lines":`, wantErr: HeaderLines},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := in()
			if tc.params != "" {
				req.Parameters = json.RawMessage(tc.params)
			}
			msg, err := EncodeJob(&Job{ID: "j", Model: "m", Request: req, Lines: tc.lines})
			if err != nil {
				t.Fatal(err)
			}
			if tc.lines != nil && strings.Contains(string(msg.Data), "inferq_line") && tc.params == "" {
				t.Fatalf("the packing travels in the request: %s", msg.Data)
			}
			if tc.header != "" {
				msg.Header.Set(HeaderLines, tc.header)
			}
			job, err := DecodeJob(msg.Header, msg.Data, tensor.Limits{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("DecodeJob = %v, want an error saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(job.Lines, tc.want) {
				t.Fatalf("lines %+v, want %+v", job.Lines, tc.want)
			}
		})
	}
}

// A request the client sent in the binary extension is published as sent,
// not encoded again, and decodes to what encoding it again would give.
func TestJobBinaryPublishedAsSent(t *testing.T) {
	x := make([]byte, 12)
	for i := range x {
		x[i] = byte(i)
	}
	header := `{"id":"c-1","parameters":{"binary_data_output":true},"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}}]}`
	body := append([]byte(header), x...)
	req, err := tensor.DecodeBinaryRequest(body, len(header), tensor.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	sent, err := EncodeJob(&Job{ID: "j", Model: "m", Request: req, Binary: body, BinaryHeaderLen: len(header)})
	if err != nil {
		t.Fatal(err)
	}
	if &sent.Data[0] != &body[0] || sent.Header.Get(HeaderHeaderLength) != fmt.Sprint(len(header)) {
		t.Fatalf("published %d bytes with header length %s, not the body as sent", len(sent.Data), sent.Header.Get(HeaderHeaderLength))
	}
	again, err := EncodeJob(&Job{ID: "j", Model: "m", Request: req})
	if err != nil {
		t.Fatal(err)
	}
	a, err := DecodeJob(sent.Header, sent.Data, tensor.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := DecodeJob(again.Header, again.Data, tensor.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a.Request, b.Request) {
		t.Fatalf("as sent %+v, encoded again %+v", a.Request, b.Request)
	}
}
