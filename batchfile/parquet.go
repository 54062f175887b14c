package batchfile

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"

	"github.com/parquet-go/parquet-go"
	"github.com/x448/float16"

	"github.com/inferq/inferq/tensor"
)

// ParquetColumn is an output of the model, as a column of a batch's
// Parquet output.
type ParquetColumn struct {
	Name     string
	Datatype tensor.Datatype
}

// ParquetWriter writes a batch's output as one Parquet file: a row per
// line, with columns line (INT64), custom_id (STRING: a JSON string's
// value, any other JSON as its text), error (STRING, null for a line that
// succeeded), and for each output of the model, its values as a LIST of
// their type and its shape as a LIST of INT64 (null where the line
// failed or did not ask that output). Rows are flushed in row groups, so
// that memory holds one group, whatever the batch's size.
type ParquetWriter struct {
	w       *parquet.GenericWriter[any]
	columns []ParquetColumn
	names   []string // column name of each output: its name, or output_<name> where it is taken
	row     []any
}

// parquetRowGroup is the rows of a row group: a few MB of small rows.
const parquetRowGroup = 10_000

// NewParquetWriter starts a Parquet file of the output columns on out.
func NewParquetWriter(out io.Writer, columns []ParquetColumn) *ParquetWriter {
	g := parquet.Group{
		"line":      parquet.Int(64),
		"custom_id": parquet.Optional(parquet.String()),
		"error":     parquet.Optional(parquet.String()),
	}
	names := make([]string, len(columns))
	for i, c := range columns {
		name := c.Name
		for g[name] != nil || g[name+"_shape"] != nil {
			name = "output_" + name
		}
		names[i] = name
		g[name] = parquet.Optional(parquet.List(parquetLeaf(c.Datatype)))
		g[name+"_shape"] = parquet.Optional(parquet.List(parquet.Int(64)))
	}
	schema := parquet.NewSchema("inferq_batch_output", g)
	w := parquet.NewGenericWriter[any](out, schema, parquet.Compression(&parquet.Snappy), parquet.MaxRowsPerRowGroup(parquetRowGroup))
	return &ParquetWriter{w: w, columns: columns, names: names}
}

// parquetLeaf is the Parquet type of an output's values.
func parquetLeaf(dt tensor.Datatype) parquet.Node {
	switch dt {
	case tensor.Bool:
		return parquet.Leaf(parquet.BooleanType)
	case tensor.Int8, tensor.Int16, tensor.Int32, tensor.Uint8, tensor.Uint16:
		return parquet.Int(32)
	case tensor.Int64, tensor.Uint32:
		return parquet.Int(64)
	case tensor.Uint64:
		return parquet.Uint(64)
	case tensor.FP64:
		return parquet.Leaf(parquet.DoubleType)
	case tensor.Bytes:
		return parquet.String()
	default: // FP16 and FP32
		return parquet.Leaf(parquet.FloatType)
	}
}

// Write adds the row of one output line (as Assemble or Failed make it).
func (p *ParquetWriter) Write(line int64, outputLine []byte) error {
	var ol struct {
		CustomID json.RawMessage `json:"custom_id"`
		Response json.RawMessage `json:"response"`
		Error    *string         `json:"error"`
	}
	if err := json.Unmarshal(outputLine, &ol); err != nil {
		return fmt.Errorf("output line %d: %w", line, err)
	}
	row := map[string]any{"line": line, "custom_id": customIDText(ol.CustomID), "error": ol.Error}
	for i := range p.columns {
		row[p.names[i]], row[p.names[i]+"_shape"] = nil, nil
	}
	if len(ol.Response) > 0 && ol.Error == nil {
		resp, err := tensor.DecodeResponse(ol.Response)
		if err != nil {
			return fmt.Errorf("output line %d: %w", line, err)
		}
		for _, o := range resp.Outputs {
			for i, c := range p.columns {
				if c.Name != o.Name {
					continue
				}
				v, err := values(&o, c.Datatype)
				if err != nil {
					return fmt.Errorf("output line %d: output %s: %w", line, o.Name, err)
				}
				row[p.names[i]], row[p.names[i]+"_shape"] = v, o.Shape
			}
		}
	}
	p.row = append(p.row[:0], row)
	_, err := p.w.Write(p.row)
	return err
}

// Close writes the file's footer.
func (p *ParquetWriter) Close() error { return p.w.Close() }

// customIDText is a custom_id as a column value: a JSON string's value,
// other JSON as its text, nil for none.
func customIDText(raw json.RawMessage) any {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// values decodes an output's data into a slice of the Go type its column
// holds (dt: the type the model declared; the data is checked to be it).
func values(t *tensor.Tensor, dt tensor.Datatype) (any, error) {
	if t.Datatype != dt {
		return nil, fmt.Errorf("is %s, the model declares %s", t.Datatype, dt)
	}
	d, le := t.Data, binary.LittleEndian
	if dt == tensor.Bytes {
		elems, err := t.Strings()
		if err != nil {
			return nil, err
		}
		out := make([]string, len(elems))
		for i, e := range elems {
			out[i] = string(e)
		}
		return out, nil
	}
	n := len(d) / dt.Size()
	switch dt {
	case tensor.Bool:
		return mapN(n, func(i int) bool { return d[i] != 0 }), nil
	case tensor.Int8:
		return mapN(n, func(i int) int32 { return int32(int8(d[i])) }), nil
	case tensor.Uint8:
		return mapN(n, func(i int) int32 { return int32(d[i]) }), nil
	case tensor.Int16:
		return mapN(n, func(i int) int32 { return int32(int16(le.Uint16(d[2*i:]))) }), nil
	case tensor.Uint16:
		return mapN(n, func(i int) int32 { return int32(le.Uint16(d[2*i:])) }), nil
	case tensor.Int32:
		return mapN(n, func(i int) int32 { return int32(le.Uint32(d[4*i:])) }), nil
	case tensor.Uint32:
		return mapN(n, func(i int) int64 { return int64(le.Uint32(d[4*i:])) }), nil
	case tensor.Int64:
		return mapN(n, func(i int) int64 { return int64(le.Uint64(d[8*i:])) }), nil
	case tensor.Uint64:
		return mapN(n, func(i int) uint64 { return le.Uint64(d[8*i:]) }), nil
	case tensor.FP16:
		return mapN(n, func(i int) float32 { return float16.Frombits(le.Uint16(d[2*i:])).Float32() }), nil
	case tensor.FP32:
		return mapN(n, func(i int) float32 { return math.Float32frombits(le.Uint32(d[4*i:])) }), nil
	case tensor.FP64:
		return mapN(n, func(i int) float64 { return math.Float64frombits(le.Uint64(d[8*i:])) }), nil
	}
	return nil, fmt.Errorf("datatype %s has no Parquet column", dt)
}

func mapN[T any](n int, f func(int) T) []T {
	out := make([]T, n)
	for i := range out {
		out[i] = f(i)
	}
	return out
}
