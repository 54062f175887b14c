package producer

import (
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	accepted *prometheus.CounterVec
	rejected *prometheus.CounterVec
	requests *prometheus.HistogramVec
	// listed counts the lines of batches over stored objects as their
	// pages are queued, takeovers the feeds taken over from a feeder
	// that stopped.
	listed    *prometheus.CounterVec
	takeovers prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_jobs_accepted_total",
			Help: "Jobs accepted and durably queued, by model.",
		}, []string{"model"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_jobs_rejected_total",
			Help: "Job submissions refused, by model and reason (invalid, too_large, unavailable).",
		}, []string{"model", "reason"}),
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "inferq_http_request_duration_seconds",
			Help:    "HTTP requests by route and status code.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
		}, []string{"route", "code"}),
		listed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_batch_lines_listed_total",
			Help: "Lines of batches over stored objects listed and queued (or failed in listing: an object over --max-body), by model.",
		}, []string{"model"}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "inferq_batch_feed_takeovers_total",
			Help: "Batches over stored objects whose listing this API process took over from one that stopped.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.accepted, m.rejected, m.requests, m.listed, m.takeovers} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register API metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *metrics) observeRequest(route string, code int, d time.Duration) {
	if code == 0 {
		code = 200
	}
	m.requests.WithLabelValues(route, strconv.Itoa(code)).Observe(d.Seconds())
}
