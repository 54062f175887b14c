package jobs

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DepthCollector exports each model's queue depth, read from JetStream at
// scrape time rather than tracked, so it is right in every process.
type DepthCollector struct {
	q        *Queue
	models   func() []string
	pending  *prometheus.Desc
	inFlight *prometheus.Desc
	depth    *prometheus.Desc
	shadow   *prometheus.Desc
}

// NewDepthCollector returns a collector of the depth of models' queues.
func NewDepthCollector(q *Queue, models func() []string) *DepthCollector {
	return &DepthCollector{
		q: q, models: models,
		pending:  prometheus.NewDesc("inferq_queue_pending_jobs", "Jobs waiting in a model's queue, not yet delivered to a worker.", []string{"model"}, nil),
		inFlight: prometheus.NewDesc("inferq_queue_in_flight_jobs", "Jobs delivered to a model's workers and not yet acknowledged.", []string{"model"}, nil),
		depth:    prometheus.NewDesc("inferq_queue_depth", "Jobs pending plus in flight, by model: the backlog scaling follows.", []string{"model"}, nil),
		shadow:   prometheus.NewDesc("inferq_shadow_queue_messages", "Messages of shadow runs (each the runs of one finished batch) waiting or in flight, by model and shadow version: a shadow's workers falling behind.", []string{"model", "version"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *DepthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.inFlight
	ch <- c.depth
	ch <- c.shadow
}

// Collect implements prometheus.Collector. A model whose consumer does not
// exist yet has nothing queued for a worker and reports no sample.
func (c *DepthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, m := range c.models() {
		d, err := c.q.Depth(ctx, m)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(d.Pending), m)
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(d.InFlight), m)
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(d.Pending)+float64(d.InFlight), m)
	}
	backlogs, err := c.q.ShadowBacklogs(ctx)
	if err != nil {
		return
	}
	for _, m := range c.models() {
		for v, n := range backlogs[m] {
			ch <- prometheus.MustNewConstMetric(c.shadow, prometheus.GaugeValue, float64(n), m, strconv.FormatInt(v, 10))
		}
	}
}
