package producer

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/inferq/inferq/monitor"
)

// MonitoringReader reads the workers' statistics; *jobs.Queue is one.
type MonitoringReader interface {
	ReadMonitoring(ctx context.Context, model string, since time.Time, fn func(data []byte) error) error
}

// windows are the spans GET /v1/models/{model}/monitoring reports.
var windows = []struct {
	name string
	d    time.Duration
}{{"5m", 5 * time.Minute}, {"1h", time.Hour}, {"24h", 24 * time.Hour}}

// baselineKey is where a model version's baseline is kept, beside its
// results.
func baselineKey(model, version string) string {
	return "monitoring/" + model + "/" + version + "/baseline.json"
}

// snapshots reads model's snapshots since since, each passed to keep.
func (s *Server) snapshots(ctx context.Context, model string, since time.Time, keep func(*monitor.Snapshot)) error {
	return s.opts.Monitoring.ReadMonitoring(ctx, model, since, func(data []byte) error {
		var snap monitor.Snapshot
		if json.Unmarshal(data, &snap) == nil {
			keep(&snap)
		}
		return nil
	})
}

// baseline reads a version's baseline, or nil.
func (s *Server) baseline(ctx context.Context, model, version string) *monitor.Snapshot {
	rc, err := s.opts.Objects.Get(ctx, baselineKey(model, version))
	if err != nil {
		return nil
	}
	defer rc.Close()
	var b monitor.Snapshot
	if json.NewDecoder(rc).Decode(&b) != nil {
		return nil
	}
	return &b
}

type versionMonitoring struct {
	Version  string                       `json:"version"`
	Windows  map[string]*monitor.Snapshot `json:"windows"`
	Baseline *monitor.Snapshot            `json:"baseline,omitempty"`
	// Drift compares each window with the baseline.
	Drift map[string][]monitor.Drift `json:"drift,omitempty"`
}

// modelMonitoring answers what a model was asked and answered over the
// last 5 minutes, hour and day, per version, and how each window compares
// with the version's baseline.
func (s *Server) modelMonitoring(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("model")
	if err := allow(r, name); err != nil {
		return err
	}
	if _, err := s.opts.Catalog.Family(name); err != nil {
		return errorf(http.StatusNotFound, "%v", err)
	}
	if s.opts.Monitoring == nil {
		return errorf(http.StatusNotFound, "statistics are not served here")
	}
	now := time.Now().UTC()
	byVersion := map[string]*versionMonitoring{}
	err := s.snapshots(r.Context(), name, now.Add(-24*time.Hour), func(snap *monitor.Snapshot) {
		v := byVersion[snap.Version]
		if v == nil {
			v = &versionMonitoring{Version: snap.Version, Windows: map[string]*monitor.Snapshot{}}
			for _, win := range windows {
				v.Windows[win.name] = monitor.NewSnapshot(name, snap.Version, "", now.Add(-win.d))
			}
			byVersion[snap.Version] = v
		}
		for _, win := range windows {
			if snap.End.After(now.Add(-win.d)) {
				v.Windows[win.name].Merge(snap)
			}
		}
	})
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 5, msg: err.Error()}
	}
	out := []*versionMonitoring{}
	for _, v := range byVersion {
		for _, win := range v.Windows {
			win.End = now
		}
		if v.Baseline = s.baseline(r.Context(), name, v.Version); v.Baseline != nil {
			v.Drift = map[string][]monitor.Drift{}
			for k, win := range v.Windows {
				v.Drift[k] = monitor.Compare(v.Baseline, win)
			}
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *versionMonitoring) int { return compareVersions(a.Version, b.Version) })
	writeJSON(w, http.StatusOK, map[string]any{"model": name, "edges": monitor.Edges, "threshold": monitor.Threshold, "versions": out, "shadow": shadowAgreement(out)})
	return nil
}

// shadowJSON is how a shadow version agreed with a version that answered
// the jobs it shadowed, per window.
type shadowJSON struct {
	Version string                      `json:"version"`
	Against string                      `json:"against"`
	Windows map[string]agreementSummary `json:"windows"`
}

// agreementSummary is an agreement in a window: the jobs compared, the
// share of rows of equal classes (class-like outputs) and the mean
// absolute difference (the other outputs), with the detail per output.
type agreementSummary struct {
	Jobs           int64                               `json:"jobs"`
	LabelAgreement *float64                            `json:"label_agreement,omitempty"`
	MeanAbsDiff    *float64                            `json:"mean_abs_diff,omitempty"`
	Outputs        map[string]*monitor.OutputAgreement `json:"outputs"`
}

func summarize(a *monitor.Agreement) agreementSummary {
	out := agreementSummary{Jobs: a.Jobs, Outputs: a.Outputs}
	if v, ok := a.LabelAgreement(); ok {
		out.LabelAgreement = &v
	}
	if v, ok := a.MeanAbsDiff(); ok {
		out.MeanAbsDiff = &v
	}
	return out
}

// shadowAgreement gathers the agreements the versions' windows hold (a
// shadow version's, against each version it was compared with).
func shadowAgreement(versions []*versionMonitoring) []shadowJSON {
	out := []shadowJSON{}
	for _, v := range versions {
		byAgainst := map[string]*shadowJSON{}
		for name, win := range v.Windows {
			for against, a := range win.Agreement {
				sj := byAgainst[against]
				if sj == nil {
					sj = &shadowJSON{Version: v.Version, Against: against, Windows: map[string]agreementSummary{}}
					byAgainst[against] = sj
				}
				sj.Windows[name] = summarize(a)
			}
		}
		for _, sj := range byAgainst {
			out = append(out, *sj)
		}
	}
	slices.SortFunc(out, func(a, b shadowJSON) int {
		if c := compareVersions(a.Version, b.Version); c != 0 {
			return c
		}
		return compareVersions(a.Against, b.Against)
	})
	return out
}

func compareVersions(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return bytes.Compare([]byte(a), []byte(b))
}

// setBaseline takes a model version's baseline from the statistics of a
// batch file's jobs ({"batch": id}) or of a recent span ({"since": "1h"}),
// and keeps it beside the model's results.
func (s *Server) setBaseline(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("model")
	if err := allow(r, name); err != nil {
		return err
	}
	f, err := s.opts.Catalog.Family(name)
	if err != nil {
		return errorf(http.StatusNotFound, "%v", err)
	}
	if s.opts.Monitoring == nil || s.opts.Objects == nil {
		return errorf(http.StatusNotFound, "statistics are not served here")
	}
	var req struct {
		Batch   string `json:"batch"`
		Since   string `json:"since"`
		Version string `json:"version"`
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		return errorf(http.StatusBadRequest, `want {"batch": "<batch id>"} or {"since": "1h"}, optionally with "version": %v`, err)
	}
	since := time.Now().Add(-24 * time.Hour)
	switch {
	case (req.Batch == "") == (req.Since == ""):
		return errorf(http.StatusBadRequest, `give one of "batch" (a batch file's id) and "since" (a duration such as 1h)`)
	case req.Batch != "":
		b, err := s.batchRecord(r.Context(), req.Batch)
		if err != nil {
			return err
		}
		if !mayUse(r.Context(), b.Model) {
			return errorf(http.StatusNotFound, "batch %s not found", req.Batch)
		}
		if b.Model != name {
			return errorf(http.StatusBadRequest, "batch %s is of model %s, not %s", req.Batch, b.Model, name)
		}
		since = b.CreatedAt.Add(-time.Minute)
	default:
		d, err := time.ParseDuration(req.Since)
		if err != nil || d <= 0 || d > 24*time.Hour {
			return errorf(http.StatusBadRequest, "since %q: want a duration up to 24h, such as 1h", req.Since)
		}
		since = time.Now().Add(-d)
	}
	version := req.Version
	if version == "" && f.Default() != nil {
		version = f.Default().VersionString()
	}
	base := monitor.NewSnapshot(name, version, req.Batch, time.Time{})
	err = s.snapshots(r.Context(), name, since, func(snap *monitor.Snapshot) {
		if snap.Version == version && (req.Batch == "" || snap.Batch == req.Batch) {
			base.Merge(snap)
		}
	})
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 5, msg: err.Error()}
	}
	if base.Jobs == 0 {
		return errorf(http.StatusConflict, "no statistics of model %s version %s match (statistics are published a minute at a time: a batch that just finished may need a minute more)", name, version)
	}
	b, _ := json.Marshal(base)
	if err := s.opts.Objects.Put(r.Context(), baselineKey(name, version), bytes.NewReader(b)); err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 5, msg: "storage: " + err.Error()}
	}
	s.drift.forget(name)
	writeJSON(w, http.StatusOK, base)
	return nil
}

// driftCollector exposes inferq_drift_psi: each model version's last hour
// against its baseline, per tensor, read at scrape time at most once a
// minute per model.
type driftCollector struct {
	s    *Server
	desc *prometheus.Desc
	// agreement is inferq_shadow_agreement, read with the drift.
	agreement *prometheus.Desc

	mu     sync.Mutex
	cached map[string]driftReading
}

type driftReading struct {
	at      time.Time
	metrics []prometheus.Metric
}

func newDriftCollector(s *Server) *driftCollector {
	return &driftCollector{s: s, cached: map[string]driftReading{},
		desc: prometheus.NewDesc("inferq_drift_psi", "Population stability index of a model version's last hour against its baseline, by tensor and measure (values: the histogram; classes: the class shares). Over 0.25 is drift.",
			[]string{"model", "version", "kind", "tensor", "measure"}, nil),
		agreement: prometheus.NewDesc("inferq_shadow_agreement", "How a shadow version agreed with the version that answered the same jobs over the last hour, by measure: labels (the share of rows of equal classes, class-like outputs) and mean_abs_diff (the other outputs).",
			[]string{"model", "version", "against", "measure"}, nil)}
}

func (c *driftCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc; ch <- c.agreement }

func (c *driftCollector) forget(model string) {
	c.mu.Lock()
	delete(c.cached, model)
	c.mu.Unlock()
}

func (c *driftCollector) Collect(ch chan<- prometheus.Metric) {
	if c.s.opts.Monitoring == nil || c.s.opts.Objects == nil {
		return
	}
	for _, f := range c.s.opts.Catalog.Families() {
		c.mu.Lock()
		r, ok := c.cached[f.Name]
		c.mu.Unlock()
		if !ok || time.Since(r.at) > time.Minute {
			r = driftReading{at: time.Now(), metrics: c.read(f.Name)}
			c.mu.Lock()
			c.cached[f.Name] = r
			c.mu.Unlock()
		}
		for _, m := range r.metrics {
			ch <- m
		}
	}
}

func (c *driftCollector) read(model string) []prometheus.Metric {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hour := map[string]*monitor.Snapshot{}
	err := c.s.snapshots(ctx, model, time.Now().Add(-time.Hour), func(snap *monitor.Snapshot) {
		if hour[snap.Version] == nil {
			hour[snap.Version] = monitor.NewSnapshot(model, snap.Version, "", snap.Start)
		}
		hour[snap.Version].Merge(snap)
	})
	if err != nil {
		return nil
	}
	var out []prometheus.Metric
	for version, cur := range hour {
		for against, a := range cur.Agreement {
			if v, ok := a.LabelAgreement(); ok {
				out = append(out, prometheus.MustNewConstMetric(c.agreement, prometheus.GaugeValue, v, model, version, against, "labels"))
			}
			if v, ok := a.MeanAbsDiff(); ok {
				out = append(out, prometheus.MustNewConstMetric(c.agreement, prometheus.GaugeValue, v, model, version, against, "mean_abs_diff"))
			}
		}
		base := c.s.baseline(ctx, model, version)
		if base == nil {
			continue
		}
		for _, d := range monitor.Compare(base, cur) {
			if d.PSI != nil {
				out = append(out, prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, *d.PSI, model, version, d.Kind, d.Tensor, "values"))
			}
			if d.ClassPSI != nil {
				out = append(out, prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, *d.ClassPSI, model, version, d.Kind, d.Tensor, "classes"))
			}
		}
	}
	return out
}
