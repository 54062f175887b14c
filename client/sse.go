package client

import (
	"bufio"
	"bytes"
	"io"
)

// EventReader reads server-sent events (text/event-stream) as the HTML
// standard's parsing rules say: lines end in LF, CR or CRLF; a "data"
// field may come on several lines, joined by newlines; the one space
// after a field's colon is dropped; comments (":...") and unknown fields
// are ignored; an event is dispatched at a blank line if it has data. It
// is the one SSE reader of inferq's Go code (the client's streams and the
// tests'). A library was weighed (tmaxmax/go-sse, r3labs/sse) and not
// taken: each brings a server and a reconnecting client this package does
// not need, into every program that calls the HTTP API.
type EventReader struct {
	sc *bufio.Scanner
	id string
}

// NewEventReader reads events from r; one line may be up to 16 MiB.
func NewEventReader(r io.Reader) *EventReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 16<<20)
	sc.Split(scanLines)
	return &EventReader{sc: sc}
}

// Next returns the next event, or io.EOF once the stream ends (an event
// not ended by a blank line is dropped, as the standard says). An
// event's ID is the last id the stream set, as a browser's lastEventId.
func (r *EventReader) Next() (Event, error) {
	var ev Event
	var data []byte
	hasData := false
	for r.sc.Scan() {
		line := r.sc.Bytes()
		if len(line) == 0 {
			if !hasData {
				ev.Name = ""
				continue
			}
			ev.ID, ev.Data = r.id, data
			return ev, nil
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		value = bytes.TrimPrefix(value, []byte(" "))
		switch string(field) {
		case "": // a comment
		case "data":
			if hasData {
				data = append(data, '\n')
			}
			data = append(data, value...)
			hasData = true
		case "event":
			ev.Name = string(value)
		case "id":
			if !bytes.ContainsRune(value, 0) {
				r.id = string(value)
			}
		}
	}
	if err := r.sc.Err(); err != nil {
		return Event{}, err
	}
	return Event{}, io.EOF
}

// scanLines splits at LF, CR or CRLF.
func scanLines(data []byte, atEOF bool) (int, []byte, error) {
	for i, c := range data {
		switch c {
		case '\n':
			return i + 1, data[:i], nil
		case '\r':
			if i+1 < len(data) {
				if data[i+1] == '\n' {
					return i + 2, data[:i], nil
				}
				return i + 1, data[:i], nil
			}
			if atEOF {
				return i + 1, data[:i], nil
			}
			return 0, nil, nil // a CRLF may be split across reads
		}
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}
