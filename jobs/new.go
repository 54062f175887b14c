package jobs

import (
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/oklog/ulid/v2"

	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// Spec is what a new job is, besides its request: where it goes and how
// it is to be run.
type Spec struct {
	// ID is the job's id, when the caller has chosen it (a ULID); empty
	// makes a new one.
	ID    string
	Model string
	// Version pins a model version; 0 runs the default version when the
	// job starts.
	Version int64
	// Routed says the traffic split picked Version (see Job.Routed), and
	// Shadows are the versions the job also runs on (Job.Shadows).
	Routed   bool
	Shadows  []int64
	Priority record.Priority
	// Deadline, when set, is when a job not started expires.
	Deadline time.Time
	// Webhook is called when the job finishes.
	Webhook string
	// Batch and Lines, for a job made from a batch file, are the batch and
	// how many of its lines the job packs.
	Batch string
	Lines int
	// BatchSeq numbers the job among its batch's, from 1.
	BatchSeq int64
	// ReplayOf is the failed job a replay runs again.
	ReplayOf string
	// ClientID and Rows are the request's "id" and batch dimension; New
	// takes them from the request when they are not given.
	ClientID string
	Rows     int
	// Trace is the W3C trace context the job continues, as message
	// headers.
	Trace nats.Header
}

// New makes a job of req as spec says, and its record as it is queued. Every way into the queue (the API, batch files, the
// native client, a replay) makes its jobs here; Queue.Submit queues them.
func New(req *tensor.Request, spec Spec) (*Job, *record.Record) {
	if spec.ClientID == "" {
		spec.ClientID = req.ID
	}
	if spec.Rows == 0 && len(req.Inputs) > 0 && len(req.Inputs[0].Shape) > 0 {
		spec.Rows = int(req.Inputs[0].Shape[0])
	}
	if spec.ID == "" {
		spec.ID = ulid.Make().String()
	}
	rec := NewRecord(spec.ID, spec)
	return &Job{ID: rec.ID, Model: spec.Model, Version: spec.Version, Routed: spec.Routed, Shadows: spec.Shadows, Request: req, Priority: spec.Priority, Trace: spec.Trace}, rec
}

// NewRecord is the record of a new job id, queued now, as spec says.
func NewRecord(id string, spec Spec) *record.Record {
	rec := &record.Record{
		ID: id, Model: spec.Model, Status: record.Queued, CreatedAt: time.Now().UTC(),
		ClientID: spec.ClientID, Rows: spec.Rows, Priority: spec.Priority, Webhook: spec.Webhook,
		Batch: spec.Batch, Lines: spec.Lines, BatchSeq: spec.BatchSeq, ReplayOf: spec.ReplayOf,
	}
	if spec.Version > 0 {
		rec.ModelVersion = strconv.FormatInt(spec.Version, 10)
	}
	if !spec.Deadline.IsZero() {
		d := spec.Deadline.UTC()
		rec.Deadline = &d
	}
	return rec
}
