package producer

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/oklog/ulid/v2"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/record"
)

// DeadLetters keeps the jobs that failed for an operator to inspect and
// replay; *jobs.Queue is one.
type DeadLetters interface {
	DeadLetters(ctx context.Context, model string, after uint64, limit int) ([]record.DeadLetter, error)
	Replay(ctx context.Context, model, id, newID string) (*record.Record, error)
}

// Bounds of one page of dead letters.
const (
	defaultDeadLetterPage = 100
	maxDeadLetterPage     = 1000
)

// listDeadLetters answers a page of a model's failed jobs, oldest first;
// ?after= is the last seq of the previous page.
func (s *Server) listDeadLetters(w http.ResponseWriter, r *http.Request) error {
	name, err := s.deadLetterModel(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			return errorf(http.StatusBadRequest, "after=%q: want the seq of the last dead letter seen (a number)", v)
		}
	}
	limit := defaultDeadLetterPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > maxDeadLetterPage {
			return errorf(http.StatusBadRequest, "limit=%q: want a number from 1 to %d", v, maxDeadLetterPage)
		}
		limit = n
	}
	list, err := s.opts.DeadLetters.DeadLetters(r.Context(), name, after, limit)
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "dead letters are unavailable: " + err.Error()}
	}
	if list == nil {
		list = []record.DeadLetter{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"dead_letters": list})
	return nil
}

// replayDeadLetter queues a failed job's request again as a new job.
func (s *Server) replayDeadLetter(w http.ResponseWriter, r *http.Request) error {
	name, err := s.deadLetterModel(r)
	if err != nil {
		return err
	}
	if _, err := s.opts.Catalog.Family(name); err != nil {
		return errorf(http.StatusNotFound, "%v; a dead letter is replayed only to a model being served", err)
	}
	id := r.PathValue("id")
	if _, err := ulid.ParseStrict(id); err != nil {
		return errorf(http.StatusBadRequest, "%q is not a job id", id)
	}
	rec, err := s.opts.DeadLetters.Replay(r.Context(), name, id, ulid.Make().String())
	switch {
	case errors.Is(err, jobs.ErrNoDeadLetter):
		return errorf(http.StatusNotFound, "%v (it did not fail, was replayed already, or its letter expired)", err)
	case errors.Is(err, jobs.ErrQueueFull):
		return &httpError{code: http.StatusTooManyRequests, retryAfter: 5, msg: "the queue of model " + name + " is full; retry later"}
	case err != nil && rec == nil:
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "could not replay: " + err.Error()}
	case err != nil:
		s.log.Warn("dead letter replayed but not removed", "job", id, "err", err)
	}
	s.metrics.accepted.WithLabelValues(name).Inc()
	w.Header().Set("Location", "/v1/jobs/"+rec.ID)
	writeJSON(w, http.StatusAccepted, rec.Public())
	return nil
}

func (s *Server) deadLetterModel(r *http.Request) (string, error) {
	if s.opts.DeadLetters == nil {
		return "", errorf(http.StatusNotFound, "dead letters are not served here")
	}
	name := r.PathValue("model")
	if !model.ValidName(name) {
		return "", errorf(http.StatusBadRequest, "%q is not a model name", name)
	}
	if err := allow(r, name); err != nil {
		return "", err
	}
	return name, nil
}
