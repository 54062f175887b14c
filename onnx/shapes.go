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

// shapeless returns the names of the graph inputs and outputs of the model
// at path whose tensor type carries no shape at all: their rank is unknown.
// ONNX Runtime reports such a value with no dimensions, as it does a
// scalar, so the model file itself is read to tell the two apart. The
// file is streamed, its initializers skipped over, not held in memory.
func shapeless(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := &countingReader{r: bufio.NewReaderSize(f, 64<<10)}
	out := map[string]bool{}
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
			if name, ok := tensorWithoutShape(b); ok {
				out[name] = true
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

// tensorWithoutShape reads a ValueInfoProto and reports its name when its
// type is a tensor type with no shape field.
func tensorWithoutShape(b []byte) (string, bool) {
	var name string
	var tensorType []byte
	isTensor := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return "", false
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return "", false
		}
		b = b[n:]
		switch num {
		case 1: // name
			name = string(v)
		case 2: // TypeProto: tensor_type is field 1
			for len(v) > 0 {
				num, typ, n := protowire.ConsumeTag(v)
				if n < 0 {
					return "", false
				}
				v = v[n:]
				m := protowire.ConsumeFieldValue(num, typ, v)
				if m < 0 {
					return "", false
				}
				if num == 1 && typ == protowire.BytesType {
					tensorType, _ = protowire.ConsumeBytes(v)
					isTensor = true
				}
				v = v[m:]
			}
		}
	}
	if !isTensor {
		return "", false
	}
	// TypeProto.Tensor: shape is field 2; present, even empty (a scalar),
	// the rank is known.
	for len(tensorType) > 0 {
		num, typ, n := protowire.ConsumeTag(tensorType)
		if n < 0 {
			return "", false
		}
		if num == 2 {
			return "", false
		}
		tensorType = tensorType[n:]
		m := protowire.ConsumeFieldValue(num, typ, tensorType)
		if m < 0 {
			return "", false
		}
		tensorType = tensorType[m:]
	}
	return name, true
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r *bufio.Reader
	n int64
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

func (c *countingReader) skip(n int64) error {
	for n > 0 {
		k := int(min(n, 1<<30))
		d, err := c.r.Discard(k)
		c.n += int64(d)
		if err != nil {
			return err
		}
		n -= int64(d)
	}
	return nil
}
