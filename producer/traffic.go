package producer

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/traffic"
)

// TrafficStore keeps the traffic splits set at run time; *jobs.Traffic
// is one.
type TrafficStore interface {
	Get(ctx context.Context, model string) (*traffic.Stored, error)
	Put(ctx context.Context, model string, s traffic.Split, now time.Time) (*traffic.Stored, error)
	Delete(ctx context.Context, model string) error
	Follow(ctx context.Context, log *slog.Logger, fn func(model string, s *traffic.Stored)) error
}

// splits is what this API process knows of the splits set at run time,
// followed from the store (RunTraffic).
type splits struct {
	traffic.Table
	warned sync.Map // "model/version" of versions with a share found not loaded
}

// RunTraffic follows the traffic splits set at run time, by this or any
// API process, until ctx ends: a change applies to the jobs submitted
// here within moments of its being stored.
func (s *Server) RunTraffic(ctx context.Context) error {
	if s.opts.Traffic == nil {
		return nil
	}
	return s.opts.Traffic.Follow(ctx, s.log, func(model string, st *traffic.Stored) {
		s.splits.Set(model, st)
		s.log.Info("traffic split", "model", model, "split", st)
	})
}

// splitOf is model's traffic split in force: the one set at run time,
// else its config.yaml's; and which ("api", "config", or "" for none).
func (s *Server) splitOf(fam *model.Family) (traffic.Split, string, time.Time) {
	return s.splits.InForce(fam.Name, fam.Config.Split())
}

// route picks the version that answers a job of m sent without a
// version (pinned is false), by the model's traffic split, and the
// shadow versions it also runs on. A version with a share that is not
// loaded (removed from the repository) is taken out of the split, with a
// log line. A pipeline, or a job that pins its version, is left as it
// is.
func (s *Server) route(m *model.Model, pinned bool) (answer *model.Model, routed bool, shadows []int64) {
	if pinned || m.Pipeline != nil {
		return m, false, nil
	}
	fam, err := s.opts.Catalog.Family(m.Name)
	if err != nil {
		return m, false, nil
	}
	split, _, _ := s.splitOf(fam)
	if split.Empty() {
		return m, false, nil
	}
	live := func(v int64) bool { _, err := fam.Lookup(v); return err == nil }
	v, dropped := split.Pick(live, rand.Float64())
	for _, d := range dropped {
		if _, seen := s.splits.warned.LoadOrStore(fmt.Sprintf("%s/%d", m.Name, d), true); !seen {
			s.log.Warn("a version with a share of the traffic is not loaded (removed from the repository?): taken out of the split, its share spread over the others", "model", m.Name, "version", d)
		}
	}
	answer = m
	if v != 0 {
		if am, err := fam.Lookup(v); err == nil {
			answer, routed = am, true
		}
	}
	return answer, routed, split.Shadows(live, answer.Version)
}

// trafficJSON is GET and PUT /v1/models/{model}/traffic's answer.
type trafficJSON struct {
	Model string `json:"model"`
	traffic.Split
	// Source says where the split comes from: "api" (set at run time),
	// "config" (config.yaml), or "" (none: the default version answers
	// every unpinned job).
	Source         string     `json:"source"`
	UpdatedAt      *time.Time `json:"updated_at,omitempty"`
	DefaultVersion string     `json:"default_version"`
	Versions       []string   `json:"versions"`
}

func (s *Server) trafficOf(fam *model.Family) trafficJSON {
	split, source, at := s.splitOf(fam)
	out := trafficJSON{Model: fam.Name, Split: split, Source: source, Versions: []string{}}
	if !at.IsZero() {
		out.UpdatedAt = &at
	}
	if m := fam.Default(); m != nil {
		out.DefaultVersion = m.VersionString()
	}
	for _, m := range fam.Versions {
		out.Versions = append(out.Versions, strconv.FormatInt(m.Version, 10))
	}
	return out
}

// trafficFamily is the model the request names, for its traffic: a
// model the token may use, not a pipeline.
func (s *Server) trafficFamily(r *http.Request) (*model.Family, error) {
	if s.opts.Traffic == nil {
		return nil, errorf(http.StatusNotFound, "traffic splits are not served here")
	}
	m, err := s.lookup(r)
	if err != nil {
		return nil, err
	}
	if m.Pipeline != nil {
		return nil, errorf(http.StatusBadRequest, "%s is a pipeline: it has one version, and its steps' models have their own traffic", m.Name)
	}
	return s.opts.Catalog.Family(m.Name)
}

func (s *Server) getTraffic(w http.ResponseWriter, r *http.Request) error {
	fam, err := s.trafficFamily(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.trafficOf(fam))
	return nil
}

// putTraffic sets a model's split at run time: every API process
// follows it within moments, and it outlives restarts. A rollback is a
// PUT of the old split.
func (s *Server) putTraffic(w http.ResponseWriter, r *http.Request) error {
	fam, err := s.trafficFamily(r)
	if err != nil {
		return err
	}
	var split traffic.Split
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&split); err != nil {
		return errorf(http.StatusBadRequest, `body: %v; give {"traffic": {"2": 90, "3": 10}, "shadow": ["4"]}`, err)
	}
	if err := split.Check(func(v int64) bool { _, err := fam.Lookup(v); return err == nil }); err != nil {
		return errorf(http.StatusBadRequest, "%v (loaded versions: %v)", err, s.trafficOf(fam).Versions)
	}
	ctx := context.WithoutCancel(r.Context())
	st, err := s.opts.Traffic.Put(ctx, fam.Name, split, time.Now())
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "traffic splits are unavailable, nothing changed: " + err.Error()}
	}
	s.splits.Set(fam.Name, st) // here at once; the others follow the store
	s.log.Info("traffic split set", "model", fam.Name, "traffic", split.Traffic, "shadow", split.Shadow)
	writeJSON(w, http.StatusOK, s.trafficOf(fam))
	return nil
}

// deleteTraffic removes the split set at run time: the model's
// config.yaml's applies again (or none).
func (s *Server) deleteTraffic(w http.ResponseWriter, r *http.Request) error {
	fam, err := s.trafficFamily(r)
	if err != nil {
		return err
	}
	if err := s.opts.Traffic.Delete(context.WithoutCancel(r.Context()), fam.Name); err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "traffic splits are unavailable, nothing changed: " + err.Error()}
	}
	s.splits.Set(fam.Name, nil)
	writeJSON(w, http.StatusOK, s.trafficOf(fam))
	return nil
}
