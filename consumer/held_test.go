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
	if len(h.msgs) != 0 || h.waiting != 0 {
		t.Fatalf("all settled, yet %d held and %d settledCount as waiting", len(h.msgs), h.waiting)
	}
}

// settledCount records how a message was settled.
type settledCount struct {
	jetstream.Msg
	acks, naks int
	delay      time.Duration
}

func (c *settledCount) Ack() error { c.acks++; return nil }
func (c *settledCount) Nak() error { c.naks++; return nil }
func (c *settledCount) NakWithDelay(d time.Duration) error {
	c.naks++
	c.delay = d
	return nil
}
func (c *settledCount) Term() error { c.acks++; return nil }

// A shadow pack counts as its runs while they wait for the model, each
// run marked ran on its own, and is settled once, when its last run is:
// acknowledged, or handed back after the longest delay a run asked if
// any was handed back.
func TestShadowPackSettledOnce(t *testing.T) {
	for _, tc := range []struct {
		name       string
		settle     func(runs []*packedRun)
		acks, naks int
		delay      time.Duration
	}{
		{"all done", func(rs []*packedRun) { _ = rs[0].Ack(); _ = rs[1].Term(); _ = rs[2].Ack() }, 1, 0, 0},
		{"settled twice", func(rs []*packedRun) {
			_ = rs[0].Ack()
			_ = rs[0].Ack()
			_ = rs[0].Nak()
			_ = rs[1].Ack()
			_ = rs[2].Ack()
		}, 1, 0, 0},
		{"one handed back", func(rs []*packedRun) {
			_ = rs[0].NakWithDelay(time.Second)
			_ = rs[1].Ack()
			_ = rs[2].NakWithDelay(3 * time.Second)
		}, 0, 1, 3 * time.Second},
		{"two of three", func(rs []*packedRun) { _ = rs[0].Ack(); _ = rs[2].Ack() }, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHeld()
			c := &settledCount{}
			m := h.hold(c)
			h.weigh(m, 3)
			p := &shadowPack{msg: m, left: 3}
			runs := []*packedRun{{Msg: m, pack: p}, {Msg: m, pack: p}, {Msg: m, pack: p}}
			if got := h.Waiting(); got != 3 {
				t.Fatalf("a pack of 3: %d waiting", got)
			}
			h.markRan(runs[0])
			h.markRan(runs[0])
			h.markRan(runs[1])
			if got := h.Waiting(); got != 1 {
				t.Fatalf("two of three runs ran (one marked twice): %d waiting, want 1", got)
			}
			tc.settle(runs)
			if c.acks != tc.acks || c.naks != tc.naks || c.delay != tc.delay {
				t.Fatalf("pack settled with %d acks, %d naks (delay %v); want %d, %d (%v)", c.acks, c.naks, c.delay, tc.acks, tc.naks, tc.delay)
			}
			wantHeld := 1
			if tc.acks+tc.naks > 0 {
				wantHeld = 0
			}
			if len(h.msgs) != wantHeld {
				t.Fatalf("%d messages held, want %d", len(h.msgs), wantHeld)
			}
		})
	}
}
