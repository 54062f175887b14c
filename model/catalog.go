package model

import (
	"maps"
	"slices"
	"sync/atomic"
)

// Catalog is the model repository as it stands now. Scan reads the
// directory again; Publish makes a scan the one that Lookup and the rest
// answer from. It is safe for concurrent use.
type Catalog struct {
	dir string
	rt  Runtime
	cur atomic.Pointer[Repository]
}

// NewCatalog loads dir and returns a catalog publishing it.
func NewCatalog(dir string, rt Runtime) (*Catalog, error) {
	r, err := Load(dir, rt)
	if err != nil {
		return nil, err
	}
	c := &Catalog{dir: dir, rt: rt}
	c.cur.Store(r)
	return c, nil
}

// Repository is the published repository.
func (c *Catalog) Repository() *Repository { return c.cur.Load() }

// Scan reads the directory again, reusing every family whose files have
// not changed (same pointer, models not read again), and returns the new
// repository and the names of the families added, changed or removed. It
// does not publish it.
func (c *Catalog) Scan() (*Repository, []string, error) {
	old := c.cur.Load()
	r, err := load(c.dir, c.rt, old)
	if err != nil {
		return nil, nil, err
	}
	var changed []string
	for name, f := range r.families {
		if old.families[name] != f {
			changed = append(changed, name)
		}
	}
	for name := range old.families {
		if _, ok := r.families[name]; !ok {
			changed = append(changed, name)
		}
	}
	slices.Sort(changed)
	return r, changed, nil
}

// Publish makes r the repository the catalog answers from.
func (c *Catalog) Publish(r *Repository) { c.cur.Store(r) }

// Lookup is Repository().Lookup.
func (c *Catalog) Lookup(name string, version int64) (*Model, error) {
	return c.cur.Load().Lookup(name, version)
}

// Family is Repository().Family.
func (c *Catalog) Family(name string) (*Family, error) { return c.cur.Load().Family(name) }

// Families is Repository().Families.
func (c *Catalog) Families() []*Family { return c.cur.Load().Families() }

// Names are the names of the published models, sorted.
func (c *Catalog) Names() []string {
	return slices.Sorted(maps.Keys(c.cur.Load().families))
}
