package producer

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// readBody reads a body whole, in one buffer when its size is declared,
// whatever the size of the reads it comes in.
func TestReadBody(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), (maxPrealloc+100)/16) // past what is set aside up front
	tests := []struct {
		name     string
		body     []byte
		declared int64
		reader   func(io.Reader) io.Reader
		wantCap  int // 0: not checked
	}{
		{name: "declared", body: []byte("hello"), declared: 5, wantCap: 6},
		{name: "unknown length", body: []byte("hello"), declared: -1},
		{name: "empty", body: []byte{}, declared: 0},
		{name: "one byte a read", body: []byte("hello, world"), declared: 12, reader: iotest.OneByteReader, wantCap: 13},
		{name: "data with EOF", body: []byte("hello"), declared: 5, reader: iotest.DataErrReader, wantCap: 6},
		{name: "larger than set aside", body: big, declared: int64(len(big))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r io.Reader = bytes.NewReader(tc.body)
			if tc.reader != nil {
				r = tc.reader(r)
			}
			got, err := readBody(r, tc.declared)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.body) {
				t.Fatalf("read %d bytes, want %d", len(got), len(tc.body))
			}
			if tc.wantCap != 0 && cap(got) != tc.wantCap {
				t.Fatalf("buffer of %d bytes for a %d-byte body: it grew", cap(got), len(tc.body))
			}
		})
	}
	t.Run("a read fails", func(t *testing.T) {
		broken := errors.New("connection reset")
		_, err := readBody(io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(broken)), 10)
		if !errors.Is(err, broken) {
			t.Fatalf("err = %v, want %v", err, broken)
		}
	})
}
