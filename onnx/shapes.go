package onnx

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/encoding/protowire"
)

// declared is what a model file says of one graph input or output's
// shape beyond what ONNX Runtime reports.
type declared struct {
	// ranked is false when the tensor type has no shape at all: its rank
	// is unknown.
	ranked bool
	axes   []Axis
}

// declaredShapes reads the declared shapes of the graph inputs and outputs
// of the model at path, by name: whether each has a shape at all, and
// its axes' symbolic names. ONNX Runtime reports a shapeless value with
// no dimensions, as it does a scalar, and keeps no names, so the model
// file itself is read: its graph's inputs and outputs, with the
// initializers and nodes seeked over, neither read nor held in memory.
func declaredShapes(path string) (map[string]declared, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	r := &countingReader{f: f, size: st.Size(), r: bufio.NewReaderSize(f, 64<<10)}
	out := map[string]declared{}
	// ModelProto: the graph is field 7.
	err = eachField(r, -1, func(num protowire.Number, size int64) error {
		if num != 7 {
			return r.skip(size)
		}
		// GraphProto: inputs are field 11, outputs field 12.
		return eachField(r, size, func(num protowire.Number, size int64) error {
			if num != 11 && num != 12 {
				return r.skip(size)
			}
			if size > 1<<20 {
				return fmt.Errorf("a value description of %d bytes", size)
			}
			b := make([]byte, size)
			if _, err := io.ReadFull(r, b); err != nil {
				return err
			}
			if name, d, ok := tensorShape(b); ok {
				out[name] = d
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read the shapes of model %s: %w", path, err)
	}
	return out, nil
}

// eachField calls fn with each length-delimited field of the message that
// takes the next size bytes of r (to the end of r when size is -1); fn
// must read or skip the field's size bytes. Fields of other wire types
// are skipped.
func eachField(r *countingReader, size int64, fn func(num protowire.Number, size int64) error) error {
	end := r.n + size
	for size < 0 || r.n < end {
		tag, err := binary.ReadUvarint(r)
		if err == io.EOF && size < 0 {
			return nil
		}
		if err != nil {
			return err
		}
		num, typ := protowire.DecodeTag(tag)
		switch typ {
		case protowire.VarintType:
			_, err = binary.ReadUvarint(r)
		case protowire.Fixed32Type:
			err = r.skip(4)
		case protowire.Fixed64Type:
			err = r.skip(8)
		case protowire.BytesType:
			var n uint64
			if n, err = binary.ReadUvarint(r); err == nil {
				if n > 1<<40 {
					return fmt.Errorf("a field of %d bytes", n)
				}
				err = fn(num, int64(n))
			}
		default:
			err = fmt.Errorf("unexpected wire type %d", typ)
		}
		if err != nil {
			return err
		}
	}
	if r.n != end {
		return errors.New("a field runs past the end of its message")
	}
	return nil
}

// tensorShape reads a ValueInfoProto of a tensor type: its name and
// declared shape. ok is false for another type, or a message it cannot
// read (ONNX Runtime's reading then stands).
func tensorShape(b []byte) (name string, d declared, ok bool) {
	nameB, _, ok1 := bytesField(b, 1)
	typ, _, ok2 := bytesField(b, 2)
	tensorType, isTensor, ok3 := bytesField(typ, 1) // TypeProto.tensor_type
	// TypeProto.Tensor: shape is field 2; present, even empty (a scalar),
	// the rank is known.
	shape, hasShape, ok4 := bytesField(tensorType, 2)
	if !ok1 || !ok2 || !ok3 || !ok4 || !isTensor {
		return "", declared{}, false
	}
	d.ranked = hasShape
	// TensorShapeProto: dim is field 1, repeated; Dimension: dim_param
	// is field 2, denotation field 3.
	ok = eachBytes(shape, 1, func(dim []byte) bool {
		param, _, ok1 := bytesField(dim, 2)
		denotation, _, ok2 := bytesField(dim, 3)
		d.axes = append(d.axes, Axis{Param: string(param), Denotation: string(denotation)})
		return ok1 && ok2
	})
	return string(nameB), d, ok
}

// eachBytes calls fn with each length-delimited field num of message b,
// in order, and reports false when b cannot be read or fn returns false.
func eachBytes(b []byte, num protowire.Number, fn func([]byte) bool) bool {
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return false
		}
		b = b[l:]
		m := protowire.ConsumeFieldValue(n, typ, b)
		if m < 0 {
			return false
		}
		if n == num && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			if !fn(v) {
				return false
			}
		}
		b = b[m:]
	}
	return true
}

// bytesField returns the length-delimited field num of message b (the last,
// if repeated), whether it is there, and false for ok when b cannot be
// read.
func bytesField(b []byte, num protowire.Number) (v []byte, found, ok bool) {
	ok = eachBytes(b, num, func(f []byte) bool {
		v, found = f, true
		return true
	})
	if !ok {
		return nil, false, false
	}
	return v, found, true
}

// countingReader reads a file through a buffer, counting the bytes read
// or skipped.
type countingReader struct {
	f    *os.File // under r
	size int64    // of the file
	r    *bufio.Reader
	n    int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// skip passes over the next n bytes: past what is buffered, by seeking,
// so that an initializer of a gigabyte is not read from disk a second
// time (ONNX Runtime has just read the whole file).
func (c *countingReader) skip(n int64) error {
	if n <= int64(c.r.Buffered()) {
		d, err := c.r.Discard(int(n))
		c.n += int64(d)
		return err
	}
	if c.n+n > c.size {
		return io.ErrUnexpectedEOF
	}
	if _, err := c.f.Seek(c.n+n, io.SeekStart); err != nil {
		return err
	}
	c.r.Reset(c.f)
	c.n += n
	return nil
}
