package pipeline

// An operation's parameters, as pipeline.yaml gives them under with:,
// read by kind, each read noted (Params lists them for the op reference)
// and the first error kept.

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/inferq/inferq/tensor"
)

func ptr[T any](v T) *T { return &v }

// params reads an op's parameters, noting the first error.
type params struct {
	op   string
	with map[string]any
	used map[string]bool
	err  error
}

func (p *params) fail(format string, args ...any) {
	if p.err == nil {
		p.err = fmt.Errorf("op %s: "+format, append([]any{p.op}, args...)...)
	}
}

func (p *params) get(name string) (any, bool) {
	p.used[name] = true
	v, ok := p.with[name]
	return v, ok
}

func (p *params) number(name string, def float64) float64 {
	v, ok := p.get(name)
	if !ok {
		return def
	}
	switch n := v.(type) {
	case int:
		return float64(n)
	case float64:
		return n
	}
	p.fail("%s: want a number, got %v", name, v)
	return def
}

func (p *params) integer(name string, def *int64) int64 {
	v, ok := p.get(name)
	if !ok {
		if def == nil {
			p.fail("%s is required", name)
			return 0
		}
		return *def
	}
	if n, ok := v.(int); ok {
		return int64(n)
	}
	p.fail("%s: want a whole number, got %v", name, v)
	return 0
}

func (p *params) ints(name string, def []int64) []int64 {
	v, ok := p.get(name)
	if !ok {
		if def == nil {
			p.fail("%s is required", name)
		}
		return def
	}
	list, ok := v.([]any)
	if !ok {
		p.fail("%s: want a list of whole numbers, got %v", name, v)
		return nil
	}
	out := make([]int64, len(list))
	for i, e := range list {
		n, ok := e.(int)
		if !ok {
			p.fail("%s: want a list of whole numbers, got %v", name, v)
			return nil
		}
		out[i] = int64(n)
	}
	return out
}

func (p *params) floats(name string, def []float64) []float64 {
	v, ok := p.get(name)
	if !ok {
		return def
	}
	list, ok := v.([]any)
	if !ok {
		p.fail("%s: want a list of numbers, got %v", name, v)
		return def
	}
	out := make([]float64, len(list))
	for i, e := range list {
		switch n := e.(type) {
		case int:
			out[i] = float64(n)
		case float64:
			out[i] = n
		default:
			p.fail("%s: want a list of numbers, got %v", name, v)
			return def
		}
	}
	return out
}

func (p *params) text(name, def string) string {
	v, ok := p.get(name)
	if !ok {
		return def
	}
	s, ok := v.(string)
	if !ok {
		p.fail("%s: want text, got %v", name, v)
	}
	return s
}

func (p *params) flag(name string, def bool) bool {
	v, ok := p.get(name)
	if !ok {
		return def
	}
	b, ok := v.(bool)
	if !ok {
		p.fail("%s: want true or false, got %v", name, v)
	}
	return b
}

func (p *params) choice(name string, choices ...string) string {
	s := p.text(name, "")
	if !slices.Contains(choices, s) {
		p.fail("%s: want one of %s, got %q", name, strings.Join(choices, ", "), s)
	}
	return s
}

func (p *params) datatype(name string) tensor.Datatype {
	s := p.text(name, "")
	dt, err := tensor.ParseDatatype(s)
	if err != nil || dt == tensor.Bytes || dt == tensor.FP16 {
		p.fail("%s: want a numeric V2 datatype (BOOL, UINT8 to UINT64, INT8 to INT64, FP32, FP64), got %q", name, s)
	}
	return dt
}

// lines reads a file of the pipeline's folder, one entry a line.
func (p *params) lines(dir, name, file string) []string {
	if file == "" {
		p.fail("%s is required: a file in the pipeline's folder, one entry a line", name)
		return nil
	}
	if filepath.IsAbs(file) || strings.Contains(filepath.ToSlash(file), "..") {
		p.fail("%s %q: name a file inside the pipeline's folder", name, file)
		return nil
	}
	f, err := os.Open(filepath.Join(dir, file))
	if err != nil {
		p.fail("%s: %v", name, err)
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, strings.TrimRight(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		p.fail("%s: read %s: %v", name, file, err)
	}
	return out
}

func (p *params) finish() error {
	if p.err != nil {
		return p.err
	}
	for k := range p.with {
		if !p.used[k] {
			known := sortedKeys(p.used)
			if len(known) == 0 {
				return fmt.Errorf("op %s has no parameter %q (it takes none)", p.op, k)
			}
			return fmt.Errorf("op %s has no parameter %q (parameters: %s)", p.op, k, strings.Join(known, ", "))
		}
	}
	return nil
}
