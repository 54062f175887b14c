package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
)

// ResultStream follows a model's finished jobs; *jobs.Queue is one.
type ResultStream interface {
	FollowResults(ctx context.Context, model string, after uint64, fromStart bool, fn func(seq uint64, data []byte) error) error
	ResultsPosition(ctx context.Context) (uint64, error)
	// EventKey is the secret event ids are made with (see eventID).
	EventKey(ctx context.Context) ([]byte, error)
}

// keepAlive is how often an idle event stream sends a comment, so that
// proxies and clients do not take it for dead.
const keepAlive = 15 * time.Second

// sse writes server-sent events.
type sse struct {
	w http.ResponseWriter
	f http.Flusher
}

func startSSE(w http.ResponseWriter) (*sse, error) {
	f, ok := w.(http.Flusher)
	if !ok {
		return nil, errors.New("streaming is not supported by this connection")
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	f.Flush()
	return &sse{w: w, f: f}, nil
}

// event writes one event; id and name may be empty. data must be one line
// (JSON is).
func (s *sse) event(id, name string, data []byte) error {
	var b []byte
	if id != "" {
		b = append(append(append(b, "id: "...), id...), '\n')
	}
	if name != "" {
		b = append(append(append(b, "event: "...), name...), '\n')
	}
	b = append(append(append(b, "data: "...), data...), "\n\n"...)
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	s.f.Flush()
	return nil
}

func (s *sse) comment(text string) error {
	if _, err := fmt.Fprintf(s.w, ": %s\n\n", text); err != nil {
		return err
	}
	s.f.Flush()
	return nil
}

// cancel cancels a job that has not started.
func (s *Server) cancel(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		return err
	}
	if _, err := s.record(r, id); err != nil {
		return err
	}
	rec, err := s.opts.Queue.End(r.Context(), id, record.Cancel, "cancelled by request")
	if errors.Is(err, record.ErrConflict) {
		rec.Error = fmt.Sprintf("job %s is %s; only a queued job can be cancelled", id, rec.Status)
		writeJSON(w, http.StatusConflict, rec.Public())
		return nil
	}
	if errors.Is(err, jobs.ErrNotAnnounced) {
		s.log.Warn("announcing a cancelled job", "job", id, "err", err)
	} else if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "job records are unavailable: " + err.Error()}
	}
	writeJSON(w, http.StatusOK, rec.Public())
	return nil
}

// jobEvents streams a job's record at each change of state, as server-sent
// events, and ends after the final one.
func (s *Server) jobEvents(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := checkID(id); err != nil {
		return err
	}
	changed, stop := s.opts.Watcher.Wait(id)
	defer stop()
	rec, err := s.record(r, id)
	if err != nil {
		return err
	}
	out, err := startSSE(w)
	if err != nil {
		return err
	}
	send := func(rec *record.Record) error {
		b, _ := json.Marshal(rec.Public())
		return out.event("", string(rec.Status), b)
	}
	if err := send(rec); err != nil {
		return nil
	}
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	last := rec.Status
	tokens := tokensSince(r)
	for !rec.Status.Final() {
		select {
		case <-tokens:
			if s.revoked(r, rec.Model) {
				return nil
			}
			tokens = s.tokensChanged()
		case rec = <-changed:
			rec = s.expire(rec)
			if rec.Status == last {
				continue
			}
			last = rec.Status
			if send(rec) != nil {
				return nil
			}
		case <-tick.C:
			if out.comment("waiting") != nil {
				return nil
			}
		case <-r.Context().Done():
			return nil
		case <-s.closing:
			return nil
		}
	}
	return nil
}

// modelResults streams a model's finished jobs as server-sent "result"
// events, each the record with the V2 response inline (when it is small
// enough), its id the position in the results stream. A client that
// reconnects with Last-Event-ID resumes right after it; ?from=start
// replays what the stream retains.
func (s *Server) modelResults(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("model")
	if err := allow(r, name); err != nil {
		return err
	}
	if _, err := s.opts.Catalog.Family(name); err != nil {
		return errorf(http.StatusNotFound, "%v", err)
	}
	if s.opts.Stream == nil {
		return errorf(http.StatusNotFound, "result streams are not served here")
	}
	key, err := s.opts.Stream.EventKey(r.Context())
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: err.Error()}
	}
	var after uint64
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		n, ok := parseEventID(key, name, v)
		if !ok {
			return errorf(http.StatusBadRequest, "Last-Event-ID %q is not an event id of this stream: reconnect without it (from now), or with ?from=start (what the stream keeps)", v)
		}
		after = n
	}
	fromStart := false
	switch v := r.URL.Query().Get("from"); v {
	case "", "now":
	case "start":
		fromStart = true
	default:
		return errorf(http.StatusBadRequest, `from=%q: want "start" or "now"`, v)
	}
	// "From now" is fixed before the client is told the stream is open,
	// so that nothing announced after that is missed.
	pos, err := s.opts.Stream.ResultsPosition(r.Context())
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: err.Error()}
	}
	switch {
	case after > pos:
		// An id of this deployment's key past the stream's end: the
		// stream was replaced (its positions start again). Said without
		// the position, which would tell the stream's volume.
		return errorf(http.StatusBadRequest, "Last-Event-ID %q is past the last event of this stream: reconnect without it, or with ?from=start", r.Header.Get("Last-Event-ID"))
	case after == 0 && !fromStart:
		after = pos
		if after == 0 {
			fromStart = true // an empty stream: from its start is from now
		}
	}
	out, err := startSSE(w)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	events := make(chan error, 1)
	var mu sync.Mutex // serialises events with keep-alives
	go func() {
		events <- s.opts.Stream.FollowResults(ctx, name, after, fromStart, func(seq uint64, data []byte) error {
			mu.Lock()
			defer mu.Unlock()
			return out.event(eventID(key, name, seq), "result", data)
		})
	}()
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	tokens := tokensSince(r)
	for {
		select {
		case <-tokens:
			if s.revoked(r, name) {
				cancel()
				<-events
				return nil
			}
			tokens = s.tokensChanged()
		case err := <-events:
			if err != nil && ctx.Err() == nil {
				s.log.Warn("result stream ended", "model", name, "err", err)
			}
			return nil
		case <-tick.C:
			mu.Lock()
			err := out.comment("waiting")
			mu.Unlock()
			if err != nil {
				cancel()
			}
		case <-ctx.Done():
			<-events
			return nil
		}
	}
}
