package batching

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/inferq/inferq/tensor"
)

// For any requests of any shapes (scalars, empty tensors, strings
// included), Unpack gives back exactly what Pack was given.
func TestPackUnpackProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	types := []tensor.Datatype{tensor.FP32, tensor.Int64, tensor.Uint8, tensor.FP16, tensor.Bool, tensor.Bytes}
	for trial := range 500 {
		nreq := rng.IntN(6) + 1
		dts := make([]tensor.Datatype, rng.IntN(3)+1)
		for i := range dts {
			dts[i] = types[rng.IntN(len(types))]
		}
		reqs := make([][]tensor.Tensor, nreq)
		for r := range reqs {
			for i, dt := range dts {
				var shape []int64 // rank 0 to 3, a dimension may be 0
				for range rng.IntN(4) {
					shape = append(shape, int64(rng.IntN(4)))
				}
				reqs[r] = append(reqs[r], randomTensor(rng, "t"+string(rune('0'+i)), dt, shape))
			}
		}
		packed, shapes, err := Pack(reqs)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		for i := range packed {
			if err := packed[i].CheckData(); err != nil {
				t.Fatalf("trial %d: packed tensor inconsistent: %v", trial, err)
			}
		}
		back, err := Unpack(packed, shapes)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		for r := range reqs {
			for i := range reqs[r] {
				if !bytes.Equal(back[r][i].Data, reqs[r][i].Data) || !slices.Equal(back[r][i].Shape, reqs[r][i].Shape) || back[r][i].Name != reqs[r][i].Name {
					t.Fatalf("trial %d: request %d tensor %d changed by pack and unpack", trial, r, i)
				}
			}
		}
	}
}

func TestUnpackRefusesShapesThatDoNotFit(t *testing.T) {
	f := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{6}, Data: make([]byte, 24)}
	s := tensor.Tensor{Name: "s", Datatype: tensor.Bytes, Shape: []int64{2}, Data: tensor.AppendBytesElement(tensor.AppendBytesElement(nil, []byte("ab")), []byte("c"))}
	for _, c := range []struct {
		name   string
		packed []tensor.Tensor
		shapes [][][]int64
		want   string
	}{
		{"too few elements", []tensor.Tensor{f}, [][][]int64{{{2}}, {{3}}}, "left after the last request"},
		{"too many elements", []tensor.Tensor{f}, [][][]int64{{{2, 2}}, {{3}}}, "need 12 bytes, 8 are left"},
		{"negative dimension", []tensor.Tensor{f}, [][][]int64{{{-1}}}, "negative dimension"},
		{"overflowing shape", []tensor.Tensor{f}, [][][]int64{{{1 << 40, 1 << 40}}}, "more elements than"},
		{"wrong number of shapes", []tensor.Tensor{f}, [][][]int64{{{6}, {1}}}, "2 shapes for 1 tensors"},
		{"strings past the end", []tensor.Tensor{s}, [][][]int64{{{1}}, {{2}}}, "BYTES data ends"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Unpack(c.packed, c.shapes)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error saying %q", err, c.want)
			}
		})
	}
}

func TestPackRefusesRequestsThatDiffer(t *testing.T) {
	a := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{1}, Data: make([]byte, 4)}
	b := tensor.Tensor{Name: "x", Datatype: tensor.Int32, Shape: []int64{1}, Data: make([]byte, 4)}
	if _, _, err := Pack([][]tensor.Tensor{{a}, {b}}); err == nil || !strings.Contains(err.Error(), "INT32") {
		t.Fatalf("packing FP32 with INT32: %v", err)
	}
	if _, _, err := Pack([][]tensor.Tensor{{a}, {a, a}}); err == nil {
		t.Fatal("packed requests with different tensor counts")
	}
}

func TestLinesParameters(t *testing.T) {
	in := Lines{Shapes: [][][]int64{{{1, 4}, {}}, {{2, 3}, {1}}}, Errors: map[int]string{1: "bad"}}
	got, err := ParseLines(in.Parameters())
	if err != nil || got == nil || len(got.Shapes) != 2 || !slices.Equal(got.Shapes[1][0], []int64{2, 3}) || len(got.Shapes[0][1]) != 0 || got.Errors[1] != "bad" {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, c := range []struct {
		params string
		lines  bool
		err    string // what the error says; "" for none
	}{
		{``, false, ""}, {`{"temperature":1}`, false, ""}, {`{"inferq_lines":null}`, false, ""},
		{`{"inferq_lines":[]}`, false, "parameter inferq_lines lists no requests"}, {`{"inferq_lines":"x"}`, false, "parameter inferq_lines"},
		{`{"inferq_lines":[[[1]]]}`, true, ""},
		{`{"inferq_line_rows":[1,3]}`, true, ""}, {`{"inferq_line_rows":[]}`, false, "parameter inferq_line_rows lists no requests"},
		{`{"inferq_lines":[[[1]]],"inferq_line_rows":[1]}`, false, "parameters inferq_lines and inferq_line_rows exclude each other"},
	} {
		l, err := ParseLines([]byte(c.params))
		if (l != nil) != c.lines || (err != nil) != (c.err != "") || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: lines %+v, err %v, want an error saying %q", c.params, l, err, c.err)
		}
	}
}
