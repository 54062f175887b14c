package jobs

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// Watcher tells waiters when a job's record changes, and what it changed
// to. One subscription to the bucket's subjects serves every waiter of the
// process, so a thousand long polls cost one subscription, not a thousand
// consumers.
//
// The record travels in the notification itself: a notification can reach
// a subscriber before the bucket has stored the write, so reading the
// bucket on notice could see the state before it.
type Watcher struct {
	sub     *nats.Subscription
	mu      sync.Mutex
	waiters map[string]map[chan *Record]struct{}
}

const recordSubjectPrefix = "$KV." + RecordBucket + "."

// Watch starts a Watcher on nc. Close it when done.
func Watch(nc *nats.Conn) (*Watcher, error) {
	w := &Watcher{waiters: map[string]map[chan *Record]struct{}{}}
	sub, err := nc.Subscribe(recordSubjectPrefix+"*", w.onUpdate)
	if err != nil {
		return nil, fmt.Errorf("watch job records: %w", err)
	}
	_ = sub.SetPendingLimits(1<<20, 256<<20)
	w.sub = sub
	return w, nil
}

func (w *Watcher) onUpdate(m *nats.Msg) {
	id := strings.TrimPrefix(m.Subject, recordSubjectPrefix)
	w.mu.Lock()
	defer w.mu.Unlock()
	chans := w.waiters[id]
	if len(chans) == 0 || len(m.Data) == 0 {
		return
	}
	var rec Record
	if json.Unmarshal(m.Data, &rec) != nil {
		return
	}
	for ch := range chans {
		// Each waiter holds only the newest record: replace an unread one.
		select {
		case ch <- &rec:
		default:
			select {
			case <-ch:
			default:
			}
			select {
			case ch <- &rec:
			default:
			}
		}
	}
}

// Wait returns a channel that receives job id's record after each change
// from now on (only the newest, if the reader falls behind), and a
// function that stops the watch. Register before reading the record, so
// no change falls between the two.
func (w *Watcher) Wait(id string) (<-chan *Record, func()) {
	ch := make(chan *Record, 1)
	w.mu.Lock()
	if w.waiters[id] == nil {
		w.waiters[id] = map[chan *Record]struct{}{}
	}
	w.waiters[id][ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.waiters[id], ch)
		if len(w.waiters[id]) == 0 {
			delete(w.waiters, id)
		}
		w.mu.Unlock()
	}
}

// Close stops the watcher.
func (w *Watcher) Close() error {
	return w.sub.Unsubscribe()
}
