// Package batching forms dynamic batches and splits their results: when a
// batch is full, when it has waited long enough, how requests are grouped
// so that each batch has one shape, and how stacked tensors are cut back
// into each request's rows. It is plain logic on plain data: no NATS, no
// ONNX Runtime, and a clock handed in so tests never sleep.
package batching

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Reason says why a batch closed; it labels the batches_total metric.
type Reason string

// Reasons a batch closes.
const (
	// ReasonMaxSize: the batch reached the max batch size, or the next
	// request would not fit.
	ReasonMaxSize Reason = "max_size"
	// ReasonPreferred: the batch is at a preferred size and no more
	// requests are at hand.
	ReasonPreferred Reason = "preferred_size"
	// ReasonDelay: the batch's first request has waited the max queue
	// delay.
	ReasonDelay Reason = "delay"
	// ReasonGroups: too many groups were open, and this, the oldest, was
	// closed to make room.
	ReasonGroups Reason = "groups"
	// ReasonFlush: the caller flushed everything, as at shutdown.
	ReasonFlush Reason = "flush"
)

// Policy says when batches close. MaxBatchSize must be positive.
type Policy struct {
	// MaxBatchSize is the most rows in one batch.
	MaxBatchSize int
	// MaxQueueDelay is the longest a batch's first request waits for
	// others; 0 closes a batch as soon as no more requests are at hand.
	MaxQueueDelay time.Duration
	// PreferredBatchSizes close a batch early, when no more requests are
	// at hand, at one of these sizes.
	PreferredBatchSizes []int
	// MaxOpenGroups bounds the groups (distinct keys) open at once; adding
	// to a new group beyond it closes the oldest. Default 8.
	MaxOpenGroups int
}

// Batch is a closed batch of items that share a key.
type Batch[T any] struct {
	Key    string
	Items  []T
	Rows   int
	Reason Reason
	// Opened is when the batch's first item arrived.
	Opened time.Time
}

type group[T any] struct {
	key    string
	items  []T
	rows   int
	opened time.Time
}

// Batcher gathers items into batches, one open batch per key. It is not
// safe for concurrent use: one fetch loop owns it.
type Batcher[T any] struct {
	policy Policy
	now    func() time.Time
	open   []*group[T] // oldest first
	ready  []Batch[T]
}

// New returns a Batcher. now is the clock; nil means time.Now.
func New[T any](p Policy, now func() time.Time) (*Batcher[T], error) {
	if p.MaxBatchSize <= 0 {
		return nil, errors.New("batching: MaxBatchSize must be positive, or no batch would ever close by size")
	}
	if p.MaxQueueDelay < 0 {
		return nil, fmt.Errorf("batching: MaxQueueDelay %s is negative", p.MaxQueueDelay)
	}
	for _, s := range p.PreferredBatchSizes {
		if s <= 0 || s > p.MaxBatchSize {
			return nil, fmt.Errorf("batching: preferred batch size %d is outside 1..%d", s, p.MaxBatchSize)
		}
	}
	if p.MaxOpenGroups <= 0 {
		p.MaxOpenGroups = 8
	}
	p.PreferredBatchSizes = slices.Clone(p.PreferredBatchSizes)
	if now == nil {
		now = time.Now
	}
	return &Batcher[T]{policy: p, now: now}, nil
}

// Add adds an item of rows rows under key and reports whether a batch is
// ready to take with Next. An item larger than MaxBatchSize forms a batch
// of its own.
func (b *Batcher[T]) Add(key string, item T, rows int) bool {
	now := b.now()
	i := b.find(key)
	if i >= 0 && b.open[i].rows+rows > b.policy.MaxBatchSize {
		b.close(i, ReasonMaxSize)
		i = -1
	}
	if i < 0 {
		if len(b.open) >= b.policy.MaxOpenGroups {
			b.close(0, ReasonGroups)
		}
		b.open = append(b.open, &group[T]{key: key, opened: now})
		i = len(b.open) - 1
	}
	g := b.open[i]
	g.items = append(g.items, item)
	g.rows += rows
	if g.rows >= b.policy.MaxBatchSize {
		b.close(i, ReasonMaxSize)
	}
	return len(b.ready) > 0
}

func (b *Batcher[T]) find(key string) int {
	for i, g := range b.open {
		if g.key == key {
			return i
		}
	}
	return -1
}

func (b *Batcher[T]) close(i int, r Reason) {
	g := b.open[i]
	b.open = slices.Delete(b.open, i, i+1)
	b.ready = append(b.ready, Batch[T]{Key: g.key, Items: g.items, Rows: g.rows, Reason: r, Opened: g.opened})
}

// Next returns a batch that should run now, if any: one already full,
// then one whose first item has waited MaxQueueDelay, then, when idle (no
// more items are at hand to add), one at a preferred size, or any open
// batch if MaxQueueDelay is 0.
func (b *Batcher[T]) Next(idle bool) (Batch[T], bool) {
	if len(b.ready) == 0 && (idle || b.policy.MaxQueueDelay > 0) {
		now := b.now()
		for i, g := range b.open {
			if !now.Before(g.opened.Add(b.policy.MaxQueueDelay)) {
				b.close(i, ReasonDelay)
				break
			}
		}
	}
	if len(b.ready) == 0 && idle {
		for i, g := range b.open {
			if slices.Contains(b.policy.PreferredBatchSizes, g.rows) {
				b.close(i, ReasonPreferred)
				break
			}
		}
	}
	return b.Full()
}

// Full returns a batch that is full (or was closed to bound the open
// groups), if any, and leaves the others open even past their delay. A
// caller whose model instances are all busy takes batches with Full, so
// that a batch whose delay has passed keeps filling until an instance is
// free to run it, as Triton's dynamic batcher does, instead of closing
// part full only to wait for one. Closing it at its delay would not run
// it any sooner, and under a steady load it locks batch sizes in: each
// run frees room for as many jobs as it held, they arrive together, and
// their batch closes at its delay holding just those.
func (b *Batcher[T]) Full() (Batch[T], bool) {
	if len(b.ready) == 0 {
		return Batch[T]{}, false
	}
	next := b.ready[0]
	b.ready = slices.Delete(b.ready, 0, 1)
	return next, true
}

// UntilNext is how long until an open batch reaches its delay: 0 when a
// batch is ready now, and false when nothing is open.
func (b *Batcher[T]) UntilNext() (time.Duration, bool) {
	if len(b.ready) > 0 {
		return 0, true
	}
	if len(b.open) == 0 {
		return 0, false
	}
	// The oldest group was opened first, so it is due first.
	return max(0, b.open[0].opened.Add(b.policy.MaxQueueDelay).Sub(b.now())), true
}

// Pending counts the items not yet taken.
func (b *Batcher[T]) Pending() int {
	n := 0
	for _, g := range b.open {
		n += len(g.items)
	}
	for _, r := range b.ready {
		n += len(r.Items)
	}
	return n
}

// Flush closes every open batch and returns all batches not yet taken.
func (b *Batcher[T]) Flush() []Batch[T] {
	for len(b.open) > 0 {
		b.close(0, ReasonFlush)
	}
	out := b.ready
	b.ready = nil
	return out
}
