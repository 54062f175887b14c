package webhook

import "sync"

// hosts shares the calls in flight among receiving hosts, so that one
// slow receiver holds no more than its share: at most perHost calls to a
// host and total calls in all, each host's other deliveries waiting in
// its own queue of at most queue, taken in turn across hosts as calls
// end. It holds no NATS or HTTP: the dispatcher starts what it returns.
// It is safe for concurrent use.
type hosts[T any] struct {
	perHost, total, queue int

	mu       sync.Mutex
	inflight int
	byHost   map[string]*host[T]
	// turn is the hosts with deliveries waiting, in the order they get a
	// free call.
	turn []string
}

type host[T any] struct {
	inflight int
	waiting  []T
}

// job is a delivery hosts says to start, with its host.
type job[T any] struct {
	host string
	v    T
}

func newHosts[T any](perHost, total, queue int) *hosts[T] {
	return &hosts[T]{perHost: perHost, total: total, queue: queue, byHost: map[string]*host[T]{}}
}

// add takes a delivery to name. It reports start when the delivery may
// be called now (the caller calls done when the call ends), or queued
// when it waits its turn; neither when the host's queue is full: the
// caller hands it back to the queue for later.
func (h *hosts[T]) add(name string, v T) (start, queued bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.byHost[name]
	if s == nil {
		s = &host[T]{}
		h.byHost[name] = s
	}
	if s.inflight < h.perHost && h.inflight < h.total && len(s.waiting) == 0 {
		s.inflight++
		h.inflight++
		return true, false
	}
	if len(s.waiting) >= h.queue {
		h.forget(name, s)
		return false, false
	}
	if len(s.waiting) == 0 {
		h.turn = append(h.turn, name)
	}
	s.waiting = append(s.waiting, v)
	return false, true
}

// done records that a call to name ended, and returns the deliveries to
// start now, the freed calls given to hosts in turn.
func (h *hosts[T]) done(name string) []job[T] {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.byHost[name]; s != nil {
		s.inflight--
		h.inflight--
		h.forget(name, s)
	}
	var out []job[T]
	for h.inflight < h.total {
		j, ok := h.next()
		if !ok {
			break
		}
		out = append(out, j)
	}
	return out
}

// next takes the first waiting delivery of the first host in turn that
// has a call free, and moves that host to the back of the turn.
func (h *hosts[T]) next() (job[T], bool) {
	for i, name := range h.turn {
		s := h.byHost[name]
		if s.inflight >= h.perHost {
			continue
		}
		v := s.waiting[0]
		s.waiting = s.waiting[1:]
		s.inflight++
		h.inflight++
		h.turn = append(h.turn[:i], h.turn[i+1:]...)
		if len(s.waiting) > 0 {
			h.turn = append(h.turn, name)
		}
		return job[T]{name, v}, true
	}
	return job[T]{}, false
}

// forget drops the state of a host with nothing in flight or waiting.
func (h *hosts[T]) forget(name string, s *host[T]) {
	if s.inflight == 0 && len(s.waiting) == 0 {
		delete(h.byHost, name)
	}
}

// held is how many deliveries are in flight or waiting.
func (h *hosts[T]) held() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := h.inflight
	for _, s := range h.byHost {
		n += len(s.waiting)
	}
	return n
}

// waiting returns the deliveries waiting, for the dispatcher to report
// them in progress; with take, it also removes them (at shutdown).
func (h *hosts[T]) waiting(take bool) []T {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []T
	for name, s := range h.byHost {
		out = append(out, s.waiting...)
		if take {
			s.waiting = nil
			h.forget(name, s)
		}
	}
	if take {
		h.turn = nil
	}
	return out
}
