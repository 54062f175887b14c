package client

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestEventReader(t *testing.T) {
	for _, c := range []struct {
		name, stream string
		want         []Event
	}{
		{"one event", "id: 1\nevent: result\ndata: {}\n\n", []Event{{ID: "1", Name: "result", Data: []byte("{}")}}},
		{"multi-line data", "data: a\ndata: b\ndata:\n\n", []Event{{Data: []byte("a\nb\n")}}},
		{"no space after the colon", "data:x\n\n", []Event{{Data: []byte("x")}}},
		{"only one space dropped", "data:  x\n\n", []Event{{Data: []byte(" x")}}},
		{"CRLF and CR line ends", "id: 7\r\ndata: a\rdata: b\r\n\r\n", []Event{{ID: "7", Data: []byte("a\nb")}}},
		{"comments and unknown fields", ": keep-alive\nretry: 10\nfoo: bar\ndata: x\n\n", []Event{{Data: []byte("x")}}},
		{"an event without data is not dispatched", "event: ping\n\ndata: x\n\n", []Event{{Data: []byte("x")}}},
		{"the last id carries on", "id: 5\ndata: a\n\ndata: b\n\n", []Event{{ID: "5", Data: []byte("a")}, {ID: "5", Data: []byte("b")}}},
		{"an unfinished event is dropped", "data: a\n\ndata: b\n", []Event{{Data: []byte("a")}}},
		{"a field name alone", "data\n\n", []Event{{Data: []byte("")}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// One byte a read, so that line ends split across reads.
			r := NewEventReader(iotest.OneByteReader(strings.NewReader(c.stream)))
			var got []Event
			for {
				ev, err := r.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, ev)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %d events %q, want %d", len(got), got, len(c.want))
			}
			for i := range got {
				if got[i].ID != c.want[i].ID || got[i].Name != c.want[i].Name || string(got[i].Data) != string(c.want[i].Data) {
					t.Errorf("event %d: got %+v (%q), want %+v (%q)", i, got[i], got[i].Data, c.want[i], c.want[i].Data)
				}
			}
		})
	}
}
