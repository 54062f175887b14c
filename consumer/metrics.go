package consumer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the workers' Prometheus metrics; every Worker of a process
// shares one.
type Metrics struct {
	finished  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	batches   *prometheus.CounterVec
	batchSize *prometheus.HistogramVec
	inference *prometheus.HistogramVec
	// failedRuns counts ONNX Runtime runs that failed, including the runs
	// of halves while a failed batch is split to find its bad job.
	failedRuns *prometheus.CounterVec
	// settled counts job messages settled, by how (see settle).
	settled   *prometheus.CounterVec
	replicas  *prometheus.GaugeVec
	coldStart *prometheus.HistogramVec
	// writes and writeJobs time the result store's writes and count the
	// jobs each carries: what tells a slow store from a slow model.
	writes    *prometheus.HistogramVec
	writeJobs *prometheus.HistogramVec
	// values, nonFinite and classes count what models are asked and
	// answer (docs/monitoring.md), added a minute at a time.
	values    *prometheus.CounterVec
	nonFinite *prometheus.CounterVec
	classes   *prometheus.CounterVec
	// captureDropped counts captured jobs dropped because the capture
	// writer fell behind (see captureMaxBytes).
	captureDropped *prometheus.CounterVec
	// steps and stepSeconds count pipeline steps ended by this worker
	// and time what runs after a model step (the operations, and queuing
	// the next step), by pipeline and step.
	steps       *prometheus.CounterVec
	stepSeconds *prometheus.HistogramVec
	// shadowRuns counts the shadow runs a shadow worker ended, by model,
	// version and outcome; shadowDropped the shadow runs that could not
	// be queued, by model.
	shadowRuns    *prometheus.CounterVec
	shadowDropped *prometheus.CounterVec
}

// NewMetrics creates the workers' metrics and registers them on reg; nil
// reg leaves them unregistered.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_jobs_finished_total",
			Help: "Jobs that reached a final status, by model and status.",
		}, []string{"model", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "inferq_job_latency_seconds",
			Help:    "Time from a job's acceptance to its final status, by model and status.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 16),
		}, []string{"model", "status"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_batches_total",
			Help: "Batches run, by model and the reason the batch closed (max_size, preferred_size, delay, groups, flush).",
		}, []string{"model", "reason"}),
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "inferq_batch_size",
			Help:    "Rows per batch, by model. A job of more rows than max_batch_size (packed from a batch file) is one batch, run in slices of max_batch_size.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512},
		}, []string{"model"}),
		inference: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "inferq_inference_duration_seconds",
			Help:    "Time ONNX Runtime took to run one batch (all its runs, for a job run in slices or line by line), by model.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 16),
		}, []string{"model"}),
		failedRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_failed_runs_total",
			Help: "ONNX Runtime runs that failed, by model; a failed batch is split and rerun to isolate the jobs at fault.",
		}, []string{"model"}),
		shadowRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_shadow_runs_total",
			Help: "Shadow runs ended by this worker, by model, shadow version and outcome (succeeded, failed): a failed shadow run fails nothing else.",
		}, []string{"model", "version", "outcome"}),
		shadowDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_shadow_dropped_total",
			Help: "Shadow runs that could not be queued (the shadow stream away), by model.",
		}, []string{"model"}),
		settled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_job_messages_settled_total",
			Help: "Job messages a worker settled, by model and how: ack (the job is final, or needs nothing more), hand_back (returned to the queue to run again: a retry, storage away, shutdown) and drop (terminated: it has no record).",
		}, []string{"model", "how"}),
		values: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_monitor_values_total",
			Help: "Finite numbers seen in models' inputs and outputs, by model, version, kind (input, output) and tensor.",
		}, []string{"model", "version", "kind", "tensor"}),
		nonFinite: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_monitor_nonfinite_total",
			Help: "NaN and infinite values seen in models' inputs and outputs, by model, version, kind and tensor.",
		}, []string{"model", "version", "kind", "tensor"}),
		classes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_monitor_class_total",
			Help: "Rows answered per class, for class-like outputs (a label per row, or the argmax of class scores), by model, version, output and class; at most 64 classes an output, the rest counted as other.",
		}, []string{"model", "version", "output", "class"}),
		replicas: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "inferq_replicas",
			Help: "Worker replicas of a model running in this process.",
		}, []string{"model"}),
		coldStart: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "inferq_replica_start_seconds",
			Help:    "Time to start a replica of a model: sessions loaded, ready to pull (the cold start of scaling up, from zero included).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}, []string{"model"}),
		captureDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_capture_dropped_total",
			Help: "Jobs sampled for data capture and dropped, by model, because the captured lines waiting to be written had reached their bound (64 MiB a worker): the result store is slower than the capture rate asks.",
		}, []string{"model"}),
		writes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "inferq_result_write_seconds",
			Help:    "Time to write one result object to storage, by model and outcome (ok, error). In the batch layout one write holds the results of every batch that finished while the previous write ran.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2.5, 14),
		}, []string{"model", "outcome"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "inferq_step_finished_total",
			Help: "Model steps of pipeline jobs that ended, by pipeline, step (the model step) and status: succeeded (the job went on) or the job's final status when it ended there.",
		}, []string{"pipeline", "step", "status"}),
		stepSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "inferq_step_continue_seconds",
			Help:    "Time a worker took after a pipeline job's model step to run the operations that follow and queue the next model step, by pipeline and step.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14),
		}, []string{"pipeline", "step"}),
		writeJobs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "inferq_result_write_jobs",
			Help:    "Jobs whose results one storage write carries, by model (always 1 in the job layout).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048},
		}, []string{"model"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.finished, m.latency, m.batches, m.batchSize, m.inference, m.failedRuns, m.settled, m.replicas, m.coldStart, m.writes, m.writeJobs, m.values, m.nonFinite, m.classes, m.captureDropped, m.steps, m.stepSeconds, m.shadowRuns, m.shadowDropped} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register worker metrics: %w", err)
			}
		}
	}
	return m, nil
}
