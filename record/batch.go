package record

import (
	"fmt"
	"time"
)

// Batch states. Succeeded, Failed and Cancelled are final.
const (
	BatchQueued    = "queued"    // the file is still being read
	BatchRunning   = "running"   // every line is queued or done
	BatchSucceeded = "succeeded" // every line has an outcome, at least one a success
	BatchFailed    = "failed"    // the file could not be read to the end (QueuedAt unset), or every line failed
	BatchCancelled = "cancelled"
)

// BatchCounts counts a batch's lines.
type BatchCounts struct {
	Total     int64 `json:"total"`
	Succeeded int64 `json:"succeeded"`
	Failed    int64 `json:"failed"`
	Cancelled int64 `json:"cancelled,omitempty"`
}

// Done is the lines with an outcome.
func (c BatchCounts) Done() int64 { return c.Succeeded + c.Failed + c.Cancelled }

// BatchRecord is a batch file's record, as the API serves it.
type BatchRecord struct {
	ID         string      `json:"id"`
	Model      string      `json:"model"`
	Status     string      `json:"status"`
	Counts     BatchCounts `json:"counts"`
	CreatedAt  time.Time   `json:"created_at"`
	QueuedAt   *time.Time  `json:"queued_at,omitempty"`
	FinishedAt *time.Time  `json:"finished_at,omitempty"`
	Error      string      `json:"error,omitempty"`
	// Jobs is the number of jobs the lines were packed into.
	Jobs int64 `json:"jobs"`
	// Index is the storage key of the batch's index: a JSON line per
	// input line, naming its job (and rows in it) or its error.
	Index string `json:"-"`
	// Counted is the jobs (by Record.BatchSeq) whose outcomes are in
	// Counts; kept with the record, not served.
	Counted SeqSet `json:"-"`
	// Source is the prefix or s3:// URL a batch over stored objects
	// lists, a line per object.
	Source string `json:"source,omitempty"`
	// Feed is how far the listing of Source has been queued; kept with
	// the record, not served.
	Feed *Feed `json:"-"`
	// ResultsFrom is the results stream's last sequence when the batch
	// was created: its jobs' announcements come after it, and a followed
	// output replays them from there. Kept with the record, not served.
	ResultsFrom uint64 `json:"-"`
}

// Feed is how far a batch over stored objects has been listed and
// queued: every object up to After (in key order) is a line, queued as
// its job or failed, and its lines are in index segments 0 to
// Segments-1. It is advanced in the same write as the counts of the
// lines failed in listing, after the page's jobs are queued and its
// segment stored: a feeder that stops between lists the page again,
// and queues the same jobs (their ids come from the batch and line).
type Feed struct {
	After    string `json:"after,omitempty"`
	Lines    int64  `json:"lines"`
	Segments int64  `json:"segments"`
}

// UploadCut reports whether the batch's file stopped being read before
// its end: the batch failed or was cancelled while queued. Its lines
// still queued are not to run: nobody can read their output.
func (b *BatchRecord) UploadCut() bool {
	return !b.Read() && (b.Status == BatchFailed || b.Status == BatchCancelled)
}

// Final reports whether the batch will change no more.
func (b *BatchRecord) Final() bool {
	return b.Status == BatchSucceeded || b.Status == BatchFailed || b.Status == BatchCancelled
}

// Settle marks a running batch final once every line has an outcome:
// succeeded, or failed when every line failed (as OpenAI's Batch API and
// SageMaker call a batch none of whose requests could be served). Its
// output, the reason of each line, stays to be read.
func (b *BatchRecord) Settle(now time.Time) {
	if b.Status != BatchRunning || b.Counts.Done() < b.Counts.Total {
		return
	}
	b.Status, b.FinishedAt = BatchSucceeded, &now
	if c := b.Counts; c.Total > 0 && c.Failed == c.Total {
		b.Status = BatchFailed
		b.Error = fmt.Sprintf("every one of its %d lines failed; the output says why, line by line", c.Total)
	}
}

// Read reports whether the batch's file was read to the end, so that its
// output (possibly all errors) can be served.
func (b *BatchRecord) Read() bool { return b.QueuedAt != nil }

// Count adds the outcome of a finished job of the batch to its counts,
// unless it was counted before.
func (b *BatchRecord) Count(rec *Record) {
	if rec.BatchSeq > 0 && !b.Counted.Add(rec.BatchSeq) {
		return
	}
	n := int64(max(rec.Lines, 1))
	switch rec.Status {
	case Succeeded:
		failed := min(int64(rec.LinesFailed), n)
		b.Counts.Succeeded += n - failed
		b.Counts.Failed += failed
	case Cancelled:
		b.Counts.Cancelled += n
	default:
		b.Counts.Failed += n
	}
}
