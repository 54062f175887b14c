package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// Watcher tells waiters when a job's record changes, and what it changed
// to. One watch of the bucket serves every waiter of the process, so a
// thousand long polls cost one consumer, not a thousand.
//
// It watches through JetStream (an ordered consumer of the bucket), not a
// core subscription to the bucket's subjects: a core subscriber sees a
// write when it is published, before the bucket has stored it, and even
// when the bucket refuses it (a compare-and-set that lost), so a reader
// told "succeeded" could read "running" back, or be told of a change that
// never happened.
type Watcher struct {
	kw   jetstream.KeyWatcher
	done chan struct{}

	mu      sync.Mutex
	waiters map[string]map[chan *Record]struct{}
}

// Watch starts a Watcher of every record change from now on. Close it
// when done.
func (r *Records) Watch(ctx context.Context) (*Watcher, error) {
	kw, err := r.kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("watch job records: %w", err)
	}
	w := &Watcher{kw: kw, done: make(chan struct{}), waiters: map[string]map[chan *Record]struct{}{}}
	go func() {
		defer close(w.done)
		for e := range kw.Updates() {
			if e != nil {
				w.onUpdate(e.Key(), e.Value())
			}
		}
	}()
	return w, nil
}

func (w *Watcher) onUpdate(id string, value []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	chans := w.waiters[id]
	if len(chans) == 0 || len(value) == 0 {
		return
	}
	var rec Record
	if json.Unmarshal(value, &rec) != nil {
		return
	}
	for ch := range chans {
		// A waiter that is full loses its oldest record for the newest.
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
// from now on (the newest 8, if the reader falls behind), and a
// function that stops the watch. Register before reading the record, so
// no change falls between the two.
func (w *Watcher) Wait(id string) (<-chan *Record, func()) {
	// Room for the few states of a job, so that a reader slower than the
	// changes still sees each that the watch delivered; one further
	// behind loses the oldest. (The bucket keeps a job's newest state
	// alone, so a state replaced within milliseconds may not be
	// delivered at all.)
	ch := make(chan *Record, 8)
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

// Close stops the watcher and waits for it to finish.
func (w *Watcher) Close() error {
	err := w.kw.Stop()
	<-w.done
	return err
}
