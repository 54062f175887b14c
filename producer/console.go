package producer

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/inferq/inferq/console"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
)

// Live is the console's live figures; *console.Sampler is one.
type Live interface {
	Figures(allowed func(model string) bool) map[string][]console.Point
	Recent(model, status string) []jobs.Announcement
	Subscribe() (<-chan struct{}, func())
}

// RecentBatches lists batch records; *jobs.Batches is one.
type RecentBatches interface {
	Recent(ctx context.Context, n int, keep func(model string) bool) ([]*record.BatchRecord, error)
}

// consoleFigures streams the console's figures of the models the token
// may use, as server-sent "figures" events: every sample's history on
// connecting, then each new sample's last point. One sampler serves every
// open console.
func (s *Server) consoleFigures(w http.ResponseWriter, r *http.Request) error {
	if s.opts.Live == nil {
		return errorf(http.StatusNotFound, "the console's figures are not served here")
	}
	allowed := func(m string) bool { return mayUse(r.Context(), m) }
	updates, stop := s.opts.Live.Subscribe()
	defer stop()
	out, err := startSSE(w)
	if err != nil {
		return err
	}
	send := func(all bool) error {
		figs := s.opts.Live.Figures(allowed)
		if !all {
			for m, h := range figs {
				figs[m] = h[max(0, len(h)-1):]
			}
		}
		b, _ := json.Marshal(map[string]any{"full": all, "models": figs})
		return out.event("", "figures", b)
	}
	if send(true) != nil {
		return nil
	}
	tokens := tokensSince(r)
	tick := time.NewTicker(keepAlive)
	defer tick.Stop()
	for {
		select {
		case <-updates:
			if send(false) != nil {
				return nil
			}
		case <-tick.C:
			if out.comment("waiting") != nil {
				return nil
			}
		case <-tokens:
			// The token may have been dropped or its models changed:
			// the page reconnects, and is let in (and filtered) anew.
			return nil
		case <-r.Context().Done():
			return nil
		case <-s.closing:
			return nil
		}
	}
}

// consoleJobs answers a model's last finished jobs, newest first:
// ?status= filters, ?limit= bounds (default 50).
func (s *Server) consoleJobs(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("model")
	if err := allow(r, name); err != nil {
		return err
	}
	if s.opts.Live == nil {
		return errorf(http.StatusNotFound, "the console's figures are not served here")
	}
	limit := 50
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return errorf(http.StatusBadRequest, "limit=%q: want 1 to 1000", v)
		}
		limit = n
	}
	recent := s.opts.Live.Recent(name, r.URL.Query().Get("status"))
	recs := make([]*record.Record, 0, min(limit, len(recent)))
	for i := range recent[:min(limit, len(recent))] {
		recs = append(recs, recent[i].Record.Public())
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": recs})
	return nil
}

// listBatches answers the newest batches of the models the token may use
// (?model= one of them), newest first, at most 50.
func (s *Server) listBatches(w http.ResponseWriter, r *http.Request) error {
	lister, ok := s.opts.Batches.(RecentBatches)
	if !ok {
		return errorf(http.StatusNotFound, "batch files are not served here")
	}
	only := r.URL.Query().Get("model")
	if only != "" {
		if err := allow(r, only); err != nil {
			return err
		}
	}
	recs, err := lister.Recent(r.Context(), 50, func(m string) bool { return (only == "" || m == only) && mayUse(r.Context(), m) })
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: err.Error()}
	}
	if recs == nil {
		recs = []*record.BatchRecord{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"batches": recs})
	return nil
}
