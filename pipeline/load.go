package pipeline

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// FileName is a pipeline's declaration in its folder of the model
// repository: DIR/{pipeline}/pipeline.yaml.
const FileName = "pipeline.yaml"

// Loaded is a pipeline of the repository: its plan, or why it cannot be
// served.
type Loaded struct {
	Name string
	Plan *Plan
	Err  error
}

// Load reads every pipeline of the model repository in dir, each checked
// against the repository's models, sorted by name. A pipeline that
// cannot be served is returned with the reason, as a refused model is.
func Load(dir string, models Models) ([]*Loaded, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read model repository: %w", err)
	}
	var out []*Loaded
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		folder := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(filepath.Join(folder, FileName))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		l := &Loaded{Name: e.Name()}
		if err != nil {
			l.Err = fmt.Errorf("pipeline %s: %w", l.Name, err)
		} else if spec, err := Parse(b); err != nil {
			l.Err = fmt.Errorf("pipeline %s: %w", l.Name, err)
		} else if l.Plan, err = Check(spec, models, folder); err != nil {
			l.Err = fmt.Errorf("pipeline %s: %w", l.Name, err)
		}
		out = append(out, l)
	}
	slices.SortFunc(out, func(a, b *Loaded) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out, nil
}
