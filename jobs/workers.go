package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// WorkerBucket holds what each worker process serves of each model, and
// where: a key per model and process, each refreshed every few seconds
// and gone after WorkerStatusTTL without a refresh.
const WorkerBucket = "INFERQ_WORKERS"

// WorkerStatusTTL is how long a worker's status outlives its last
// refresh.
const WorkerStatusTTL = 30 * time.Second

// WorkerStatus is what one worker process serves of one model.
type WorkerStatus struct {
	Model string `json:"model"`
	// Worker is the process, host:pid.
	Worker string `json:"worker"`
	// Replicas are the model's workers running in the process.
	Replicas int `json:"replicas"`
	// Versions say where each version's sessions run.
	Versions []VersionPlacement `json:"versions,omitempty"`
	// The batch settings the process runs the model with: the model's,
	// or the process's own overrides.
	MaxBatchSize  int    `json:"max_batch_size,omitempty"`
	MaxQueueDelay string `json:"max_queue_delay,omitempty"`
	Instances     int    `json:"instances,omitempty"`
	// Error says why the process does not serve the model (its provider
	// cannot be attached there, say); Replicas is 0 then.
	Error string `json:"error,omitempty"`
	// LastScale is the process's last scale decision acted on for the
	// model, with its reason.
	LastScale *ScaleNote `json:"last_scale,omitempty"`
	UpdatedAt time.Time  `json:"updated_at"`
}

// ScaleNote is a scale decision acted on.
type ScaleNote struct {
	From   int       `json:"from"`
	To     int       `json:"to"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// VersionPlacement is where a worker runs one model version.
type VersionPlacement struct {
	Version string `json:"version"`
	// Device is "cpu", "cuda:N" or "tensorrt:N": where the sessions
	// really run.
	Device string `json:"device"`
	// Fallback, when set, is why the version runs on the CPU though its
	// config asks for a GPU.
	Fallback string `json:"fallback,omitempty"`
}

func setupWorkers(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	return ensureKeyValue(ctx, js, jetstream.KeyValueConfig{
		Bucket:      WorkerBucket,
		Description: "inferq workers: what each process serves of each model, and where",
		History:     1,
		TTL:         WorkerStatusTTL,
		Storage:     jetstream.MemoryStorage,
		Replicas:    replicas,
	})
}

// workerKey is the status key of a model in a process, model.worker:
// KV keys take letters, digits and -/_=. only, as model names do; the
// worker name's other characters are written '_', and it holds no '.',
// so that keys of different models never meet.
func workerKey(model, worker string) string {
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, worker)
	return model + "." + clean
}

// PutWorkerStatus records st, refreshing its time to live.
func (q *Queue) PutWorkerStatus(ctx context.Context, st WorkerStatus) error {
	if q.workers == nil {
		return errors.New("the workers bucket is not set up")
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = q.workers.Put(ctx, workerKey(st.Model, st.Worker), b)
	return err
}

// DeleteWorkerStatus removes a process's status of a model, when it
// stops serving it.
func (q *Queue) DeleteWorkerStatus(ctx context.Context, model, worker string) error {
	if q.workers == nil {
		return nil
	}
	err := q.workers.Delete(ctx, workerKey(model, worker))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	return err
}

// WorkerStatuses returns every live worker status, by model then worker.
func (q *Queue) WorkerStatuses(ctx context.Context) ([]WorkerStatus, error) {
	if q.workers == nil {
		return nil, nil
	}
	w, err := q.workers.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read worker statuses: %w", err)
	}
	defer w.Stop()
	var out []WorkerStatus
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // every current value has come
				slices.SortFunc(out, func(a, b WorkerStatus) int {
					return strings.Compare(a.Model+"\x00"+a.Worker, b.Model+"\x00"+b.Worker)
				})
				return out, nil
			}
			var st WorkerStatus
			if json.Unmarshal(e.Value(), &st) == nil {
				out = append(out, st)
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
