package batchfile

import (
	"encoding/binary"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/tensor"
)

// TestPacker: which consecutive lines share a job.
func TestPacker(t *testing.T) {
	// line makes a line of rows rows, bytes bytes, key and outputs.
	line := func(rows, bytes int, key string, outs ...string) Line {
		return Line{Rows: rows, Bytes: bytes, Key: key, Outputs: outs}
	}
	tests := []struct {
		name    string
		packer  Packer
		lines   []Line
		want    [][]int // each job's lines, by their index in lines
		wantKey []string
	}{
		{"same key packs up to the rows", Packer{MaxRows: 4},
			[]Line{line(2, 1, "a"), line(2, 1, "a"), line(1, 1, "a")},
			[][]int{{0, 1}, {2}}, []string{"a", "a"}},
		{"a line of its own rows past the limit is alone", Packer{MaxRows: 4},
			[]Line{line(1, 1, "a"), line(9, 1, "a"), line(1, 1, "a")},
			[][]int{{0}, {1}, {2}}, []string{"a", "a", "a"}},
		{"bytes bound a job", Packer{MaxRows: 100, MaxBytes: 10},
			[]Line{line(1, 6, "a"), line(1, 4, "a"), line(1, 1, "a")},
			[][]int{{0, 1}, {2}}, []string{"a", "a"}},
		{"another key starts a job", Packer{MaxRows: 100},
			[]Line{line(1, 1, "a"), line(1, 1, "b"), line(1, 1, "b")},
			[][]int{{0}, {1, 2}}, []string{"a", "b"}},
		{"mixable keys share a job end to end", Packer{MaxRows: 100, Mixable: true},
			[]Line{line(1, 1, "a"), line(1, 1, "b"), line(1, 1, "a")},
			[][]int{{0, 1, 2}}, []string{EndToEnd}},
		{"a line that shares nothing is alone, mixable or not", Packer{MaxRows: 100, Mixable: true},
			[]Line{line(1, 1, "a"), line(1, 1, ""), line(1, 1, "a")},
			[][]int{{0}, {1}, {2}}, []string{"a", "", "a"}},
		{"other outputs start a job", Packer{MaxRows: 100},
			[]Line{line(1, 1, "a", "y"), line(1, 1, "a", "y"), line(1, 1, "a", "z")},
			[][]int{{0, 1}, {2}}, []string{"a", "a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.packer
			var got [][]int
			var keys []string
			take := func(c *Chunk) {
				if c == nil {
					return
				}
				var ids []int
				row := 0
				for _, l := range c.Lines {
					ids = append(ids, int(l.Line))
					if l.Row != row {
						t.Errorf("line %d starts at row %d of its job, want %d", l.Line, l.Row, row)
					}
					row += l.Rows
				}
				if row != c.Rows || len(c.Inputs) != len(c.Lines) {
					t.Errorf("a job of %d rows and %d inputs holds lines of %d rows, %d lines", c.Rows, len(c.Inputs), row, len(c.Lines))
				}
				got = append(got, ids)
				keys = append(keys, c.Key)
			}
			for i, l := range tc.lines {
				l.Index.Line = int64(i)
				take(p.Add(l))
			}
			take(p.Flush())
			if p.Flush() != nil {
				t.Error("a second Flush returned a chunk")
			}
			if !reflect.DeepEqual(got, tc.want) || !reflect.DeepEqual(keys, tc.wantKey) {
				t.Fatalf("jobs %v keys %q, want %v %q", got, keys, tc.want, tc.wantKey)
			}
		})
	}
}

func fp32(shape []int64, vals ...float32) tensor.Tensor {
	b := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: shape, Data: b}
}

// TestChunkRequestAndAssemble: a chunk's job request, then the output
// lines from its response, for each way lines are packed; the response
// the model would give is its input (an identity model).
func TestChunkRequestAndAssemble(t *testing.T) {
	idx := func(n int64, rows, row int) IndexLine {
		return IndexLine{Line: n, CustomID: []byte(`"c` + string(rune('0'+n)) + `"`), Rows: rows, Row: row}
	}
	tests := []struct {
		name      string
		chunk     Chunk
		wantLines *batching.Lines
		// failLine, when not negative, is a line that fails on its own.
		failLine int
		want     []string // substrings of each output line, in order
	}{
		{"one line", Chunk{Key: "k", Lines: []IndexLine{idx(1, 1, 0)}, Inputs: [][]tensor.Tensor{{fp32([]int64{1, 2}, 1, 2)}}, Rows: 1},
			nil, -1, []string{`"id":"j","outputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1,2]}]}`}},
		{"stacked", Chunk{Key: "k", Lines: []IndexLine{idx(1, 1, 0), idx(2, 2, 1)},
			Inputs: [][]tensor.Tensor{{fp32([]int64{1, 2}, 1, 2)}, {fp32([]int64{2, 2}, 3, 4, 5, 6)}}, Rows: 3},
			&batching.Lines{Rows: []int{1, 2}}, -1, []string{`"shape":[1,2],"data":[1,2]`, `"shape":[2,2],"data":[3,4,5,6]`}},
		{"end to end", Chunk{Key: EndToEnd, Lines: []IndexLine{idx(1, 1, 0), idx(2, 1, 1)},
			Inputs: [][]tensor.Tensor{{fp32([]int64{1, 1}, 1)}, {fp32([]int64{1, 3}, 2, 3, 4)}}, Rows: 2},
			&batching.Lines{Shapes: [][][]int64{{{1, 1}}, {{1, 3}}}}, -1, []string{`"shape":[1,1],"data":[1]`, `"shape":[1,3],"data":[2,3,4]`}},
		{"end to end, a line failed", Chunk{Key: EndToEnd, Lines: []IndexLine{idx(1, 1, 0), idx(2, 1, 1)},
			Inputs: [][]tensor.Tensor{{fp32([]int64{1, 1}, 1)}, {fp32([]int64{1, 3}, 2, 3, 4)}}, Rows: 2},
			&batching.Lines{Shapes: [][][]int64{{{1, 1}}, {{1, 3}}}}, 0, []string{`"custom_id":"c1","error":"line broke"`, `"shape":[1,3],"data":[2,3,4]`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, lines, err := tc.chunk.Request([]bool{true})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(lines, tc.wantLines) {
				t.Fatalf("lines %+v, want %+v", lines, tc.wantLines)
			}
			// A worker's response says how lines laid end to end are
			// cut, and which failed; stacked lines are cut by their rows.
			resp := &tensor.Response{ID: "j", Outputs: req.Inputs}
			if lines != nil && lines.Shapes != nil {
				if tc.failLine >= 0 {
					lines.Errors = map[int]string{tc.failLine: "line broke"}
				}
				resp.Parameters = lines.Parameters()
			}
			out := Assemble("b", "j", tc.chunk.Lines, resp, Select{})
			if len(out) != len(tc.want) {
				t.Fatalf("%d output lines for %d input lines", len(out), len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(string(out[i]), w) {
					t.Errorf("output line %d = %s, want it to hold %s", i, out[i], w)
				}
			}
			errs := Assemble("b", "j", tc.chunk.Lines, resp, Select{ErrorsOnly: true})
			if want := max(0, min(1, tc.failLine+1)); len(errs) != want {
				t.Errorf("errors only: %d lines, want %d", len(errs), want)
			}
		})
	}
}

// TestAssembleMismatch: a response that does not match its lines fails
// them all, saying why, rather than give a line another's output.
func TestAssembleMismatch(t *testing.T) {
	lines := []IndexLine{{Line: 1, Rows: 1}, {Line: 2, Rows: 1}}
	tests := []struct {
		name string
		resp *tensor.Response
		want string
	}{
		{"rows", &tensor.Response{Outputs: []tensor.Tensor{fp32([]int64{3, 1}, 1, 2, 3)}}, "rows"},
		{"shapes for other lines", &tensor.Response{Outputs: []tensor.Tensor{fp32([]int64{2}, 1, 2)},
			Parameters: (&batching.Lines{Shapes: [][][]int64{{{2}}}}).Parameters()}, "1 responses for 2 lines"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := Assemble("b", "j", lines, tc.resp, Select{})
			if len(out) != 2 {
				t.Fatalf("%d lines, want 2", len(out))
			}
			for _, l := range out {
				if !strings.Contains(string(l), `"error"`) || !strings.Contains(string(l), tc.want) {
					t.Errorf("%s: want an error saying %q", l, tc.want)
				}
			}
		})
	}
}
