package batchfile

import (
	"bytes"
	"encoding/binary"
	"math"
	"reflect"
	"testing"

	"github.com/parquet-go/parquet-go"

	"github.com/inferq/inferq/tensor"
)

func f32s(v ...float32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, f := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return b
}

// Rows written from output lines read back with their values, shapes,
// custom_id and error; an output named like a fixed column is renamed.
func TestParquetWriter(t *testing.T) {
	var buf bytes.Buffer
	w := NewParquetWriter(&buf, []ParquetColumn{{Name: "probs", Datatype: tensor.FP32}, {Name: "text", Datatype: tensor.Bytes}, {Name: "error", Datatype: tensor.Int64}})
	ok := OutputLine{CustomID: []byte(`"a.png"`), Response: (&tensor.Response{Outputs: []tensor.Tensor{
		{Name: "probs", Datatype: tensor.FP32, Shape: []int64{1, 2}, Data: f32s(0.25, 0.75)},
		{Name: "text", Datatype: tensor.Bytes, Shape: []int64{2}, Data: tensor.AppendBytesElement(tensor.AppendBytesElement(nil, []byte("héllo")), []byte("world"))},
		{Name: "error", Datatype: tensor.Int64, Shape: []int64{1}, Data: binary.LittleEndian.AppendUint64(nil, 7)},
	}}).AppendJSON(nil)}
	bad := OutputLine{CustomID: []byte(`{"k":1}`), Error: "object gone"}
	for i, l := range []OutputLine{ok, bad} {
		if err := w.Write(int64(i+1), l.Append(nil)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r := parquet.NewReader(bytes.NewReader(buf.Bytes()))
	var rows []map[string]any
	for {
		row := map[string]any{}
		if err := r.Read(&row); err != nil {
			break
		}
		rows = append(rows, row)
	}
	if len(rows) != 2 {
		t.Fatalf("read %d rows, want 2", len(rows))
	}
	got := rows[0]
	if got["line"] != int64(1) || got["custom_id"] != "a.png" || got["error"] != nil {
		t.Errorf("row 1: %v", got)
	}
	if !reflect.DeepEqual(got["probs"], []any{float32(0.25), float32(0.75)}) || !reflect.DeepEqual(got["probs_shape"], []any{int64(1), int64(2)}) {
		t.Errorf("row 1 probs: %#v %#v", got["probs"], got["probs_shape"])
	}
	if !reflect.DeepEqual(got["text"], []any{"héllo", "world"}) {
		t.Errorf("row 1 text: %#v", got["text"])
	}
	if !reflect.DeepEqual(got["output_error"], []any{int64(7)}) {
		t.Errorf("row 1 output_error (an output named error): %#v", got["output_error"])
	}
	got = rows[1]
	if got["line"] != int64(2) || got["custom_id"] != `{"k":1}` || got["error"] != "object gone" || got["probs"] != nil {
		t.Errorf("row 2: %v", got)
	}
}
