package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Status is a job's state.
type Status string

// Job states. Succeeded, Failed, Cancelled and Expired are final.
const (
	Queued    Status = "queued"
	Running   Status = "running"
	Succeeded Status = "succeeded"
	Failed    Status = "failed"
	Cancelled Status = "cancelled"
	Expired   Status = "expired"
)

// Priority is how a job is ordered against others of its model.
type Priority string

// Priorities. High jobs are taken ahead of normal ones, but normal ones
// still get a share (see consumer).
const (
	Normal Priority = ""
	High   Priority = "high"
)

// ParsePriority reads a priority as clients write it.
func ParsePriority(s string) (Priority, error) {
	switch s {
	case "", "normal":
		return Normal, nil
	case "high":
		return High, nil
	}
	return Normal, fmt.Errorf("priority %q: want high or normal", s)
}

// Final reports whether a job in status s will change no more.
func (s Status) Final() bool {
	return s == Succeeded || s == Failed || s == Cancelled || s == Expired
}

// Record is a job's record, as the API serves it.
type Record struct {
	ID           string     `json:"id"`
	Model        string     `json:"model"`
	ModelVersion string     `json:"model_version,omitempty"`
	Status       Status     `json:"status"`
	CreatedAt    time.Time  `json:"created_at"`
	StartedAt    *time.Time `json:"started_at,omitempty"`
	FinishedAt   *time.Time `json:"finished_at,omitempty"`
	Attempts     int        `json:"attempts"`
	// Worker names the process that ran (or runs) the job: host and pid.
	Worker    string `json:"worker,omitempty"`
	Error     string `json:"error,omitempty"`
	ResultURL string `json:"result_url,omitempty"`
	// ClientID is the request's own "id", kept for correlation.
	ClientID string `json:"client_id,omitempty"`
	// Rows is the request's batch dimension.
	Rows int `json:"rows,omitempty"`
	// Priority is "high" for a job batched ahead of normal ones; empty for
	// normal.
	Priority Priority `json:"priority,omitempty"`
	// Deadline is when a job that has not started expires.
	Deadline *time.Time `json:"deadline,omitempty"`
	// Webhook is a URL called with the record and result when the job
	// finishes.
	Webhook string `json:"webhook,omitempty"`
	// Batch is the batch file a job was made from, and Lines how many of
	// its lines the job packs.
	Batch string `json:"batch_id,omitempty"`
	Lines int    `json:"lines,omitempty"`
	// BatchSeq numbers a batch's jobs from 1 in the order they were
	// made, so that each is counted into its batch once however often it
	// is announced (0: a job of an earlier release, counted as announced).
	BatchSeq int64 `json:"batch_seq,omitempty"`
	// LinesFailed is how many of a succeeded job's lines failed on their
	// own: lines laid end to end run one at a time, and one that ONNX
	// Runtime fails on does not fail the others.
	LinesFailed int `json:"lines_failed,omitempty"`
	// ReplayOf is the failed job this one replays from the dead letters.
	ReplayOf string `json:"replay_of,omitempty"`
	// Result is where the result of a succeeded job is stored. It is kept
	// in the bucket and not shown to clients, who read the result through
	// ResultURL.
	Result *ResultRef `json:"result,omitempty"`
}

// ResultRef locates a job's V2 response: Length bytes from Offset in the
// object at Key. A worker writes the results of one batch as one object,
// JSON Lines with a line per job, so that a batch costs one write however
// many jobs it holds. A job run twice (redelivered after a crash) has its
// result in two objects; its record names the one that counts.
type ResultRef struct {
	Key    string `json:"key"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	// Whole says the object holds this result alone (the job layout), so
	// a client may be sent to it directly.
	Whole bool `json:"whole,omitempty"`
	// HeaderLength, when set, says the result is in the V2 binary tensor
	// extension (the job asked for binary outputs): a JSON header of this
	// many bytes, then the binary outputs' data.
	HeaderLength int64 `json:"header_length,omitempty"`
}

// Public returns a copy of the record as clients see it: with the URL of
// its result when it succeeded, and without where the result is stored.
func (r *Record) Public() *Record {
	c := *r
	c.Result = nil
	if c.Status == Succeeded {
		c.ResultURL = "/v1/jobs/" + c.ID + "/result"
	}
	return &c
}

// BatchResultKey is where the results of a model's batch with the given
// id (a ULID, so that its name says when it was written) are stored.
func BatchResultKey(model, batchID string) string {
	return ResultPrefix(model) + batchID + ".jsonl"
}

// JobResultKey is where a job's result is stored in the job layout: an
// object per job, keyed by its id, so that a rerun overwrites it.
func JobResultKey(model, id string) string { return ResultPrefix(model) + id + ".json" }

// ResultPrefix is the folder of a model's result objects.
func ResultPrefix(model string) string { return "results/" + model + "/" }

// InputPrefix is the folder whose objects a job of model may name as
// inputs (inferq_object): a tenant allowed that model uploads there. A
// job naming anything else (another model's inputs or results, a batch
// index, a stored request) is refused, so that a token scoped to one
// model reads nothing of another's through its jobs.
func InputPrefix(model string) string { return "inputs/" + model + "/" }

// ErrInputScope is an input object outside its job's InputPrefix.
var ErrInputScope = errors.New("input object outside the model's inputs")

// CheckInputObject reports whether a job of model may read key as an
// input. The API checks it at submission, and the worker again before
// reading, for jobs that came by other ways (native NATS producers,
// releases before the check).
func CheckInputObject(model, key string) error {
	prefix := InputPrefix(model)
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok || rest == "" {
		return fmt.Errorf("%w: %q is not under %s; upload a model's inputs there", ErrInputScope, key, prefix)
	}
	return nil
}

// ErrJobNotFound is returned for an id that has no record.
var ErrJobNotFound = errors.New("job not found")

// ErrConflict is returned by an update function to leave a record as it
// is, such as when a cancelled job is about to start.
var ErrConflict = errors.New("job is in the wrong state")

// Records keeps job records in a JetStream key-value bucket, keyed by job
// id. It is safe for concurrent use.
type Records struct {
	kv jetstream.KeyValue
	// js publishes sets of changes (see UpdateAll); nil changes them one
	// by one.
	js jetstream.JetStream
	// ackTimeout bounds how long a set waits for its acknowledgements;
	// zero is AckTimeout.
	ackTimeout time.Duration
}

// Create stores a new record; it fails if the id exists.
func (r *Records) Create(ctx context.Context, rec *Record) error {
	_, _, err := r.create(ctx, rec)
	return err
}

// create stores a new record and returns its encoding and revision.
func (r *Records) create(ctx context.Context, rec *Record) ([]byte, uint64, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, 0, fmt.Errorf("encode record %s: %w", rec.ID, err)
	}
	rev, err := r.kv.Create(ctx, rec.ID, b)
	if err != nil {
		return nil, 0, fmt.Errorf("store record %s: %w", rec.ID, err)
	}
	return b, rev, nil
}

// Get returns the record of job id.
func (r *Records) Get(ctx context.Context, id string) (*Record, error) {
	rec, _, err := r.get(ctx, id)
	return rec, err
}

func (r *Records) get(ctx context.Context, id string) (*Record, uint64, error) {
	e, err := r.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, fmt.Errorf("%w: %s", ErrJobNotFound, id)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read record %s: %w", id, err)
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("decode record %s: %w", id, err)
	}
	return &rec, e.Revision(), nil
}

// Update applies fn to the current record of job id and stores the result,
// retrying when another writer got there first. If fn returns an error the
// record is left alone and the error returned.
func (r *Records) Update(ctx context.Context, id string, fn func(*Record) error) (*Record, error) {
	rec, _, err := r.UpdateFrom(ctx, id, nil, 0, fn)
	return rec, err
}

// UpdateFrom is Update starting from a record the caller read at revision
// rev, which saves a read when nobody else has written since. It returns
// the record as stored and its new revision.
func (r *Records) UpdateFrom(ctx context.Context, id string, rec *Record, rev uint64, fn func(*Record) error) (*Record, uint64, error) {
	for {
		if rec == nil {
			var err error
			if rec, rev, err = r.get(ctx, id); err != nil {
				return nil, 0, err
			}
		}
		if err := fn(rec); err != nil {
			return rec, rev, err
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return nil, 0, fmt.Errorf("encode record %s: %w", id, err)
		}
		newRev, err := r.kv.Update(ctx, id, b, rev)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			rec = nil
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("update record %s: %w", id, err)
		}
		return rec, newRev, nil
	}
}
