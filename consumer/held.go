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
	// waiting is the sum of the weights of msgs: the jobs among them that
	// have not run (those that have wait only for their results to be
	// stored and recorded).
	waiting int
	// freed signals that a message left the set, or that its job ran.
	freed chan struct{}
}

func newHeld() *held { return &held{msgs: map[*heldMsg]struct{}{}, freed: make(chan struct{}, 1)} }

// hold adds m to the set; the message returned leaves it when it is
// acknowledged, handed back or terminated.
func (h *held) hold(m jetstream.Msg) jetstream.Msg {
	hm := &heldMsg{Msg: m, set: h, since: time.Now(), weight: 1}
	h.mu.Lock()
	h.msgs[hm] = struct{}{}
	h.waiting++
	h.mu.Unlock()
	return hm
}

func (h *held) drop(m *heldMsg) {
	h.mu.Lock()
	if _, ok := h.msgs[m]; ok {
		delete(h.msgs, m)
		h.waiting -= m.weight
	}
	h.mu.Unlock()
	h.signal()
}

// weigh says that m, a message of the set, carries n jobs (the runs of
// a shadow pack), each to be marked ran on its own.
func (h *held) weigh(m jetstream.Msg, n int) {
	hm, ok := m.(*heldMsg)
	if !ok {
		return
	}
	h.mu.Lock()
	if _, ok := h.msgs[hm]; ok {
		h.waiting += n - hm.weight
		hm.weight = n
	}
	h.mu.Unlock()
}

// markRan notes that the job of m, a message of the set (or a run of a
// shadow pack of the set), has run. It stays held until settled, but no
// longer waits for the model.
func (h *held) markRan(m jetstream.Msg) {
	n := -1 // all of the message's weight
	if r, ok := m.(*packedRun); ok {
		if r.ran.Swap(true) {
			return
		}
		m, n = r.Msg, 1
	}
	hm, ok := m.(*heldMsg)
	if !ok {
		return
	}
	h.mu.Lock()
	if _, ok := h.msgs[hm]; ok && hm.weight > 0 {
		if n < 0 || n > hm.weight {
			n = hm.weight
		}
		hm.weight -= n
		h.waiting -= n
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
	return h.waiting
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
	// weight is how many of its jobs have not run: 1 or 0, or for a
	// shadow pack its runs (see weigh). Guarded by set.mu.
	weight int
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
