package jobs

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/inferq/inferq/internal/retry"
	"github.com/inferq/inferq/record"
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
//
// The watch runs only while someone waits, and for IdleWatch after: every
// job's record changes three times, and a watch of every change cost each
// API process three deliveries a job (5-11 % of the CPU of a small job)
// when nobody waits, as with jobs submitted and fetched later.
type Watcher struct {
	kv   jetstream.KeyValue
	idle time.Duration // IdleWatch; shorter in tests
	log  *slog.Logger

	// starting serialises starts of the watch, which talk to NATS.
	starting sync.Mutex

	mu      sync.Mutex
	kw      jetstream.KeyWatcher // nil while no watch runs
	ended   chan struct{}        // closed when the running watch's loop ends
	waiters map[string]map[chan *record.Record]struct{}
	idler   *time.Timer // stops the watch once nobody has waited for idle
	// retrying: a goroutine tries to start the watch, which could not.
	retrying bool
	closed   bool
}

// IdleWatch is how long a Watcher keeps watching after its last waiter
// left, so that a steady trickle of waiters does not start a watch each.
const IdleWatch = time.Minute

// Watch returns a Watcher of the bucket's record changes, which starts
// watching when the first waiter comes (see Wait) and reports to log a
// watch that cannot start (nil: nowhere). Close it when done.
func (r *Records) Watch(log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{kv: r.kv, idle: IdleWatch, log: log, waiters: map[string]map[chan *record.Record]struct{}{}}
}

// start makes sure the watch runs while anyone waits. It returns once it
// runs, from when every change stored is delivered; or, if it cannot
// start (NATS away), after the first try, leaving the next to a goroutine
// that tries until it works and then sends each waiter its record as it
// stands, for the changes the watch could not see.
func (w *Watcher) start() {
	if w.isRetrying() || w.tryStart() {
		return
	}
	w.mu.Lock()
	if w.retrying {
		w.mu.Unlock()
		return
	}
	w.retrying = true
	w.mu.Unlock()
	go func() {
		defer func() {
			w.mu.Lock()
			w.retrying = false
			w.mu.Unlock()
		}()
		wait := retry.New(100*time.Millisecond, 5*time.Second)
		for wait.Wait(context.Background()) {
			if w.tryStart() {
				w.catchUp()
				return
			}
		}
	}()
}

// isRetrying reports whether a goroutine is trying to start the watch
// (and will catch up every waiter once it does).
func (w *Watcher) isRetrying() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.retrying
}

// tryStart starts the watch if it is needed and not running, and reports
// false if it could not.
func (w *Watcher) tryStart() bool {
	w.starting.Lock()
	defer w.starting.Unlock()
	w.mu.Lock()
	needed := !w.closed && w.kw == nil && len(w.waiters) > 0
	w.mu.Unlock()
	if !needed {
		return true
	}
	// The watch lives as long as its context: cancelled, it stops.
	// (Setting it up is bounded by JetStream's own request timeout.)
	ctx, cancel := context.WithCancel(context.Background())
	kw, err := w.kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		cancel()
		w.log.Warn("cannot watch job records; waiters hear of changes once it can", "err", err)
		return false
	}
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		defer cancel()
		for e := range kw.Updates() {
			if e != nil {
				w.onUpdate(e.Key(), e.Value())
			}
		}
	}()
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		_ = kw.Stop()
		<-ended
		return true
	}
	w.kw, w.ended = kw, ended
	w.mu.Unlock()
	return true
}

// catchUp sends each waiter its record as it stands, after a watch that
// started late.
func (w *Watcher) catchUp() {
	w.mu.Lock()
	ids := make([]string, 0, len(w.waiters))
	for id := range w.waiters {
		ids = append(ids, id)
	}
	w.mu.Unlock()
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		e, err := w.kv.Get(ctx, id)
		cancel()
		if err == nil {
			w.onUpdate(id, e.Value())
		}
	}
}

// stopIdle stops the watch if nobody has waited since the idle timer was
// set.
func (w *Watcher) stopIdle() {
	w.mu.Lock()
	if len(w.waiters) > 0 || w.kw == nil {
		w.mu.Unlock()
		return
	}
	kw, ended := w.kw, w.ended
	w.kw, w.idler = nil, nil
	w.mu.Unlock()
	_ = kw.Stop()
	<-ended
}

func (w *Watcher) onUpdate(id string, value []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	chans := w.waiters[id]
	if len(chans) == 0 || len(value) == 0 {
		return
	}
	var rec record.Record
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
// no change falls between the two: Wait returns once the bucket's watch
// runs.
func (w *Watcher) Wait(id string) (<-chan *record.Record, func()) {
	// Room for the few states of a job, so that a reader slower than the
	// changes still sees each that the watch delivered; one further
	// behind loses the oldest. (The bucket keeps a job's newest state
	// alone, so a state replaced within milliseconds may not be
	// delivered at all.)
	ch := make(chan *record.Record, 8)
	w.mu.Lock()
	if w.waiters[id] == nil {
		w.waiters[id] = map[chan *record.Record]struct{}{}
	}
	w.waiters[id][ch] = struct{}{}
	if w.idler != nil {
		w.idler.Stop()
		w.idler = nil
	}
	running := w.kw != nil
	w.mu.Unlock()
	if !running {
		w.start()
	}
	return ch, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		delete(w.waiters[id], ch)
		if len(w.waiters[id]) == 0 {
			delete(w.waiters, id)
		}
		if len(w.waiters) == 0 && w.kw != nil && w.idler == nil && !w.closed {
			w.idler = time.AfterFunc(w.idle, w.stopIdle)
		}
	}
}

// Close stops the watcher and waits for it to finish.
func (w *Watcher) Close() error {
	w.mu.Lock()
	w.closed = true
	if w.idler != nil {
		w.idler.Stop()
	}
	kw, ended := w.kw, w.ended
	w.kw = nil
	w.mu.Unlock()
	if kw == nil {
		return nil
	}
	err := kw.Stop()
	<-ended
	return err
}
