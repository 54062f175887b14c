package consumer

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/inferq/inferq/monitor"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// watcher keeps a worker's statistics of what its model is asked and
// answers, and its data capture, off the latency path: the result writer
// hands it each group of finished jobs after they are acknowledged, and
// Run publishes the statistics (and writes the captured lines) every
// interval.
type watcher struct {
	w *Worker
	// finished carries groups of finished jobs from the result writer to
	// run, which adds them up: the writer does not wait for statistics.
	finished chan finishedGroup

	mu      sync.Mutex
	snaps   map[snapKey]*monitor.Snapshot
	capture map[string][]byte // by version: JSON lines to write
	// held is the captured bytes in memory: in capture, and handed to
	// the capture writer and not yet written.
	held  int
	start time.Time
	// writes carries captured lines to the capture writer (see run).
	writes chan capturedObject
}

// Captured lines are written in objects of about captureObjectBytes, as
// soon as a version's lines reach it, and at every flush; at most
// captureMaxBytes are held in memory, written or waiting. Past it (the
// store slower than the capture rate asks) samples are dropped and
// counted (inferq_capture_dropped_total): capture never holds the server
// back or grows it without bound.
const (
	captureObjectBytes = 8 << 20
	captureMaxBytes    = 64 << 20
)

// capturedObject is a version's captured lines, to be written as one
// object.
type capturedObject struct {
	version string
	lines   []byte
}

type snapKey struct{ version, batch string }

type finishedGroup struct {
	items   []*item
	outputs [][]tensor.Tensor
	refs    []*record.ResultRef
	bodies  [][]byte
	// errs, for a group of shadow runs (refs and bodies nil): those that
	// failed have no outputs.
	errs   []error
	shadow bool
}

func newWatcher(w *Worker) *watcher {
	return &watcher{w: w, snaps: map[snapKey]*monitor.Snapshot{}, capture: map[string][]byte{}, start: time.Now().UTC(),
		finished: make(chan finishedGroup, 64), writes: make(chan capturedObject, 4)}
}

// observe hands a group of finished jobs to run, to add the succeeded
// ones (those with a result) to the statistics and capture the sampled
// share of them. It waits only while run is 64 groups behind.
func (m *watcher) observe(items []*item, outputs [][]tensor.Tensor, refs []*record.ResultRef, bodies [][]byte) {
	m.finished <- finishedGroup{items: items, outputs: outputs, refs: refs, bodies: bodies}
}

// observeShadows hands a group of shadow runs to run: the succeeded
// ones are added to their version's statistics, compared with their
// answers (monitor.Agreement), and captured at the model's rate, marked
// as shadow runs.
func (m *watcher) observeShadows(items []*item, outputs [][]tensor.Tensor, errs []error) {
	m.finished <- finishedGroup{items: items, outputs: outputs, errs: errs, shadow: true}
}

func (m *watcher) addShadows(g finishedGroup) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, it := range g.items {
		if g.errs[i] != nil || it.model == nil {
			continue
		}
		cfg := it.model.Config
		version := it.model.VersionString()
		got := tensor.Select(g.outputs[i], it.job.Request.Outputs)
		if cfg.StatisticsOn() {
			k := snapKey{version, ""}
			s := m.snaps[k]
			if s == nil {
				s = monitor.NewSnapshot(m.w.name, version, "", m.start)
				m.snaps[k] = s
			}
			s.Observe(it.rows, it.inputs, g.outputs[i])
			if answer, err := tensor.DecodeResponse(it.job.Answer); err == nil {
				s.Compare(it.job.ShadowOf).Compare(got, answer.Outputs)
			}
		}
		if rate := cfg.CaptureRate(); rate > 0 && rand.Float64() < rate {
			body := it.response(m.w.name, g.outputs[i]).AppendJSON(nil)
			m.captureLine(version, appendCaptured(nil, it, version, body))
		}
	}
}

func (m *watcher) add(g finishedGroup) {
	if g.shadow {
		m.addShadows(g)
		return
	}
	items, outputs, refs, bodies := g.items, g.outputs, g.refs, g.bodies
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, it := range items {
		if refs[i] == nil || it.model == nil {
			continue
		}
		cfg := it.model.Config
		version := it.model.VersionString()
		batch := ""
		if it.rec != nil {
			batch = it.rec.Batch
		}
		if cfg.StatisticsOn() {
			k := snapKey{version, batch}
			s := m.snaps[k]
			if s == nil {
				s = monitor.NewSnapshot(m.w.name, version, batch, m.start)
				m.snaps[k] = s
			}
			if it.lines != nil {
				for _, line := range it.lines {
					s.Observe(0, line, nil)
				}
				s.Observe(it.rows, nil, outputs[i])
				s.Jobs -= int64(len(it.lines)) // the lines and the outputs are one job
			} else {
				s.Observe(it.rows, it.inputs, outputs[i])
			}
		}
		if rate := cfg.CaptureRate(); rate > 0 && batch == "" && rand.Float64() < rate {
			body := bodies[i]
			if refs[i] != nil && refs[i].HeaderLength > 0 && body == nil {
				body = it.response(m.w.name, outputs[i]).AppendJSON(nil) // captured as JSON
			}
			m.captureLine(version, appendCaptured(nil, it, version, body))
		}
	}
}

// captureLine keeps a captured line of version, or drops it when
// captureMaxBytes are held, and hands the version's lines to the writer
// once they make an object. The caller holds m.mu.
func (m *watcher) captureLine(version string, line []byte) {
	if m.held+len(line) > captureMaxBytes {
		m.w.opts.Metrics.captureDropped.WithLabelValues(m.w.name).Inc()
		return
	}
	m.held += len(line)
	buf := append(m.capture[version], line...)
	m.capture[version] = buf
	if len(buf) < captureObjectBytes {
		return
	}
	select {
	case m.writes <- capturedObject{version, buf}:
		m.capture[version] = nil
	default: // the writer is busy: the lines wait, within captureMaxBytes
	}
}

// writeCaptured writes captured objects until writes is closed.
func (m *watcher) writeCaptured(ctx context.Context) {
	w := m.w
	for o := range m.writes {
		key := CapturePrefix(w.name) + o.version + "/" + time.Now().UTC().Format("2006-01-02") + "/" + ulid.Make().String() + ".jsonl"
		if err := w.opts.Results.Put(ctx, key, bytes.NewReader(o.lines)); err != nil {
			w.log.Warn("could not write captured jobs; they are lost", "key", key, "lines", bytes.Count(o.lines, []byte("\n")), "err", err)
		}
		m.mu.Lock()
		m.held -= len(o.lines)
		m.mu.Unlock()
	}
}

// appendCaptured appends a captured job's line: its id, model, version,
// time, request (inputs given by reference stay references) and response.
func appendCaptured(b []byte, it *item, version string, response []byte) []byte {
	req := it.job.Request.AppendJSON(nil) // inputs given by reference stay references
	line := struct {
		JobID    string          `json:"job_id"`
		Model    string          `json:"model"`
		Version  string          `json:"version"`
		Time     time.Time       `json:"time"`
		Request  json.RawMessage `json:"request"`
		Response json.RawMessage `json:"response"`
		// ShadowOf marks a shadow run's line: the version that answered
		// the job (its response is not this one).
		ShadowOf string `json:"shadow_of,omitempty"`
	}{it.job.ID, it.job.Model, version, time.Now().UTC(), req, response, it.job.ShadowOf}
	enc, err := json.Marshal(line)
	if err != nil {
		return b
	}
	return append(append(b, enc...), '\n')
}

// flush publishes the statistics gathered since the last flush, adds them
// to the worker's metrics, and writes the captured lines, one object per
// version, under capture/<model>/<version>/<date>/.
func (m *watcher) flush(ctx context.Context) {
	m.mu.Lock()
	snaps, capture := m.snaps, m.capture
	m.snaps, m.capture = map[snapKey]*monitor.Snapshot{}, map[string][]byte{}
	now := time.Now().UTC()
	m.start = now
	m.mu.Unlock()
	w := m.w
	for _, s := range snaps {
		s.End, s.Worker = now, w.opts.Name
		for _, side := range []struct {
			kind  string
			stats map[string]*monitor.Stats
		}{{"input", s.Inputs}, {"output", s.Outputs}} {
			for name, st := range side.stats {
				w.opts.Metrics.values.WithLabelValues(w.name, s.Version, side.kind, name).Add(float64(st.Count))
				w.opts.Metrics.nonFinite.WithLabelValues(w.name, s.Version, side.kind, name).Add(float64(st.NaN + st.Inf))
				if side.kind == "output" {
					for c, n := range st.Classes {
						w.opts.Metrics.classes.WithLabelValues(w.name, s.Version, name, c).Add(float64(n))
					}
				}
			}
		}
		b, err := json.Marshal(s)
		if err == nil {
			err = w.opts.Queue.PublishMonitoring(ctx, w.name, b)
		}
		if err != nil {
			w.log.Warn("could not publish the model's statistics; this minute's are lost", "version", s.Version, "err", err)
		}
	}
	for version, lines := range capture {
		if len(lines) > 0 {
			m.writes <- capturedObject{version, lines}
		}
	}
}

// run adds the finished jobs observe hands it, and flushes every interval,
// until ctx ends; then it adds what is left and flushes once more.
func (m *watcher) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	written := make(chan struct{})
	// The writer outlives ctx by the last flush's writes, within 5s.
	wctx, cancelWrites := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWrites()
	go func() {
		defer close(written)
		m.writeCaptured(wctx)
	}()
	defer func() {
		close(m.writes)
		select {
		case <-written:
		case <-time.After(5 * time.Second):
			cancelWrites()
			<-written
		}
	}()
	for {
		select {
		case g := <-m.finished:
			m.add(g)
		case <-ctx.Done():
			for {
				select {
				case g := <-m.finished:
					m.add(g)
					continue
				default:
				}
				break
			}
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			m.flush(fctx)
			cancel()
			return
		case <-t.C:
			m.flush(ctx)
		}
	}
}

// CapturePrefix is the folder of a model's captured jobs.
func CapturePrefix(model string) string { return "capture/" + model + "/" }
