package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
)

// TestUpdateAll: a set of changes is stored as each would be alone: from
// an up-to-date record in one go, from a stale one (written meanwhile) by
// reading it again, from none by reading it, and not at all when the
// change refuses; an unknown job says so.
func TestUpdateAll(t *testing.T) {
	q, _ := setup(t)
	ctx := context.Background()
	type start struct {
		rec *record.Record
		rev uint64
	}
	starts := map[string]start{}
	for _, id := range []string{"fresh", "stale", "unread", "refused"} {
		rec := &record.Record{ID: id, Model: "m", Status: record.Queued, CreatedAt: time.Now().UTC()}
		_, rev, err := q.Records.create(ctx, rec)
		if err != nil {
			t.Fatal(err)
		}
		starts[id] = start{rec, rev}
	}
	// Someone else writes "stale" after it was read.
	if _, err := q.Records.Update(ctx, "stale", func(r *record.Record) error { r.Attempts = 5; return nil }); err != nil {
		t.Fatal(err)
	}
	run := func(r *record.Record) error {
		if r.Status.Final() {
			return record.ErrConflict
		}
		r.Status = record.Running
		r.Attempts++
		return nil
	}
	refuse := func(*record.Record) error { return record.ErrConflict }
	changes := []Change{
		{ID: "fresh", Rec: starts["fresh"].rec, Rev: starts["fresh"].rev, Fn: run},
		{ID: "stale", Rec: starts["stale"].rec, Rev: starts["stale"].rev, Fn: run},
		{ID: "unread", Fn: run},
		{ID: "refused", Rec: starts["refused"].rec, Rev: starts["refused"].rev, Fn: refuse},
		{ID: "missing", Fn: run},
	}
	out := q.Records.UpdateAll(ctx, changes)
	tests := []struct {
		id       string
		err      error
		status   record.Status
		attempts int
	}{
		{"fresh", nil, record.Running, 1},
		{"stale", nil, record.Running, 6},
		{"unread", nil, record.Running, 1},
		{"refused", record.ErrConflict, record.Queued, 0},
		{"missing", ErrJobNotFound, "", 0},
	}
	for i, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			c := out[i]
			if !errors.Is(c.Err, tt.err) || (tt.err == nil) != (c.Err == nil) {
				t.Fatalf("error %v, want %v", c.Err, tt.err)
			}
			if tt.err == ErrJobNotFound {
				return
			}
			stored, rev, err := q.Records.get(ctx, tt.id)
			if err != nil {
				t.Fatal(err)
			}
			if stored.Status != tt.status || stored.Attempts != tt.attempts {
				t.Errorf("stored %s with %d attempts, want %s with %d", stored.Status, stored.Attempts, tt.status, tt.attempts)
			}
			if tt.err == nil && (c.Rev != rev || c.Rec.Status != tt.status || c.Rec.Attempts != tt.attempts) {
				t.Errorf("returned %+v at revision %d; stored revision %d", c.Rec, c.Rev, rev)
			}
		})
	}
	// The caller's records are left as they were read.
	if starts["fresh"].rec.Status != record.Queued {
		t.Errorf("the caller's record was changed: %+v", starts["fresh"].rec)
	}
}

// TestAnnounceAll: each finished job is stored once in the results
// stream, with its response inline, however often it is announced.
func TestAnnounceAll(t *testing.T) {
	q, _ := setup(t)
	ctx := context.Background()
	var recs []*record.Record
	var responses [][]byte
	for i := range 40 {
		recs = append(recs, &record.Record{ID: fmt.Sprintf("job-%d", i), Model: "m", Status: record.Succeeded})
		responses = append(responses, fmt.Appendf(nil, `{"id":"job-%d"}`, i))
	}
	for round := range 2 { // the second round is dropped as repeats
		for i, err := range q.AnnounceAll(ctx, recs, responses) {
			if err != nil {
				t.Fatalf("round %d, job %d: %v", round, i, err)
			}
		}
	}
	seen := map[string]int{}
	fctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err := q.FollowResults(fctx, "m", 0, true, func(_ uint64, data []byte) error {
		var a Announcement
		if err := json.Unmarshal(data, &a); err != nil {
			return err
		}
		if string(a.Response) != `{"id":"`+a.ID+`"}` {
			t.Errorf("job %s announced with response %s", a.ID, a.Response)
		}
		seen[a.ID]++
		return nil
	})
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	if len(seen) != len(recs) {
		t.Errorf("%d jobs announced, want %d", len(seen), len(recs))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("job %s announced %d times", id, n)
		}
	}
}

// A set whose acknowledgements never come (a stream's leader killed with
// the writes in flight: here, a subscriber that takes them and never
// answers) ends within the ack timeout, each change and announcement with
// an error, so that a worker hands its jobs back instead of waiting for
// ever.
func TestSetsAcknowledgementsLost(t *testing.T) {
	nc := testenv.Connect(t, testenv.JetStream(t))
	sub, err := nc.SubscribeSync(">") // every write, none answered
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	js := newJetStream(t, nc)
	const timeout = 300 * time.Millisecond
	r := &Records{js: js, ackTimeout: timeout}
	q := &Queue{js: js, ackTimeout: timeout}
	rec := &record.Record{ID: "j", Model: "m", Status: record.Queued, CreatedAt: time.Now().UTC()}
	ctx := context.Background() // no deadline: the timeout is the set's own

	start := time.Now()
	out := r.UpdateAll(ctx, []Change{{ID: "j", Rec: rec, Rev: 1, Fn: func(r *record.Record) error { r.Status = record.Running; return nil }}})
	if out[0].Err == nil || time.Since(start) > 10*timeout {
		t.Fatalf("UpdateAll = %+v after %v, want an error within about %v", out[0], time.Since(start), timeout)
	}
	start = time.Now()
	errs := q.AnnounceAll(ctx, []*record.Record{rec}, [][]byte{nil})
	if errs[0] == nil || time.Since(start) > 10*timeout {
		t.Fatalf("AnnounceAll = %v after %v, want an error within about %v", errs, time.Since(start), timeout)
	}
	t.Logf("UpdateAll: %v; AnnounceAll: %v", out[0].Err, errs[0])
}
