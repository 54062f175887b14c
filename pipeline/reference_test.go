package pipeline

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestOpReference holds the op table of docs/guides/pipelines.md to the
// code: every built-in op is listed, with exactly the parameters it
// reads.
func TestOpReference(t *testing.T) {
	b, err := os.ReadFile("../docs/guides/pipelines.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z_.]+)` \\|([^|]*)\\|")
	documented := map[string][]string{}
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		var params []string
		for _, p := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(m[2], -1) {
			params = append(params, p[1])
		}
		documented[m[1]] = params
	}
	for _, op := range Ops {
		got, ok := documented[op]
		if !ok {
			t.Errorf("op %s is not in the guide's table", op)
			continue
		}
		slices.Sort(got)
		if want := Params(op); !slices.Equal(got, want) {
			t.Errorf("op %s: the guide lists %s, the code reads %s", op, strings.Join(got, ", "), strings.Join(want, ", "))
		}
	}
	for op := range documented {
		if !slices.Contains(Ops, op) {
			t.Errorf("the guide lists op %s, which is not built in", op)
		}
	}
}
