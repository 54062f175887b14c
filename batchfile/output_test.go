package batchfile

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// An output line is one line of valid JSON that reads back as its fields,
// whatever the custom id and the error hold.
func TestOutputLine(t *testing.T) {
	tests := []struct {
		name string
		line OutputLine
		want map[string]any
	}{
		{"no custom id", OutputLine{Error: "bad"}, map[string]any{"custom_id": nil, "error": "bad"}},
		{"number id and response", OutputLine{CustomID: json.RawMessage(`7`), Response: json.RawMessage(`{"outputs":[]}`)},
			map[string]any{"custom_id": 7.0, "response": map[string]any{"outputs": []any{}}}},
		{"spaced object id", OutputLine{CustomID: json.RawMessage("{ \"a\" :\t[1, 2] }"), Error: "x"},
			map[string]any{"custom_id": map[string]any{"a": []any{1.0, 2.0}}, "error": "x"}},
		{"error with quotes and a newline", OutputLine{CustomID: json.RawMessage(`"<id>"`), Error: "line 3: \"x\"\nbroken"},
			map[string]any{"custom_id": "<id>", "error": "line 3: \"x\"\nbroken"}},
		{"damaged id", OutputLine{CustomID: json.RawMessage(`{"a":`), Error: "x"}, map[string]any{"custom_id": nil, "error": "x"}},
		{"error with its line", OutputLine{CustomID: json.RawMessage(`"r"`), Line: 1234, Error: "x"}, map[string]any{"custom_id": "r", "line": 1234.0, "error": "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.line.Append([]byte("before\n"))
			b, ok := bytes.CutPrefix(b, []byte("before\n"))
			if !ok {
				t.Fatalf("what came before was changed: %q", b)
			}
			if bytes.Count(b, []byte("\n")) != 1 || b[len(b)-1] != '\n' {
				t.Fatalf("not one line: %q", b)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("%q: %v", b, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s reads back as %v, want %v", b, got, tt.want)
			}
		})
	}
}
