package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
)

// TestBatchCountsEachJobOnce: the tracker counts a job into its batch once,
// whatever comes again: a group of announcements handed back because
// another batch's update failed (batch b's record unreadable for a
// while), and a job announced a second time (a repeat past the duplicate
// window).
func TestBatchCountsEachJobOnce(t *testing.T) {
	q, _ := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	now := time.Now().UTC()
	for _, id := range []string{"a", "b"} {
		if err := q.Batches.Create(ctx, &record.BatchRecord{ID: id, Model: "m", Status: record.BatchRunning, CreatedAt: now, QueuedAt: &now, Counts: record.BatchCounts{Total: 10}}); err != nil {
			t.Fatal(err)
		}
	}
	// Batch b cannot be counted until its record is readable again.
	good, err := q.Batches.kv.Get(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Batches.kv.Put(ctx, "b", []byte("not a record")); err != nil {
		t.Fatal(err)
	}
	c, err := q.BatchConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tracking := make(chan error, 1)
	go func() { tracking <- q.TrackBatches(ctx, c, slog.New(slog.DiscardHandler)) }()
	announce := func(batch string, seq int64, status record.Status) {
		t.Helper()
		rec := &record.Record{ID: fmt.Sprintf("%s-%d", batch, seq), Model: "m", Status: status, Batch: batch, BatchSeq: seq, Lines: 2, CreatedAt: now}
		if err := q.Announce(rec, nil); err != nil {
			t.Fatal(err)
		}
	}
	for seq := int64(1); seq <= 4; seq++ {
		announce("a", seq, record.Succeeded)
		announce("b", seq, record.Succeeded)
	}
	counts := func(id string) record.BatchCounts {
		b, err := q.Batches.Get(ctx, id)
		if err != nil {
			return record.BatchCounts{Total: -1}
		}
		return b.Counts
	}
	testenv.Eventually(t, 10*time.Second, "batch a counted", func() bool { return counts("a").Succeeded > 0 })
	// The group fails and comes back.
	testenv.Eventually(t, 10*time.Second, "the group handed back", func() bool {
		info, err := c.Info(ctx)
		return err == nil && info.NumRedelivered > 0
	})
	if _, err := q.Batches.kv.Put(ctx, "b", good.Value()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "batch b counted", func() bool { return counts("b").Succeeded == 8 })
	// A job announced again (a new message: a different id defeats the
	// duplicate window), and a cancelled one to end the batches.
	msg, err := announcement(&record.Record{ID: "a-1", Model: "m", Status: record.Succeeded, Batch: "a", BatchSeq: 1, Lines: 2, CreatedAt: now}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	announce("a", 5, record.Cancelled)
	announce("b", 5, record.Cancelled)
	testenv.Eventually(t, 10*time.Second, "both batches final", func() bool {
		a, errA := q.Batches.Get(ctx, "a")
		b, errB := q.Batches.Get(ctx, "b")
		return errA == nil && errB == nil && a.Final() && b.Final()
	})
	want := record.BatchCounts{Total: 10, Succeeded: 8, Cancelled: 2}
	for _, id := range []string{"a", "b"} {
		if got := counts(id); got != want {
			t.Errorf("batch %s counts %+v, want %+v", id, got, want)
		}
	}
	cancel()
	if err := <-tracking; err != nil {
		t.Fatal(err)
	}
}
