package batchfile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/tensor"
)

// OutputLine is one line of a batch's output.
type OutputLine struct {
	// ID and OpenAI, for a line given in the form of OpenAI's Batch API:
	// its output line is {"id", "custom_id", "response": {"status_code",
	// "body"}, "error"}.
	ID       string
	OpenAI   bool
	CustomID json.RawMessage
	// Line is the input line's number, given only in a list of the
	// errors alone (where the position no longer says it).
	Line     int64
	Response json.RawMessage
	Error    string
}

// NewOutputLine starts the output line of an input line of batch.
func NewOutputLine(batch string, l IndexLine) OutputLine {
	return OutputLine{CustomID: l.CustomID, OpenAI: l.OpenAI, ID: batch + "-" + strconv.FormatInt(l.Line, 10)}
}

// Select says which output lines are made, and what they say.
type Select struct {
	// ErrorsOnly makes the failed lines alone, each with its number.
	ErrorsOnly bool
	// Numbered gives every line its input line's number (a followed
	// output, whose lines come as they finish).
	Numbered bool
}

// Failed makes the output lines of lines that all failed with msg (or,
// for an error line of the index, its own error), numbered as sel says.
func Failed(batch string, lines []IndexLine, msg string, sel Select) [][]byte {
	out := make([][]byte, len(lines))
	for i, l := range lines {
		ol := NewOutputLine(batch, l)
		ol.Error = msg
		if l.Error != "" {
			ol.Error = l.Error
		}
		if sel.ErrorsOnly || sel.Numbered {
			ol.Line = l.Line
		}
		out[i] = ol.Append(nil)
	}
	return out
}

// Assemble makes the output lines of the lines one job packed, from the
// job's response: each line's part of it, cut as the job was packed (the
// response's parameters say so for lines laid end to end, and which lines
// failed on their own), or its error; the lines sel selects. A response
// that does not match the lines fails them all, saying why.
func Assemble(batch, job string, lines []IndexLine, resp *tensor.Response, sel Select) [][]byte {
	parts := [][]tensor.Tensor{resp.Outputs}
	packed, err := batching.ParseLines(resp.Parameters)
	switch {
	case err != nil:
	case packed != nil && len(packed.Shapes) != len(lines):
		err = fmt.Errorf("the result holds %d responses for %d lines", len(packed.Shapes), len(lines))
	case packed != nil:
		parts, err = batching.Unpack(resp.Outputs, packed.Shapes)
	case len(lines) > 1:
		rows := make([]int, len(lines))
		for i, l := range lines {
			rows[i] = l.Rows
		}
		parts, err = batching.Split(resp.Outputs, rows)
	}
	if err != nil {
		return Failed(batch, lines, err.Error(), sel)
	}
	out := make([][]byte, 0, len(lines))
	for i, l := range lines {
		ol := NewOutputLine(batch, l)
		msg, failed := packed.Failed(i)
		if sel.Numbered {
			ol.Line = l.Line
		}
		switch {
		case failed && sel.ErrorsOnly:
			ol.Error, ol.Line = msg, l.Line
		case failed:
			ol.Error = msg
		case sel.ErrorsOnly:
			continue
		default:
			r := tensor.Response{ModelName: resp.ModelName, ModelVersion: resp.ModelVersion, ID: job, Outputs: parts[i]}
			ol.Response = r.AppendJSON(nil)
		}
		out = append(out, ol.Append(nil))
	}
	return out
}

// Append appends l as one line of JSON. It writes the fields itself:
// json.Marshal would check and compact the response, which AppendJSON has
// just written compact, and that was most of the output's cost.
func (l *OutputLine) Append(b []byte) []byte {
	if l.OpenAI {
		return l.appendOpenAI(b)
	}
	b = append(b, `{"custom_id":`...)
	if len(l.CustomID) == 0 {
		b = append(b, "null"...)
	} else if c, err := compactJSON(b, l.CustomID); err == nil {
		b = c
	} else {
		b = append(b, "null"...) // not JSON: the index is damaged
	}
	if l.Line > 0 {
		b = strconv.AppendInt(append(b, `,"line":`...), l.Line, 10)
	}
	if len(l.Response) > 0 {
		b = append(append(b, `,"response":`...), l.Response...)
	}
	if l.Error != "" {
		b = appendJSONQuoted(append(b, `,"error":`...), l.Error)
	}
	return append(b, "}\n"...)
}

// appendOpenAI writes an output line in the form of OpenAI's Batch API:
// the response is the V2 response with status 200, or the error with
// status 400, as the synchronous /v2/.../infer answers them.
func (l *OutputLine) appendOpenAI(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONQuoted(b, l.ID)
	b = append(b, `,"custom_id":`...)
	if c, err := compactJSON(b, l.CustomID); len(l.CustomID) > 0 && err == nil {
		b = c
	} else {
		b = append(b, "null"...)
	}
	if l.Line > 0 {
		b = strconv.AppendInt(append(b, `,"line":`...), l.Line, 10)
	}
	if l.Error != "" {
		b = append(b, `,"response":{"status_code":400,"body":{"error":`...)
		b = appendJSONQuoted(b, l.Error)
		b = append(b, `}}`...)
	} else {
		b = append(append(append(b, `,"response":{"status_code":200,"body":`...), l.Response...), '}')
	}
	return append(b, `,"error":null}`+"\n"...)
}

func appendJSONQuoted(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}

// compactJSON appends raw to b without insignificant space.
func compactJSON(b []byte, raw []byte) ([]byte, error) {
	buf := bytes.NewBuffer(b)
	if err := json.Compact(buf, raw); err != nil {
		return b, err
	}
	return buf.Bytes(), nil
}
