package tensor

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unsafe"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/x448/float16"
)

// Limits bound what a decoder accepts, so that a hostile or mistaken
// request is refused with a clear error instead of exhausting memory. The
// zero value applies the defaults.
type Limits struct {
	// MaxElements bounds the elements of all inputs of one request
	// together. Default 64 Mi.
	MaxElements int64
	// MaxStringBytes bounds one BYTES element. Default 16 MiB.
	MaxStringBytes int
	// MaxDepth bounds the nesting of data arrays. Default 32.
	MaxDepth int
}

func (l Limits) withDefaults() Limits {
	if l.MaxElements <= 0 {
		l.MaxElements = 64 << 20
	}
	if l.MaxStringBytes <= 0 {
		l.MaxStringBytes = 16 << 20
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = 32
	}
	return l
}

// ErrInvalid is wrapped by every decoding error: the input, not inferq, is
// at fault.
var ErrInvalid = errors.New("invalid tensor request")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Request is a V2 inference request.
type Request struct {
	// ID is the client's correlation id, echoed in the response.
	ID string
	// Parameters are the request's free-form parameters, kept as JSON.
	Parameters json.RawMessage
	Inputs     []Tensor
	// Outputs names the outputs wanted; empty means all of them.
	Outputs []string
	// CustomID is the "custom_id" of a line of a batch file, as JSON, kept
	// to be echoed in the batch's output.
	CustomID json.RawMessage
	// BinaryData holds the outputs asked for with a binary_data parameter
	// (true: in the binary extension, after the JSON header; false: as
	// JSON). Outputs not in it follow BinaryAll, the request's
	// binary_data_output parameter.
	BinaryData map[string]bool
	BinaryAll  bool
}

// WantsBinary reports whether the output named name is to be answered in
// the binary tensor extension.
func (r *Request) WantsBinary(name string) bool {
	if v, ok := r.BinaryData[name]; ok {
		return v
	}
	return r.BinaryAll
}

// AnyBinary reports whether any output may be answered in binary.
func (r *Request) AnyBinary() bool {
	if r.BinaryAll {
		return true
	}
	for _, v := range r.BinaryData {
		if v {
			return true
		}
	}
	return false
}

// binaryParam reads a binary_data or binary_data_output parameter from
// params: absent, or a JSON boolean.
func binaryParam(params json.RawMessage, key string) (v, ok bool, err error) {
	if len(params) == 0 || !bytes.Contains(params, []byte(key)) {
		return false, false, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(params, &m); err != nil {
		return false, false, invalidf("parameters: %v", err)
	}
	raw, ok := m[key]
	if !ok {
		return false, false, nil
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return false, false, invalidf("parameter %s is %s; want true or false", key, raw)
	}
	return v, true, nil
}

// Input returns the input named name, or nil.
func (r *Request) Input(name string) *Tensor {
	for i := range r.Inputs {
		if r.Inputs[i].Name == name {
			return &r.Inputs[i]
		}
	}
	return nil
}

// Response is a V2 inference response.
type Response struct {
	ModelName    string
	ModelVersion string
	ID           string
	// Parameters are the response's parameters, as a JSON object; empty
	// for none.
	Parameters json.RawMessage
	Outputs    []Tensor
}

type wireTensor struct {
	Name       string                     `json:"name"`
	Shape      []int64                    `json:"shape"`
	Datatype   string                     `json:"datatype"`
	Parameters map[string]json.RawMessage `json:"parameters,omitempty"`
	Data       json.RawMessage            `json:"data,omitempty"`
}

type wireOutput struct {
	Name       string          `json:"name"`
	Parameters json.RawMessage `json:"parameters,omitempty"`
}

type wireRequest struct {
	ID         string          `json:"id,omitempty"`
	Parameters json.RawMessage `json:"parameters,omitempty"`
	Inputs     []wireTensor    `json:"inputs"`
	Outputs    []wireOutput    `json:"outputs,omitempty"`
	CustomID   json.RawMessage `json:"custom_id,omitempty"`
}

type wireResponse struct {
	ModelName    string          `json:"model_name"`
	ModelVersion string          `json:"model_version"`
	ID           string          `json:"id"`
	Parameters   json.RawMessage `json:"parameters,omitempty"`
	Outputs      []wireTensor    `json:"outputs"`
}

// DecodeRequest decodes a V2 JSON request. Each input's data is checked
// against its shape and datatype and converted to the binary layout.
func DecodeRequest(body []byte, lim Limits) (*Request, error) {
	return decodeRequest(body, nil, lim)
}

// DecodeBinaryRequest decodes a request in the V2 binary tensor extension:
// the first headerLen bytes of data are the JSON request, and inputs whose
// parameters carry binary_data_size take that many bytes, in order, from
// what follows.
func DecodeBinaryRequest(data []byte, headerLen int, lim Limits) (*Request, error) {
	if headerLen < 0 || headerLen > len(data) {
		return nil, invalidf("header length %d is outside the %d-byte body", headerLen, len(data))
	}
	return decodeRequest(data[:headerLen], data[headerLen:], lim)
}

func decodeRequest(header, binaryData []byte, lim Limits) (*Request, error) {
	lim = lim.withDefaults()
	w, err := readWireRequest(header)
	if err != nil {
		return nil, invalidf("request is not valid V2 JSON: %v", err)
	}
	if len(w.Inputs) == 0 {
		return nil, invalidf("request has no inputs")
	}
	r := &Request{ID: w.ID, Parameters: w.Parameters, CustomID: w.CustomID, Inputs: make([]Tensor, len(w.Inputs))}
	var total int64
	// A set of the names seen, not a scan of those before: a request may
	// hold many inputs, and comparing each with every other took seconds
	// for a few megabytes of them.
	seen := make(map[string]struct{}, len(w.Inputs))
	for i := range w.Inputs {
		t, rest, err := w.Inputs[i].decode(binaryData, lim, lim.MaxElements-total)
		if err != nil {
			return nil, err
		}
		binaryData = rest
		total += NumElements(t.Shape)
		if _, dup := seen[t.Name]; dup {
			return nil, invalidf("input %q appears twice", t.Name)
		}
		seen[t.Name] = struct{}{}
		r.Inputs[i] = t
	}
	if len(binaryData) > 0 {
		return nil, invalidf("%d bytes of binary data follow the last binary input", len(binaryData))
	}
	if r.BinaryAll, _, err = binaryParam(w.Parameters, "binary_data_output"); err != nil {
		return nil, err
	}
	for i, o := range w.Outputs {
		if o.Name == "" {
			return nil, invalidf("an entry of outputs has no name")
		}
		if slices.Contains(r.Outputs[:i], o.Name) {
			return nil, invalidf("output %q is asked for twice in outputs; name each output once", o.Name)
		}
		r.Outputs = append(r.Outputs, o.Name)
		v, ok, err := binaryParam(o.Parameters, "binary_data")
		if err != nil {
			return nil, invalidf("output %q: %v", o.Name, err)
		}
		if ok {
			if r.BinaryData == nil {
				r.BinaryData = map[string]bool{}
			}
			r.BinaryData[o.Name] = v
		}
	}
	return r, nil
}

func (w *wireTensor) decode(binaryData []byte, lim Limits, budget int64) (Tensor, []byte, error) {
	if w.Name == "" {
		return Tensor{}, nil, invalidf("an input has no name")
	}
	dt, err := ParseDatatype(w.Datatype)
	if err != nil {
		return Tensor{}, nil, invalidf("input %q: %v", w.Name, err)
	}
	if w.Shape == nil {
		return Tensor{}, nil, invalidf("input %q has no shape", w.Name)
	}
	n := int64(1)
	for _, d := range w.Shape {
		if d < 0 {
			return Tensor{}, nil, invalidf("input %q: shape %s has a negative dimension", w.Name, FormatShape(w.Shape))
		}
		if d > 0 && n > budget/d {
			return Tensor{}, nil, invalidf("input %q: shape %s exceeds the limit of %d elements per request", w.Name, FormatShape(w.Shape), lim.MaxElements)
		}
		n *= d
	}
	if n > budget {
		return Tensor{}, nil, invalidf("input %q: shape %s exceeds the limit of %d elements per request", w.Name, FormatShape(w.Shape), lim.MaxElements)
	}
	t := Tensor{Name: w.Name, Datatype: dt, Shape: w.Shape}
	if raw, ok := w.Parameters["binary_data_size"]; ok {
		size, err := strconv.ParseInt(string(raw), 10, 64)
		if err != nil || size < 0 {
			return Tensor{}, nil, invalidf("input %q: binary_data_size %s is not a byte count", w.Name, raw)
		}
		if size > int64(len(binaryData)) {
			return Tensor{}, nil, invalidf("input %q: binary_data_size %d exceeds the %d bytes of binary data left", w.Name, size, len(binaryData))
		}
		t.Data = binaryData[:size:size]
		if err := t.CheckData(); err != nil {
			return Tensor{}, nil, invalidf("input %v", err)
		}
		return t, binaryData[size:], nil
	}
	if raw, ok := w.Parameters[ObjectParameter]; ok {
		if len(w.Data) > 0 {
			return Tensor{}, nil, invalidf("input %q has both data and %s; give one", w.Name, ObjectParameter)
		}
		var key string
		if err := json.Unmarshal(raw, &key); err != nil || key == "" {
			return Tensor{}, nil, invalidf("input %q: %s must be a string naming a stored object", w.Name, ObjectParameter)
		}
		t.Object = key
		return t, binaryData, nil
	}
	if len(w.Data) == 0 {
		return Tensor{}, nil, invalidf("input %q has no data (give data, or %s naming a stored object)", w.Name, ObjectParameter)
	}
	t.Data, err = decodeData(w.Data, dt, n, lim)
	if err != nil {
		return Tensor{}, nil, invalidf("input %q: %v", w.Name, err)
	}
	return t, binaryData, nil
}

// stringEnd returns the index just past the JSON string starting at i.
func stringEnd(raw []byte, i int) (int, error) {
	for j := i + 1; j < len(raw); j++ {
		switch raw[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, errors.New("unterminated string")
}

func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func appendValue(out, tok []byte, quoted bool, dt Datatype, lim Limits) ([]byte, error) {
	if dt == Bytes {
		if !quoted {
			return nil, fmt.Errorf("BYTES elements must be strings, got %s", tok)
		}
		s := tok[1 : len(tok)-1]
		if bytes.IndexByte(s, '\\') >= 0 {
			var v string
			if err := json.Unmarshal(tok, &v); err != nil {
				return nil, fmt.Errorf("bad string %s: %v", tok, err)
			}
			s = []byte(v)
		}
		if len(s) > lim.MaxStringBytes {
			return nil, fmt.Errorf("string of %d bytes exceeds the limit of %d", len(s), lim.MaxStringBytes)
		}
		return AppendBytesElement(out, s), nil
	}
	if dt == Bool {
		switch string(tok) {
		case "true":
			return append(out, 1), nil
		case "false":
			return append(out, 0), nil
		}
		return nil, fmt.Errorf("BOOL elements must be true or false, got %s", tok)
	}
	if quoted {
		f, ok := nonFinite(tok)
		if !ok || (dt != FP16 && dt != FP32 && dt != FP64) {
			return nil, fmt.Errorf("%s elements must be numbers, got %s", dt, tok)
		}
		return appendFloat(out, dt, f), nil
	}
	s := unsafeString(tok)
	switch dt {
	case Uint8, Uint16, Uint32, Uint64:
		bits := dt.Size() * 8
		v, err := strconv.ParseUint(s, 10, bits)
		if err != nil {
			return nil, intError(s, dt, err)
		}
		return appendUint(out, v, dt.Size()), nil
	case Int8, Int16, Int32, Int64:
		bits := dt.Size() * 8
		v, err := strconv.ParseInt(s, 10, bits)
		if err != nil {
			return nil, intError(s, dt, err)
		}
		return appendUint(out, uint64(v), dt.Size()), nil
	case FP16, FP32, FP64:
		bits := 64
		if dt != FP64 {
			bits = 32
		}
		f, ok := parseShortDecimal(tok)
		if ok && bits == 32 {
			f = float64(float32(f)) // what ParseFloat(s, 32) returns
		}
		if !ok {
			var err error
			if f, err = strconv.ParseFloat(s, bits); err != nil {
				if errors.Is(err, strconv.ErrRange) {
					return nil, fmt.Errorf("%s is out of range for %s", s, dt)
				}
				return nil, fmt.Errorf("%s is not a number", s)
			}
		}
		if dt == FP16 && math.Abs(f) > 65504 {
			return nil, fmt.Errorf("%s is out of range for FP16", s)
		}
		return appendFloat(out, dt, f), nil
	}
	return nil, fmt.Errorf("unsupported datatype %s", dt)
}

func intError(s string, dt Datatype, err error) error {
	if errors.Is(err, strconv.ErrRange) {
		return fmt.Errorf("%s is out of range for %s", s, dt)
	}
	return fmt.Errorf("%s is not an integer (%s)", s, dt)
}

func nonFinite(tok []byte) (float64, bool) {
	switch string(tok) {
	case `"NaN"`:
		return math.NaN(), true
	case `"Infinity"`, `"+Infinity"`, `"inf"`:
		return math.Inf(1), true
	case `"-Infinity"`, `"-inf"`:
		return math.Inf(-1), true
	}
	return 0, false
}

func appendUint(out []byte, v uint64, size int) []byte {
	switch size {
	case 1:
		return append(out, byte(v))
	case 2:
		return binary.LittleEndian.AppendUint16(out, uint16(v))
	case 4:
		return binary.LittleEndian.AppendUint32(out, uint32(v))
	}
	return binary.LittleEndian.AppendUint64(out, v)
}

func appendFloat(out []byte, dt Datatype, f float64) []byte {
	switch dt {
	case FP16:
		return binary.LittleEndian.AppendUint16(out, float16.Fromfloat32(float32(f)).Bits())
	case FP32:
		return binary.LittleEndian.AppendUint32(out, math.Float32bits(float32(f)))
	}
	return binary.LittleEndian.AppendUint64(out, math.Float64bits(f))
}

// AppendJSON appends r as V2 response JSON.
func (r *Response) AppendJSON(buf []byte) []byte {
	return r.appendHeader(buf, func(string) bool { return false })
}

// AppendJSON appends r's inputs (and the outputs asked for) as a V2 JSON
// request. An input given by reference (Object) is written as the
// reference, {"parameters": {"inferq_object": key}}, whatever data it
// holds once read.
func (r *Request) AppendJSON(buf []byte) []byte {
	buf = append(buf, `{"inputs":[`...)
	for i := range r.Inputs {
		if i > 0 {
			buf = append(buf, ',')
		}
		t := &r.Inputs[i]
		if t.Object == "" {
			buf = t.AppendJSON(buf)
			continue
		}
		buf = append(buf, `{"name":`...)
		buf = appendJSONString(buf, t.Name)
		buf = append(buf, `,"datatype":"`...)
		buf = append(buf, t.Datatype.String()...)
		buf = append(buf, `","shape":[`...)
		for j, d := range t.Shape {
			if j > 0 {
				buf = append(buf, ',')
			}
			buf = strconv.AppendInt(buf, d, 10)
		}
		buf = append(buf, `],"parameters":{"`+ObjectParameter+`":`...)
		buf = appendJSONString(buf, t.Object)
		buf = append(buf, "}}"...)
	}
	buf = append(buf, ']')
	if len(r.Outputs) > 0 {
		buf = append(buf, `,"outputs":[`...)
		for i, o := range r.Outputs {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, `{"name":`...)
			buf = appendJSONString(buf, o)
			if v, ok := r.BinaryData[o]; ok {
				buf = append(buf, `,"parameters":{"binary_data":`...)
				buf = strconv.AppendBool(buf, v)
				buf = append(buf, '}')
			}
			buf = append(buf, '}')
		}
		buf = append(buf, ']')
	}
	return append(buf, '}')
}

// AppendJSON appends t as a V2 tensor object with flat data. Non-finite
// floats, which JSON cannot carry as numbers, are written as the strings
// "NaN", "Infinity" and "-Infinity", which DecodeRequest accepts back.
func (t *Tensor) AppendJSON(buf []byte) []byte {
	buf = t.appendHead(buf)
	buf = append(buf, `,"data":[`...)
	buf = appendData(buf, t)
	return append(buf, "]}"...)
}

// appendHeader appends r as V2 response JSON in which the outputs binary
// says are binary carry "binary_data_size" instead of "data".
func (r *Response) appendHeader(buf []byte, binary func(name string) bool) []byte {
	buf = append(buf, `{"model_name":`...)
	buf = appendJSONString(buf, r.ModelName)
	buf = append(buf, `,"model_version":`...)
	buf = appendJSONString(buf, r.ModelVersion)
	buf = append(buf, `,"id":`...)
	buf = appendJSONString(buf, r.ID)
	if len(r.Parameters) > 0 {
		buf = append(buf, `,"parameters":`...)
		buf = append(buf, r.Parameters...)
	}
	buf = append(buf, `,"outputs":[`...)
	for i := range r.Outputs {
		if i > 0 {
			buf = append(buf, ',')
		}
		t := &r.Outputs[i]
		if !binary(t.Name) {
			buf = t.AppendJSON(buf)
			continue
		}
		buf = t.appendHead(buf)
		buf = append(buf, `,"parameters":{"binary_data_size":`...)
		buf = strconv.AppendInt(buf, int64(len(t.Data)), 10)
		buf = append(buf, "}}"...)
	}
	return append(buf, "]}"...)
}

// appendHead appends the start of t's V2 tensor object: its name,
// datatype and shape.
func (t *Tensor) appendHead(buf []byte) []byte {
	buf = append(buf, `{"name":`...)
	buf = appendJSONString(buf, t.Name)
	buf = append(buf, `,"datatype":"`...)
	buf = append(buf, t.Datatype.String()...)
	buf = append(buf, `","shape":[`...)
	for i, d := range t.Shape {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = strconv.AppendInt(buf, d, 10)
	}
	return append(buf, ']')
}

// AppendBinary appends r in the V2 binary tensor extension: a JSON header
// in which each output that binary says is binary carries
// "binary_data_size" instead of "data", then those outputs' bytes as they
// are (little-endian elements; BYTES elements each after its 4-byte
// length), in order. It returns the result and the header's length, for
// the Inference-Header-Content-Length header.
func (r *Response) AppendBinary(buf []byte, binary func(name string) bool) ([]byte, int) {
	start := len(buf)
	buf = r.appendHeader(buf, binary)
	headerLen := len(buf) - start
	for i := range r.Outputs {
		if binary(r.Outputs[i].Name) {
			buf = append(buf, r.Outputs[i].Data...)
		}
	}
	return buf, headerLen
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json writes it; the error saying so is dropped.
func appendJSONString(buf []byte, s string) []byte {
	buf, _ = jsontext.AppendQuote(buf, s)
	return buf
}

// AppendDataJSON appends t's elements as JSON values separated by commas,
// without brackets: what the "data" array of t's V2 JSON holds.
func (t *Tensor) AppendDataJSON(buf []byte) []byte { return appendData(buf, t) }

func appendData(buf []byte, t *Tensor) []byte {
	d := t.Data
	le := binary.LittleEndian
	size := t.Datatype.Size()
	if t.Datatype == Bytes {
		elems, _ := SplitBytes(d)
		for i, e := range elems {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSONString(buf, string(e))
		}
		return buf
	}
	for i := 0; i+size <= len(d); i += size {
		if i > 0 {
			buf = append(buf, ',')
		}
		e := d[i : i+size]
		switch t.Datatype {
		case Bool:
			buf = strconv.AppendBool(buf, e[0] != 0)
		case Uint8:
			buf = strconv.AppendUint(buf, uint64(e[0]), 10)
		case Uint16:
			buf = strconv.AppendUint(buf, uint64(le.Uint16(e)), 10)
		case Uint32:
			buf = strconv.AppendUint(buf, uint64(le.Uint32(e)), 10)
		case Uint64:
			buf = strconv.AppendUint(buf, le.Uint64(e), 10)
		case Int8:
			buf = strconv.AppendInt(buf, int64(int8(e[0])), 10)
		case Int16:
			buf = strconv.AppendInt(buf, int64(int16(le.Uint16(e))), 10)
		case Int32:
			buf = strconv.AppendInt(buf, int64(int32(le.Uint32(e))), 10)
		case Int64:
			buf = strconv.AppendInt(buf, int64(le.Uint64(e)), 10)
		case FP16:
			buf = appendJSONFloat(buf, float64(float16.Frombits(le.Uint16(e)).Float32()), 32)
		case FP32:
			buf = appendJSONFloat(buf, float64(math.Float32frombits(le.Uint32(e))), 32)
		case FP64:
			buf = appendJSONFloat(buf, math.Float64frombits(le.Uint64(e)), 64)
		}
	}
	return buf
}

func appendJSONFloat(buf []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(buf, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(buf, `"Infinity"`...)
	case math.IsInf(f, -1):
		return append(buf, `"-Infinity"`...)
	}
	return strconv.AppendFloat(buf, f, 'g', -1, bits)
}

// DecodeResponse decodes V2 response JSON, as clients and tests read it.
func DecodeResponse(body []byte) (*Response, error) {
	return decodeResponse(body, nil)
}

// DecodeBinaryResponse decodes a V2 response in the binary tensor
// extension: a JSON header of headerLen bytes, then the binary outputs'
// data.
func DecodeBinaryResponse(data []byte, headerLen int) (*Response, error) {
	if headerLen < 0 || headerLen > len(data) {
		return nil, fmt.Errorf("decode V2 response: header length %d is outside the %d bytes of the response", headerLen, len(data))
	}
	return decodeResponse(data[:headerLen], data[headerLen:])
}

func decodeResponse(body, binaryData []byte) (*Response, error) {
	w, err := readWireResponse(body)
	if err != nil {
		return nil, fmt.Errorf("decode V2 response: %w", err)
	}
	r := &Response{ModelName: w.ModelName, ModelVersion: w.ModelVersion, ID: w.ID, Parameters: w.Parameters}
	lim := Limits{}.withDefaults()
	lim.MaxElements = math.MaxInt64
	for i := range w.Outputs {
		t, rest, err := w.Outputs[i].decode(binaryData, lim, lim.MaxElements)
		if err != nil {
			return nil, fmt.Errorf("decode V2 response: %w", err)
		}
		binaryData = rest
		r.Outputs = append(r.Outputs, t)
	}
	if len(binaryData) > 0 {
		return nil, fmt.Errorf("decode V2 response: %d bytes of binary data follow the last binary output", len(binaryData))
	}
	return r, nil
}

// MarshalBinary encodes r in the V2 binary tensor extension: a JSON header
// whose inputs carry binary_data_size, then each input's data in order. It
// returns the encoding and the length of its JSON header, which
// DecodeBinaryRequest needs back.
func (r *Request) MarshalBinary() (data []byte, headerLen int, err error) {
	w := wireRequest{ID: r.ID, Parameters: r.Parameters, Inputs: make([]wireTensor, len(r.Inputs))}
	size := 0
	for i := range r.Inputs {
		t := &r.Inputs[i]
		w.Inputs[i] = wireTensor{Name: t.Name, Shape: t.Shape, Datatype: t.Datatype.String()}
		if t.Object != "" && len(t.Data) == 0 {
			key, _ := json.Marshal(t.Object)
			w.Inputs[i].Parameters = map[string]json.RawMessage{ObjectParameter: key}
			continue
		}
		w.Inputs[i].Parameters = map[string]json.RawMessage{"binary_data_size": json.RawMessage(strconv.Itoa(len(t.Data)))}
		size += len(t.Data)
	}
	for _, o := range r.Outputs {
		out := wireOutput{Name: o}
		if v, ok := r.BinaryData[o]; ok {
			out.Parameters = json.RawMessage(`{"binary_data":` + strconv.FormatBool(v) + `}`)
		}
		w.Outputs = append(w.Outputs, out)
	}
	header, err := json.Marshal(&w)
	if err != nil {
		return nil, 0, fmt.Errorf("encode request header: %w", err)
	}
	data = make([]byte, 0, len(header)+size)
	data = append(data, header...)
	for i := range r.Inputs {
		data = append(data, r.Inputs[i].Data...)
	}
	return data, len(header), nil
}

// AppendNumber appends f as one element of datatype dt: rounded toward
// zero for integers, nonzero as true for BOOL. BYTES takes the number's
// decimal text.
func AppendNumber(out []byte, dt Datatype, f float64) []byte {
	switch dt {
	case FP16, FP32, FP64:
		return appendFloat(out, dt, f)
	case Bool:
		if f != 0 {
			return append(out, 1)
		}
		return append(out, 0)
	case Int8, Int16, Int32, Int64:
		return appendUint(out, uint64(int64(f)), dt.Size())
	case Uint8, Uint16, Uint32, Uint64:
		return appendUint(out, uint64(f), dt.Size())
	case Bytes:
		return AppendBytesElement(out, strconv.AppendFloat(nil, f, 'g', -1, 64))
	}
	return out
}
