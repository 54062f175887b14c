package consumer

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// held is the set of job messages a worker holds: fetched and not yet
// acknowledged, handed back or terminated, wherever they are (waiting to
// be batched, waiting for a model instance, running, being recorded). One
// loop tells JetStream they are in progress, so that none is delivered
// again while the worker still has it, however long it waits behind slow
// runs.
type held struct {
	mu   sync.Mutex
	msgs map[*heldMsg]struct{}
	// ran counts the messages among msgs whose jobs have run: they wait
	// only for their results to be stored and recorded.
	ran int
	// freed signals that a message left the set, or that its job ran.
	freed chan struct{}
}

func newHeld() *held { return &held{msgs: map[*heldMsg]struct{}{}, freed: make(chan struct{}, 1)} }

// hold adds m to the set; the message returned leaves it when it is
// acknowledged, handed back or terminated.
func (h *held) hold(m jetstream.Msg) jetstream.Msg {
	hm := &heldMsg{Msg: m, set: h, since: time.Now()}
	h.mu.Lock()
	h.msgs[hm] = struct{}{}
	h.mu.Unlock()
	return hm
}

func (h *held) drop(m *heldMsg) {
	h.mu.Lock()
	if _, ok := h.msgs[m]; ok {
		delete(h.msgs, m)
		if m.ran {
			h.ran--
		}
	}
	h.mu.Unlock()
	h.signal()
}

// markRan notes that the job of m, a message of the set, has run. It
// stays held until settled, but no longer waits for the model.
func (h *held) markRan(m jetstream.Msg) {
	hm, ok := m.(*heldMsg)
	if !ok {
		return
	}
	h.mu.Lock()
	if _, ok := h.msgs[hm]; ok && !hm.ran {
		hm.ran = true
		h.ran++
	}
	h.mu.Unlock()
	h.signal()
}

func (h *held) signal() {
	select {
	case h.freed <- struct{}{}:
	default:
	}
}

// Waiting is how many held messages wait for the model, to be batched or
// run: the ones that count against how many a worker may take.
func (h *held) Waiting() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.msgs) - h.ran
}

// handBackAll hands every held message back to the queue, for delivery
// at once, and returns how many it handed back. Settling one of them
// afterwards fails harmlessly: JetStream has it back already.
func (h *held) handBackAll() int {
	h.mu.Lock()
	msgs := make([]*heldMsg, 0, len(h.msgs))
	for m := range h.msgs {
		msgs = append(msgs, m)
	}
	h.mu.Unlock()
	for _, m := range msgs {
		_ = m.Nak()
	}
	return len(msgs)
}

// heartbeat marks every held message in progress each interval until done
// is closed. A message held longer than maxHold is no longer kept alive,
// so that one a bug left unsettled is delivered again rather than never.
func (h *held) heartbeat(interval, maxHold time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var batch []*heldMsg
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		h.mu.Lock()
		batch = batch[:0]
		for m := range h.msgs {
			batch = append(batch, m)
		}
		h.mu.Unlock()
		now := time.Now()
		for _, m := range batch {
			if now.Sub(m.since) < maxHold {
				_ = m.Msg.InProgress()
			}
		}
	}
}

// heldMsg is a held message: its final calls take it out of the set.
type heldMsg struct {
	jetstream.Msg
	set   *held
	since time.Time
	ran   bool // guarded by set.mu
}

func (m *heldMsg) Ack() error {
	m.set.drop(m)
	return m.Msg.Ack()
}

func (m *heldMsg) DoubleAck(ctx context.Context) error {
	m.set.drop(m)
	return m.Msg.DoubleAck(ctx)
}

func (m *heldMsg) Nak() error {
	m.set.drop(m)
	return m.Msg.Nak()
}

func (m *heldMsg) NakWithDelay(d time.Duration) error {
	m.set.drop(m)
	return m.Msg.NakWithDelay(d)
}

func (m *heldMsg) Term() error {
	m.set.drop(m)
	return m.Msg.Term()
}

func (m *heldMsg) TermWithReason(reason string) error {
	m.set.drop(m)
	return m.Msg.TermWithReason(reason)
}
