package batching

import (
	"slices"
	"strings"
	"testing"

	"github.com/inferq/inferq/tensor"
)

func int32s(shape []int64, v ...float64) tensor.Tensor {
	var data []byte
	for _, x := range v {
		data = tensor.AppendNumber(data, tensor.Int32, x)
	}
	return tensor.Tensor{Name: "x", Datatype: tensor.Int32, Shape: shape, Data: data}
}

// TestRowLengths: a row's length is one past the last position along the
// axis where any entry (over the axes between and after) is not the
// padding value.
func TestRowLengths(t *testing.T) {
	for _, tc := range []struct {
		name  string
		x     tensor.Tensor
		axis  int
		value float64
		want  []int64
		err   string
	}{
		{name: "rows of a matrix", x: int32s([]int64{3, 4}, 1, 2, 0, 0, 5, 0, 0, 0, 7, 0, 0, 9), axis: 1, want: []int64{2, 1, 4}},
		{name: "a zero inside a row counts", x: int32s([]int64{1, 4}, 0, 3, 0, 0), axis: 1, want: []int64{2}},
		{name: "all padding", x: int32s([]int64{2, 3}, 0, 0, 0, 0, 0, 1), axis: 1, want: []int64{0, 3}},
		{name: "another padding value", x: int32s([]int64{2, 3}, 1, -1, -1, -1, -1, -1), axis: 1, value: -1, want: []int64{1, 0}},
		// [rows, channels, width]: the longest over the channels.
		{name: "over the axes before", x: int32s([]int64{2, 2, 3}, 1, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0, 0), axis: 2, want: []int64{2, 1}},
		// [rows, width, channels]: a position is padding when all its channels are.
		{name: "over the axes after", x: int32s([]int64{1, 3, 2}, 1, 1, 0, 4, 0, 0), axis: 1, want: []int64{2}},
		{name: "the batch axis", x: int32s([]int64{1, 2}, 1, 2), axis: 0, err: "not an axis after the first"},
		{name: "past the shape", x: int32s([]int64{1, 2}, 1, 2), axis: 2, err: "not an axis after the first"},
		{name: "data short of the shape", x: int32s([]int64{2, 2}, 1, 2, 3), axis: 1, err: "12 bytes of data"},
		{name: "BYTES", x: tensor.Tensor{Name: "x", Datatype: tensor.Bytes, Shape: []int64{1, 1}, Data: tensor.AppendBytesElement(nil, []byte("a"))}, axis: 1, err: "BYTES"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RowLengths(tc.x, tc.axis, tc.value)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("RowLengths = %v, %v; want an error saying %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("RowLengths = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// Trimming and padding a tensor of fixed-size elements (copied a block
// at a time) along an axis back and forth gives it back; padding takes
// the value asked; data short of the shape is refused.
func TestTrimPadFixedSize(t *testing.T) {
	x := int32s([]int64{2, 3, 2}, 1, 2, 3, 4, 0, 0, 5, 6, 0, 0, 0, 0)
	cut, err := Trim(x, 1, 2)
	if err != nil || !slices.Equal(cut.Shape, []int64{2, 2, 2}) || !slices.Equal(cut.Data, int32s(nil, 1, 2, 3, 4, 5, 6, 0, 0).Data) {
		t.Fatalf("Trim = %v %v, %v", cut.Shape, cut.Data, err)
	}
	back, err := Pad(cut, 1, 3, 0)
	if err != nil || !slices.Equal(back.Shape, x.Shape) || !slices.Equal(back.Data, x.Data) {
		t.Fatalf("Pad back = %v %v, %v; want %v %v", back.Shape, back.Data, err, x.Shape, x.Data)
	}
	nines, err := Pad(cut, 2, 3, 9)
	if err != nil || !slices.Equal(nines.Data, int32s(nil, 1, 2, 9, 3, 4, 9, 5, 6, 9, 0, 0, 9).Data) {
		t.Fatalf("Pad with 9 along the last axis = %v, %v", nines.Data, err)
	}
	if _, err := Trim(int32s([]int64{2, 3}, 1, 2), 1, 1); err == nil {
		t.Fatal("Trim of data short of its shape: no error")
	}
}
