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
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.accepted, m.rejected, m.requests} {
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
