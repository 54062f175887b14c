package tensor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
)

// readWireRequest parses a V2 request object. It walks the JSON with
// jsontext's tokenizer instead of encoding/json's reflection, and keeps
// each input's data as the bytes of the body, unparsed, for decodeData:
// encoding/json scanned every data array three times (validation, the
// RawMessage copy, then decodeData), which was most of the cost of a
// request with a few thousand elements. Each input's data aliases body;
// the other raw values are copies, as callers keep them.
//
// It differs from encoding/json in being strict where that read loosely:
// member names match exactly (and "Inputs" is refused, not ignored), a
// name may not appear twice in one object, and strings must be valid
// UTF-8.
func readWireRequest(body []byte) (wireRequest, error) {
	var w wireRequest
	err := readWire(body, func(r *wireReader, name string) error {
		var err error
		switch name {
		case "id":
			w.ID, err = r.str("id")
		case "parameters":
			w.Parameters, err = r.rawObject("parameters")
			w.Parameters = bytes.Clone(w.Parameters)
		case "custom_id":
			w.CustomID, err = r.raw()
			w.CustomID = bytes.Clone(w.CustomID)
		case "inputs":
			w.Inputs, err = list(r, "inputs", r.tensor)
		case "outputs":
			w.Outputs, err = list(r, "outputs", r.output)
		default:
			err = r.skip(name, "id", "parameters", "custom_id", "inputs", "outputs")
		}
		return err
	})
	if err != nil {
		return wireRequest{}, err
	}
	return w, nil
}

// readWireResponse parses a V2 response object as readWireRequest does a
// request: each output's data aliases body.
func readWireResponse(body []byte) (wireResponse, error) {
	var w wireResponse
	err := readWire(body, func(r *wireReader, name string) error {
		var err error
		switch name {
		case "model_name":
			w.ModelName, err = r.str("model_name")
		case "model_version":
			w.ModelVersion, err = r.str("model_version")
		case "id":
			w.ID, err = r.str("id")
		case "parameters":
			w.Parameters, err = r.rawObject("parameters")
			w.Parameters = bytes.Clone(w.Parameters)
		case "outputs":
			w.Outputs, err = list(r, "outputs", r.tensor)
		default:
			err = r.skip(name, "model_name", "model_version", "id", "parameters", "outputs")
		}
		return err
	})
	if err != nil {
		return wireResponse{}, err
	}
	return w, nil
}

// readWire walks body, one JSON object and nothing after it, calling
// member for each of its members with a reader positioned at the value.
func readWire(body []byte, member func(r *wireReader, name string) error) error {
	r := wireReaders.Get().(*wireReader)
	defer r.release()
	r.body = body
	// A bytes.Buffer is read in place, not copied.
	r.dec.Reset(bytes.NewBuffer(body))
	if err := r.object(func(name string) error { return member(r, name) }); err != nil {
		return err
	}
	if _, err := r.dec.ReadToken(); err != io.EOF {
		if err == nil {
			return errors.New("more than one JSON value")
		}
		return err
	}
	return nil
}

// wireReader is a reusable tokenizer over one body.
type wireReader struct {
	body []byte
	dec  *jsontext.Decoder
}

var wireReaders = sync.Pool{New: func() any {
	return &wireReader{dec: jsontext.NewDecoder(bytes.NewBuffer(nil))}
}}

// release returns r to the pool, holding on to nothing of the body.
func (r *wireReader) release() {
	r.body = nil
	r.dec.Reset(bytes.NewBuffer(nil))
	wireReaders.Put(r)
}

// object reads a JSON object, calling member with each name; member must
// read the value. A null reads as an empty object.
func (r *wireReader) object(member func(name string) error) error {
	tok, err := r.dec.ReadToken()
	if err != nil {
		return err
	}
	switch tok.Kind() {
	case 'n':
		return nil
	case '{':
	default:
		return fmt.Errorf("want an object, got %s", kindName(tok.Kind()))
	}
	for r.dec.PeekKind() != '}' {
		name, err := r.dec.ReadToken()
		if err != nil {
			return err
		}
		if err := member(name.String()); err != nil {
			return err
		}
	}
	_, err = r.dec.ReadToken()
	return err
}

// array reads a JSON array, calling elem for each element; elem must read
// it. A null reads as an empty array.
func (r *wireReader) array(field string, elem func() error) error {
	tok, err := r.dec.ReadToken()
	if err != nil {
		return err
	}
	switch tok.Kind() {
	case 'n':
		return nil
	case '[':
	default:
		return fmt.Errorf("%s must be an array, got %s", field, kindName(tok.Kind()))
	}
	for r.dec.PeekKind() != ']' {
		if r.dec.PeekKind() == jsontext.KindInvalid {
			_, err := r.dec.ReadToken() // the syntax error
			return err
		}
		if err := elem(); err != nil {
			return err
		}
	}
	_, err = r.dec.ReadToken()
	return err
}

// list reads an array of objects, each with read, naming the element
// in an error.
func list[T any](r *wireReader, field string, read func(*T) error) ([]T, error) {
	var out []T
	err := r.array(field, func() error {
		var v T
		if err := read(&v); err != nil {
			return fmt.Errorf("%s[%d]: %w", field, len(out), err)
		}
		out = append(out, v)
		return nil
	})
	return out, err
}

func (r *wireReader) str(field string) (string, error) {
	tok, err := r.dec.ReadToken()
	if err != nil {
		return "", err
	}
	switch tok.Kind() {
	case '"':
		return tok.String(), nil
	case 'n':
		return "", nil
	}
	return "", fmt.Errorf("%s must be a string, got %s", field, kindName(tok.Kind()))
}

// raw reads the next value and returns its bytes in the body; null reads
// as nil.
func (r *wireReader) raw() ([]byte, error) {
	v, err := r.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	if v.Kind() == 'n' {
		return nil, nil
	}
	// The value as it sits in the body, which outlives the decoder.
	end := int(r.dec.InputOffset())
	return r.body[end-len(v) : end : end], nil
}

func (r *wireReader) rawObject(field string) ([]byte, error) {
	if k := r.dec.PeekKind(); k != '{' && k != 'n' && k != jsontext.KindInvalid {
		return nil, fmt.Errorf("%s must be an object, got %s", field, kindName(k))
	}
	return r.raw()
}

func (r *wireReader) output(o *wireOutput) error {
	return r.object(func(name string) error {
		var err error
		switch name {
		case "name":
			o.Name, err = r.str("name")
		case "parameters":
			o.Parameters, err = r.rawObject("parameters")
			o.Parameters = bytes.Clone(o.Parameters)
		default:
			err = r.skip(name, "name", "parameters")
		}
		return err
	})
}

func (r *wireReader) tensor(t *wireTensor) error {
	return r.object(func(name string) error {
		var err error
		switch name {
		case "name":
			t.Name, err = r.str("name")
		case "datatype":
			t.Datatype, err = r.str("datatype")
		case "shape":
			if r.dec.PeekKind() == 'n' {
				_, err = r.dec.ReadToken()
				break
			}
			t.Shape = []int64{}
			err = r.array("shape", func() error {
				tok, err := r.dec.ReadToken()
				if err != nil {
					return err
				}
				if tok.Kind() != '0' {
					return fmt.Errorf("shape must hold integers, got %s", kindName(tok.Kind()))
				}
				d, err := tok.Int()
				if err != nil {
					return fmt.Errorf("shape: %s is not an integer", tok.String())
				}
				t.Shape = append(t.Shape, d)
				return nil
			})
		case "parameters":
			var p []byte
			if p, err = r.rawObject("parameters"); err == nil && p != nil {
				err = json.Unmarshal(p, &t.Parameters)
			}
		case "data":
			t.Data, err = r.raw()
		default:
			err = r.skip(name, "name", "shape", "datatype", "parameters", "data")
		}
		return err
	})
}

// skip passes over the value of a member inferq does not know, unless
// its name is one it knows spelled in other case, which would otherwise
// be ignored without a word.
func (r *wireReader) skip(name string, known ...string) error {
	for _, k := range known {
		if strings.EqualFold(name, k) {
			return fmt.Errorf("unknown member %q: member names are case-sensitive; did you mean %q?", name, k)
		}
	}
	return r.dec.SkipValue()
}

func kindName(k jsontext.Kind) string {
	switch k {
	case 'n':
		return "null"
	case 'f', 't':
		return "a boolean"
	case '"':
		return "a string"
	case '0':
		return "a number"
	case '{':
		return "an object"
	case '[':
		return "an array"
	}
	return "invalid JSON"
}
