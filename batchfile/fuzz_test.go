package batchfile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzBatchLines: the batch-file reader splits any body into lines no
// longer than its limit, or stops with an error, and finding a line's
// custom_id never panics and yields valid JSON when it yields anything.
func FuzzBatchLines(f *testing.F) {
	for _, seed := range []string{
		`{"custom_id":"a","inputs":[]}` + "\n" + `{"custom_id":1}` + "\n",
		"no newline at the end",
		"\n\n\n",
		`{"custom_id":{"nested":[1,2]},"inputs":`,
		`{"inputs":[],"custom_id":"after"}`,
		`["custom_id"]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(body), 16)
		total := 0
		for {
			line, err := ReadLine(r, 64)
			if len(line) > 64 {
				t.Fatalf("a line of %d bytes passed a limit of 64", len(line))
			}
			total += len(line)
			if id := PeekCustomID(line); id != nil && !json.Valid(id) {
				t.Fatalf("custom_id %q of %q is not JSON", id, line)
			}
			if err != nil {
				break
			}
		}
		if total > len(body) {
			t.Fatalf("read %d bytes of a %d-byte body", total, len(body))
		}
	})
}
