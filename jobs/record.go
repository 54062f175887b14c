package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/record"
)

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
func (r *Records) Create(ctx context.Context, rec *record.Record) error {
	_, _, err := r.create(ctx, rec)
	return err
}

// create stores a new record and returns its encoding and revision.
func (r *Records) create(ctx context.Context, rec *record.Record) ([]byte, uint64, error) {
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
func (r *Records) Get(ctx context.Context, id string) (*record.Record, error) {
	rec, _, err := r.get(ctx, id)
	return rec, err
}

// GetRev is Get with the record's revision, for UpdateFrom.
func (r *Records) GetRev(ctx context.Context, id string) (*record.Record, uint64, error) {
	return r.get(ctx, id)
}

func (r *Records) get(ctx context.Context, id string) (*record.Record, uint64, error) {
	e, err := r.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, fmt.Errorf("%w: %s", ErrJobNotFound, id)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read record %s: %w", id, err)
	}
	var rec record.Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, 0, fmt.Errorf("decode record %s: %w", id, err)
	}
	return &rec, e.Revision(), nil
}

// Update applies fn to the current record of job id and stores the result,
// retrying when another writer got there first. If fn returns an error the
// record is left alone and the error returned.
func (r *Records) Update(ctx context.Context, id string, fn func(*record.Record) error) (*record.Record, error) {
	rec, _, err := r.UpdateFrom(ctx, id, nil, 0, fn)
	return rec, err
}

// UpdateFrom is Update starting from a record the caller read at revision
// rev, which saves a read when nobody else has written since. It returns
// the record as stored and its new revision.
func (r *Records) UpdateFrom(ctx context.Context, id string, rec *record.Record, rev uint64, fn func(*record.Record) error) (*record.Record, uint64, error) {
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
