// Package traffic decides which version of a model answers a job that
// names none: a split of shares by version (a canary at 5 %, a rollout
// in steps, a rollback in one change), and shadow versions that every
// such job also runs on, off the answer's path. It is pure logic; where a
// split is kept and how API processes follow it is the jobs package's
// (INFERQ_TRAFFIC) and the producer's.
package traffic

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Split is a model's traffic: the shares of unpinned jobs by version
// ("2": 90, "3": 10: not necessarily summing to 100), and the versions
// each unpinned job also runs on as a shadow. The zero Split sends every
// unpinned job to the default version, with no shadow.
type Split struct {
	Traffic map[string]int `json:"traffic,omitempty" yaml:"traffic"`
	Shadow  []string       `json:"shadow,omitempty" yaml:"shadow"`
}

// Empty reports whether the split says nothing: the default version for
// all, no shadow.
func (s Split) Empty() bool { return len(s.Traffic) == 0 && len(s.Shadow) == 0 }

// Equal reports whether two splits say the same.
func (s Split) Equal(o Split) bool {
	return maps.Equal(s.Traffic, o.Traffic) && slices.Equal(s.Shadow, o.Shadow)
}

// version parses a version as the split names it.
func version(v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("version %q is not a positive integer", v)
	}
	return n, nil
}

// Check reports whether the split is one to keep: versions are positive
// integers that known says the model has, shares are not negative and
// sum to more than zero, a shadow version is named once and has no share
// of the traffic.
func (s Split) Check(known func(int64) bool) error {
	total := 0
	for v, share := range s.Traffic {
		n, err := version(v)
		if err != nil {
			return fmt.Errorf("traffic: %w", err)
		}
		if !known(n) {
			return fmt.Errorf("traffic: the model has no version %d loaded", n)
		}
		if share < 0 {
			return fmt.Errorf("traffic: version %d has a negative share (%d)", n, share)
		}
		total += share
	}
	if len(s.Traffic) > 0 && total == 0 {
		return errors.New("traffic: the shares sum to 0; give at least one version a share, or no traffic at all for the default version")
	}
	seen := map[int64]bool{}
	for _, v := range s.Shadow {
		n, err := version(v)
		if err != nil {
			return fmt.Errorf("shadow: %w", err)
		}
		if !known(n) {
			return fmt.Errorf("shadow: the model has no version %d loaded", n)
		}
		if seen[n] {
			return fmt.Errorf("shadow: version %d is named twice", n)
		}
		seen[n] = true
		if s.Traffic[v] > 0 {
			return fmt.Errorf("shadow: version %d answers jobs (its share is %d): a version is a shadow or answers, not both", n, s.Traffic[v])
		}
	}
	return nil
}

// Pick returns the version an unpinned job goes to, by the shares of the
// versions live says are loaded, with r uniform in [0, 1): 0 (the default
// version) when the split has no share or none of its versions with a
// share is loaded. dropped are the versions with a share that are not
// loaded: taken out of the split, their share spread over the others.
func (s Split) Pick(live func(int64) bool, r float64) (v int64, dropped []int64) {
	type entry struct {
		v     int64
		share int
	}
	var es []entry
	total := 0
	for k, share := range s.Traffic {
		n, err := version(k)
		if err != nil || share <= 0 {
			continue
		}
		if !live(n) {
			dropped = append(dropped, n)
			continue
		}
		es = append(es, entry{n, share})
		total += share
	}
	slices.Sort(dropped)
	if total == 0 {
		return 0, dropped
	}
	slices.SortFunc(es, func(a, b entry) int { return int(a.v - b.v) })
	x := int(r * float64(total))
	for _, e := range es {
		if x < e.share {
			return e.v, dropped
		}
		x -= e.share
	}
	return es[len(es)-1].v, dropped
}

// Shadows returns the loaded shadow versions other than answering: the
// versions an unpinned job answered by answering also runs on.
func (s Split) Shadows(live func(int64) bool, answering int64) []int64 {
	var out []int64
	for _, k := range s.Shadow {
		if n, err := version(k); err == nil && n != answering && live(n) {
			out = append(out, n)
		}
	}
	return out
}

// Stored is a split as kept at run time: what PUT
// /v1/models/{model}/traffic set, and when.
type Stored struct {
	Split
	UpdatedAt time.Time `json:"updated_at"`
}

// Table is the splits set at run time, by model, as a process follows
// them from where they are kept. It is safe for concurrent use; the zero
// Table is empty.
type Table struct {
	mu     sync.RWMutex
	stored map[string]*Stored
}

// Get returns model's split set at run time; nil when none is.
func (t *Table) Get(model string) *Stored {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.stored[model]
}

// Set records model's split set at run time; nil removes it.
func (t *Table) Set(model string, s *Stored) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s == nil {
		delete(t.stored, model)
		return
	}
	if t.stored == nil {
		t.stored = map[string]*Stored{}
	}
	t.stored[model] = s
}

// InForce is model's split in force: the one set at run time, else
// config (its config.yaml's), and which ("api", "config", or "" when
// both are empty).
func (t *Table) InForce(model string, config Split) (Split, string, time.Time) {
	if st := t.Get(model); st != nil {
		return st.Split, "api", st.UpdatedAt
	}
	if !config.Empty() {
		return config, "config", time.Time{}
	}
	return Split{}, "", time.Time{}
}
