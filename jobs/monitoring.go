package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MonitoringStream keeps the workers' statistics of what models are asked
// and answer: one message a minute per worker, model version (and batch
// file), on inferq.monitoring.<model>, kept 25 hours (a day's window and
// an hour to spare).
const MonitoringStream = "INFERQ_MONITORING"

const monitoringPrefix = "inferq.monitoring."

// MaxSnapshotsPerModel bounds the statistics snapshots kept per model.
const MaxSnapshotsPerModel = 20_000

// MonitoringSubject is the subject of a model's statistics.
func MonitoringSubject(model string) string { return monitoringPrefix + Token(model) }

func setupMonitoring(ctx context.Context, js jetstream.JetStream, opts Options) error {
	return ensureStream(ctx, js, jetstream.StreamConfig{
		Name:        MonitoringStream,
		Description: "inferq model statistics: a snapshot a minute per worker and model version",
		Subjects:    []string{monitoringPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      25 * time.Hour,
		// Each model keeps its own newest snapshots, so that one model's
		// flood (a snapshot per batch file) never evicts another's;
		// 20,000 is a snapshot a minute from 13 workers and versions
		// over the 25 hours.
		MaxMsgsPerSubject: MaxSnapshotsPerModel,
		MaxBytes:          1 << 30,
		Discard:           jetstream.DiscardOld,
		Storage:           jetstream.FileStorage,
		Replicas:          max(opts.Replicas, 1),
	})
}

// PublishMonitoring stores a statistics snapshot of model.
func (q *Queue) PublishMonitoring(ctx context.Context, model string, snapshot []byte) error {
	_, err := q.js.Publish(ctx, MonitoringSubject(model), snapshot)
	return err
}

// ReadMonitoring calls fn with each statistics snapshot of model stored
// since since, oldest first, and returns once it has read what the stream
// held when it was called.
func (q *Queue) ReadMonitoring(ctx context.Context, model string, since time.Time, fn func(data []byte) error) error {
	st, err := q.js.Stream(ctx, MonitoringStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil // a queue set up by a release before the stream
	}
	if err != nil {
		return fmt.Errorf("read statistics of %s: %w", model, err)
	}
	// An ephemeral consumer for this read alone, deleted after it (and
	// by the server, should this process die first, once inactive).
	cons, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{
		FilterSubject:     MonitoringSubject(model),
		DeliverPolicy:     jetstream.DeliverByStartTimePolicy,
		OptStartTime:      &since,
		AckPolicy:         jetstream.AckNonePolicy,
		InactiveThreshold: 30 * time.Second,
		MemoryStorage:     true,
	})
	if err != nil {
		return fmt.Errorf("read statistics of %s: %w", model, err)
	}
	defer st.DeleteConsumer(context.WithoutCancel(ctx), cons.CachedInfo().Name)
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("read statistics of %s: %w", model, err)
	}
	left := info.NumPending
	for left > 0 {
		batch, err := cons.Fetch(int(min(left, 256)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("read statistics of %s: %w", model, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			if err := fn(m.Data()); err != nil {
				return err
			}
			if meta, err := m.Metadata(); err == nil && meta.NumPending == 0 {
				left = 0
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("read statistics of %s: %w", model, err)
		}
		if n == 0 {
			break
		}
		if left > 0 {
			left -= uint64(n)
		}
	}
	return nil
}
