// Package record is a job's and a batch file's records as inferq's HTTP
// API serves them, and a job's life: the transition table every change of
// a job's status goes through (lifecycle.go). It imports nothing of NATS
// or Prometheus, so that a client of the HTTP API (package client) needs
// neither; package jobs keeps these records in JetStream.
package record

import (
	"errors"
	"fmt"
	"slices"
	"time"
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
	// Steps, for a job of a pipeline, are its steps as far as they have
	// gone, in the order they ran.
	Steps []Step `json:"steps,omitempty"`
	// Result is where the result of a succeeded job is stored. It is kept
	// in the bucket and not shown to clients, who read the result through
	// ResultURL.
	Result *ResultRef `json:"result,omitempty"`
}

// Step is one step of a pipeline job, as its record shows it.
type Step struct {
	Name       string     `json:"name"`
	Status     Status     `json:"status"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Attempts   int        `json:"attempts"`
	Error      string     `json:"error,omitempty"`
}

// Step returns the step called name, added (queued) when the record has
// none yet. It copies Steps first: a record copied by value (as updates
// are made) shares them with the record it was copied from.
func (r *Record) Step(name string) *Step {
	r.Steps = slices.Clone(r.Steps)
	for i := range r.Steps {
		if r.Steps[i].Name == name {
			return &r.Steps[i]
		}
	}
	r.Steps = append(r.Steps, Step{Name: name, Status: Queued})
	return &r.Steps[len(r.Steps)-1]
}

// StartStep notes that a pipeline job's step begins its attempt.
func (r *Record) StartStep(name string, at time.Time, attempt int) {
	s := r.Step(name)
	s.Status, s.StartedAt, s.FinishedAt, s.Attempts, s.Error = Running, &at, nil, attempt, ""
}

// EndStep notes how a pipeline job's step ended, after attempt attempts
// (those it had, when more), and why it failed, if it did.
func (r *Record) EndStep(name string, status Status, at time.Time, attempt int, reason string) {
	s := r.Step(name)
	s.Status, s.FinishedAt, s.Attempts, s.Error = status, &at, max(s.Attempts, attempt), reason
}

// AdvanceStep moves a pipeline job on from step done, succeeded after
// attempt attempts, to waiting for step next (record.Advance), whose
// attempts count from none.
func (r *Record) AdvanceStep(done, next string, at time.Time, attempt int) error {
	if _, err := r.Apply(Advance, at, ""); err != nil {
		return err
	}
	r.EndStep(done, Succeeded, at, attempt, "")
	r.Step(next).Status = Queued
	r.Attempts = 0
	return nil
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

// ErrConflict is returned by an update function to leave a record as it
// is, such as when a cancelled job is about to start.
var ErrConflict = errors.New("job is in the wrong state")
