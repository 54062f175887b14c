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
	// freed signals that a message left the set.
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
	delete(h.msgs, m)
	h.mu.Unlock()
	select {
	case h.freed <- struct{}{}:
	default:
	}
}

// Len is how many messages are held.
func (h *held) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.msgs)
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
