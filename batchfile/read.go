package batchfile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
)

// LineTooLong is a batch file line over the size of a request (the
// limit, --max-body).
type LineTooLong int64

func (e LineTooLong) Error() string {
	return fmt.Sprintf("a line is longer than %d bytes (--max-body)", int64(e))
}

// ReadLine reads one line, refusing lines longer than max.
func ReadLine(r *bufio.Reader, max int64) ([]byte, error) {
	var line []byte
	for {
		part, err := r.ReadSlice('\n')
		line = append(line, part...)
		if int64(len(line)) > max {
			return nil, LineTooLong(max)
		}
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}

// PeekCustomID finds the custom_id of a line that is not a valid request,
// when it comes before what is wrong, so that its error line can still be
// matched to it.
func PeekCustomID(line []byte) json.RawMessage {
	dec := json.NewDecoder(bytes.NewReader(line))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil
		}
		if t == "custom_id" {
			return v
		}
	}
	return nil
}
