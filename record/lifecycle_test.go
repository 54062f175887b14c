package record

import (
	"errors"
	"testing"
	"time"
)

// TestTransitions checks every status and event pair against the table a
// person reads: what is allowed, to what, and what it writes.
func TestTransitions(t *testing.T) {
	type want struct {
		to     Status
		writes Effects
	}
	allowed := map[Status]map[Event]want{
		Queued: {
			Start:   {Running, 0},
			Succeed: {Succeeded, Announce | Ack},
			Fail:    {Failed, WriteDeadLetter | Announce | Ack},
			Expire:  {Expired, Announce | Ack},
			Cancel:  {Cancelled, Announce},
			Refuse:  {Failed, 0},
		},
		Running: {
			Start:   {Running, 0},
			Requeue: {Queued, HandBack},
			Advance: {Queued, Ack},
			Succeed: {Succeeded, Announce | Ack},
			Fail:    {Failed, WriteDeadLetter | Announce | Ack},
			Expire:  {Expired, Announce | Ack},
		},
	}
	for _, from := range Statuses {
		for _, ev := range Events {
			w, ok := allowed[from][ev]
			got, err := Next(from, ev)
			switch {
			case ok && err != nil:
				t.Errorf("%s on %s refused: %v; want %s", from, ev, err, w.to)
			case ok && (got.To != w.to || got.Writes != w.writes):
				t.Errorf("%s on %s: to %s writing %b; want %s writing %b", from, ev, got.To, got.Writes, w.to, w.writes)
			case !ok && !errors.Is(err, ErrConflict):
				t.Errorf("%s on %s allowed (to %s); want it refused", from, ev, got.To)
			}
		}
	}
}

// TestFinalStatusesChangeNoMore: no event moves a final job.
func TestFinalStatusesChangeNoMore(t *testing.T) {
	for _, s := range Statuses {
		if !s.Final() {
			continue
		}
		for _, ev := range Events {
			if _, err := Next(s, ev); err == nil {
				t.Errorf("%s job moved on %s", s, ev)
			}
		}
	}
}

func TestApply(t *testing.T) {
	at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	earlier := at.Add(-time.Minute)
	for _, c := range []struct {
		name    string
		rec     Record
		ev      Event
		reason  string
		want    Record
		refused bool
	}{
		{"start", Record{Status: Queued}, Start, "", Record{Status: Running, StartedAt: &at}, false},
		{"start again after a crash", Record{Status: Running, StartedAt: &earlier}, Start, "", Record{Status: Running, StartedAt: &at}, false},
		{"requeue", Record{Status: Running, StartedAt: &earlier}, Requeue, "", Record{Status: Queued}, false},
		{"advance keeps the start", Record{Status: Running, StartedAt: &earlier}, Advance, "", Record{Status: Queued, StartedAt: &earlier}, false},
		{"next step keeps the first start", Record{Status: Queued, StartedAt: &earlier}, Start, "", Record{Status: Running, StartedAt: &earlier}, false},
		{"succeed", Record{Status: Running, StartedAt: &earlier}, Succeed, "", Record{Status: Succeeded, StartedAt: &earlier, FinishedAt: &at}, false},
		{"fail with reason", Record{Status: Running}, Fail, "boom", Record{Status: Failed, FinishedAt: &at, Error: "boom"}, false},
		{"cancel", Record{Status: Queued}, Cancel, "cancelled by request", Record{Status: Cancelled, FinishedAt: &at, Error: "cancelled by request"}, false},
		{"refused: cancel a running job", Record{Status: Running, StartedAt: &earlier}, Cancel, "x", Record{Status: Running, StartedAt: &earlier}, true},
		{"refused: succeed a cancelled job", Record{Status: Cancelled, FinishedAt: &earlier}, Succeed, "", Record{Status: Cancelled, FinishedAt: &earlier}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := c.rec
			_, err := rec.Apply(c.ev, at, c.reason)
			if c.refused != (err != nil) {
				t.Fatalf("err %v, want refused %v", err, c.refused)
			}
			if c.refused && !errors.Is(err, ErrConflict) {
				t.Fatalf("refusal %v is not ErrConflict", err)
			}
			if rec.Status != c.want.Status || !sameTime(rec.StartedAt, c.want.StartedAt) || !sameTime(rec.FinishedAt, c.want.FinishedAt) || rec.Error != c.want.Error {
				t.Errorf("got %+v, want %+v", rec, c.want)
			}
		})
	}
}

func sameTime(a, b *time.Time) bool {
	return (a == nil) == (b == nil) && (a == nil || a.Equal(*b))
}

func TestAsRead(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	old, recent := now.Add(-2*time.Hour), now.Add(-time.Minute)
	for _, c := range []struct {
		name string
		rec  Record
		keep time.Duration
		want Status
	}{
		{"kept for ever", Record{Status: Succeeded, FinishedAt: &old}, 0, Succeeded},
		{"within retention", Record{Status: Succeeded, FinishedAt: &recent}, time.Hour, Succeeded},
		{"past retention", Record{Status: Succeeded, FinishedAt: &old, Result: &ResultRef{Key: "k"}}, time.Hour, Expired},
		{"failed stays failed", Record{Status: Failed, FinishedAt: &old}, time.Hour, Failed},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := c.rec
			got := rec.AsRead(now, c.keep)
			if got.Status != c.want {
				t.Errorf("reads %s, want %s", got.Status, c.want)
			}
			if c.want == Expired && (got.Result != nil || got.Error == "") {
				t.Errorf("expired read keeps its result or has no reason: %+v", got)
			}
			if rec.Status != c.rec.Status || rec.Result != c.rec.Result {
				t.Errorf("AsRead changed the record: %+v", rec)
			}
		})
	}
}

// TestSteps: a pipeline job's steps as the workers and leases note them,
// and a copy of a record (as updates make) leaves its original's steps
// alone.
func TestSteps(t *testing.T) {
	at := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	orig := Record{Status: Queued}
	orig.StartStep("det", at, 1)
	r := orig // a copy, as an update makes it
	r.Status = Running
	if err := r.AdvanceStep("det", "rec", at, 2); err != nil {
		t.Fatal(err)
	}
	if orig.Steps[0].Status != Running || len(orig.Steps) != 1 {
		t.Fatalf("the original's steps changed: %+v", orig.Steps)
	}
	if r.Status != Queued || r.Attempts != 0 || len(r.Steps) != 2 || r.Steps[0].Status != Succeeded || r.Steps[0].Attempts != 2 || r.Steps[1].Status != Queued {
		t.Fatalf("advanced: %+v", r)
	}
	r.EndStep("rec", Failed, at, 1, "boom")
	if s := r.Steps[1]; s.Status != Failed || s.Error != "boom" || s.Attempts != 1 || s.FinishedAt == nil {
		t.Fatalf("ended: %+v", s)
	}
	if err := (&Record{Status: Queued}).AdvanceStep("a", "b", at, 1); !errors.Is(err, ErrConflict) {
		t.Errorf("a queued job advanced: %v", err)
	}
}
