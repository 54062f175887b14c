package producer

import (
	"strings"
	"testing"
)

func TestParseTokens(t *testing.T) {
	const a, b = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
	tests := []struct {
		name, file string
		want       []Token
		err        string
	}{
		{"empty", "", nil, ""},
		{"comments and blanks", "# ops\n\n  \n" + a + "\n", []Token{{Secret: a, Models: []string{}}}, ""},
		{"models by comma and space", b + " fraud, iris\tresnet\n", []Token{{Secret: b, Models: []string{"fraud", "iris", "resnet"}}}, ""},
		{"two tokens", a + "\n" + b + " iris\n", []Token{{Secret: a, Models: []string{}}, {Secret: b, Models: []string{"iris"}}}, ""},
		{"short", "secret\n", nil, "line 1: a token of 6 characters is too short"},
		{"bad model", a + " ../etc\n", nil, `line 1: "../etc" is not a model name`},
		{"a comma and no model", a + " ,\n", nil, "line 1: a comma but no model"},
		{"commas only", b + " , ,\n", nil, "line 1: a comma but no model"},
		{"repeated", a + "\n# again\n" + a + " iris\n", nil, "line 3: the token of line 1 again"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTokens(strings.NewReader(tt.file))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("%d tokens, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if got[i].Secret != tt.want[i].Secret || strings.Join(got[i].Models, ",") != strings.Join(tt.want[i].Models, ",") {
					t.Errorf("token %d: %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

// The Authorization scheme's name is case-insensitive: a client sending
// "bearer" (as some HTTP libraries do) is let in.
func TestBearer(t *testing.T) {
	tests := []struct {
		header, want string
		ok           bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER  abc ", "abc", true},
		{"Basic abc", "", false},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"", "", false},
		{"Bearerabc", "", false},
	}
	for _, tt := range tests {
		got, ok := bearer(tt.header)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("bearer(%q) = %q, %v; want %q, %v", tt.header, got, ok, tt.want, tt.ok)
		}
	}
}
