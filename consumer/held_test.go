package consumer

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// settled is a message whose settling calls do nothing: held only counts
// them, and the NATS side is covered by the end-to-end tests.
type settled struct{ jetstream.Msg }

func (settled) Ack() error                       { return nil }
func (settled) Nak() error                       { return nil }
func (settled) NakWithDelay(time.Duration) error { return nil }
func (settled) Term() error                      { return nil }

// Messages whose jobs have run stop counting as waiting for the model,
// and every way of settling a message takes it out of the count it is
// in, once, however often it is marked or settled.
func TestHeldWaiting(t *testing.T) {
	h := newHeld()
	a, b, c, d := h.hold(settled{}), h.hold(settled{}), h.hold(settled{}), h.hold(settled{})
	steps := []struct {
		what string
		do   func()
		want int
	}{
		{"four held", func() {}, 4},
		{"a ran", func() { h.markRan(a) }, 3},
		{"a marked again", func() { h.markRan(a) }, 3},
		{"a acknowledged", func() { _ = a.Ack() }, 3},
		{"a acknowledged again", func() { _ = a.Ack() }, 3},
		{"a marked after it left", func() { h.markRan(a) }, 3},
		{"b handed back unrun", func() { _ = b.NakWithDelay(time.Second) }, 2},
		{"c ran, then handed back", func() { h.markRan(c); _ = c.Nak() }, 1},
		{"a message never held", func() { h.markRan(settled{}) }, 1},
		{"d terminated", func() { _ = d.Term() }, 0},
	}
	for _, s := range steps {
		s.do()
		if got := h.Waiting(); got != s.want {
			t.Fatalf("after %s: %d waiting, want %d", s.what, got, s.want)
		}
	}
	if len(h.msgs) != 0 || h.ran != 0 {
		t.Fatalf("all settled, yet %d held and %d counted as ran", len(h.msgs), h.ran)
	}
}
