package batchfile

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// IndexLine is one line of a batch's index: where the output of an input
// line comes from.
type IndexLine struct {
	Line     int64           `json:"line"`
	CustomID json.RawMessage `json:"custom_id,omitempty"`
	// OpenAI marks a line given in the form of OpenAI's Batch API, whose
	// output line takes that form too.
	OpenAI bool   `json:"openai,omitempty"`
	Job    string `json:"job,omitempty"`
	Row    int    `json:"row,omitempty"`
	Rows   int    `json:"rows,omitempty"`
	Error  string `json:"error,omitempty"`
}

// IndexKey is the storage key of batch id's index.
func IndexKey(id string) string { return "batches/" + id + "/index.jsonl" }

// ReadIndex reads an index (JSON Lines of IndexLine) and calls fn with
// each run of consecutive lines that share a job (job empty for an error
// line, alone), in order. lines is reused between calls.
func ReadIndex(r io.Reader, fn func(job string, lines []IndexLine) error) error {
	// The encoding/json/v2 decoder (its module until Go ships it): encoding/json's took most of the time
	// of reading a large batch's output back.
	dec := jsontext.NewDecoder(bufio.NewReaderSize(r, 256<<10))
	var group []IndexLine
	for {
		var l IndexLine
		err := jsonv2.UnmarshalDecode(dec, &l)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read batch index: %w", err)
		}
		if len(group) > 0 && (l.Job == "" || l.Job != group[0].Job) {
			if err := fn(group[0].Job, group); err != nil {
				return err
			}
			group = group[:0]
		}
		group = append(group, l)
	}
	if len(group) > 0 {
		return fn(group[0].Job, group)
	}
	return nil
}
