package record

import "time"

// DeadLetter is a failed job kept for inspection and replay.
type DeadLetter struct {
	// Seq is the letter's place in the dead-letter stream.
	Seq   uint64 `json:"seq"`
	JobID string `json:"job_id"`
	Model string `json:"model"`
	// Step, for a job of a pipeline (Model), is the step that failed,
	// where its replay resumes.
	Step     string    `json:"step,omitempty"`
	Error    string    `json:"error"`
	Attempts int       `json:"attempts"`
	FailedAt time.Time `json:"failed_at"`
	Priority Priority  `json:"priority,omitempty"`
	// Bytes is the size of the request as queued (0 for one whose body is
	// kept in storage).
	Bytes int `json:"bytes"`
	// Batch is the batch file the job came from, if any.
	Batch string `json:"batch_id,omitempty"`
}
