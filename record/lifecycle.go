package record

import (
	"fmt"
	"time"
)

// A job's life is this file: every change of a job's status, by the API,
// the workers, batch files and replays, is an Event applied to its record
// through Apply, which checks it against the transition table below. The
// table says what the change must write besides the record, and the
// finisher of each caller writes in the order Effects states.

// Event is something that happens to a job.
type Event string

// Events.
const (
	// Start: a worker begins a run. From running, a run that began
	// before and never finished (its worker died) starts again.
	Start Event = "start"
	// Requeue: the run's result could not be stored; the job waits again,
	// the attempt not counted.
	Requeue Event = "requeue"
	// Succeed: the job's result is stored.
	Succeed Event = "succeed"
	// Fail: the job can never succeed: its last attempt failed, it cannot
	// run (a bad request, a missing model version), or it gave up.
	Fail Event = "fail"
	// Expire: its deadline passed before it started.
	Expire Event = "expire"
	// Cancel: a client (or its batch's cancel) stopped it before it
	// started.
	Cancel Event = "cancel"
	// Refuse: JetStream refused its message (a full queue) after its
	// record was stored; it never runs.
	Refuse Event = "refuse"
	// Advance: a pipeline job's model step is done and its next model
	// step's message is queued: the job waits again, on that model's
	// queue, keeping its start time (and may be cancelled there).
	Advance Event = "advance"
)

// Events lists every event, for tests and docs.
var Events = []Event{Start, Requeue, Succeed, Fail, Expire, Cancel, Refuse, Advance}

// Statuses lists every status, for tests and docs.
var Statuses = []Status{Queued, Running, Succeeded, Failed, Cancelled, Expired}

// Effects are what a transition writes besides the record, in the order
// they must be written: a dead letter before the record (a job whose
// letter cannot be written is not yet failed), the announcement after it
// (it reports the record), the message settled last (what is not settled
// comes back, and finds the record as the last write left it).
type Effects uint8

// Effects, in write order.
const (
	// WriteDeadLetter: the job's request is kept for replay.
	WriteDeadLetter Effects = 1 << iota
	// Announce: the final record is published on the model's results
	// subject (streams, webhooks, batch counts).
	Announce
	// Ack: the job's message, if the writer holds it, is acknowledged.
	Ack
	// HandBack: the job's message, if the writer holds it, returns to
	// the queue.
	HandBack
)

// Transition is one allowed change: from a status, on an event, to a
// status, with what else it writes.
type Transition struct {
	From   Status
	On     Event
	To     Status
	Writes Effects
}

// transitions is the table. A pair not in it is refused: a final job
// changes no more, and only a queued job can be cancelled, expired or
// refused.
var transitions = []Transition{
	{Queued, Start, Running, 0},
	{Running, Start, Running, 0},
	{Running, Requeue, Queued, HandBack},
	{Running, Advance, Queued, Ack},
	{Queued, Succeed, Succeeded, Announce | Ack},
	{Running, Succeed, Succeeded, Announce | Ack},
	{Queued, Fail, Failed, WriteDeadLetter | Announce | Ack},
	{Running, Fail, Failed, WriteDeadLetter | Announce | Ack},
	{Queued, Expire, Expired, Announce | Ack},
	{Running, Expire, Expired, Announce | Ack},
	{Queued, Cancel, Cancelled, Announce},
	{Queued, Refuse, Failed, 0},
}

// Next returns the transition from status from on event ev, or an error
// wrapping ErrConflict when the table has none.
func Next(from Status, ev Event) (Transition, error) {
	for _, t := range transitions {
		if t.From == from && t.On == ev {
			return t, nil
		}
	}
	return Transition{}, fmt.Errorf("%w: cannot %s a %s job", ErrConflict, ev, from)
}

// Apply changes rec as event ev at time at does, if the table allows it:
// its status, and the times that go with it (started_at on Start,
// finished_at on a final status, both cleared on Requeue). reason, for a
// final status other than succeeded, is the record's error. It returns
// the transition, or an error wrapping ErrConflict, leaving rec as it
// was.
func (r *Record) Apply(ev Event, at time.Time, reason string) (Transition, error) {
	from := r.Status
	t, err := Next(from, ev)
	if err != nil {
		return t, err
	}
	r.Status = t.To
	switch {
	case ev == Start && from == Queued && r.StartedAt != nil:
		// A pipeline job starting its next step (see Advance) keeps the
		// time its first step started.
	case ev == Start:
		r.StartedAt = &at
	case ev == Requeue:
		r.StartedAt = nil
	case t.To.Final():
		r.FinishedAt = &at
		r.Error = reason
	}
	return t, nil
}

// AsRead is the record as clients read it at now, when its model keeps
// results for resultRetention (0: for ever): a succeeded job whose result
// is past it reads expired, its result deleted or about to be. It is the
// one status shown that is not stored: the record itself stays
// succeeded, and rec is not changed.
func (r *Record) AsRead(now time.Time, resultRetention time.Duration) *Record {
	if r.Status != Succeeded || r.FinishedAt == nil || resultRetention <= 0 || now.Sub(*r.FinishedAt) <= resultRetention {
		return r
	}
	c := *r
	c.Status, c.Result = Expired, nil
	c.Error = fmt.Sprintf("the result was deleted: model %s keeps results for %s (result_retention)", r.Model, resultRetention)
	return &c
}
