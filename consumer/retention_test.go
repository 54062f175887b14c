package consumer

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/storage"
)

func TestRetentionSweep(t *testing.T) {
	ctx := context.Background()
	store, err := storage.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	keep := 24 * time.Hour
	named := func(at time.Time) string { return ulid.MustNew(ulid.Timestamp(at), nil).String() }
	old, fresh := now.Add(-keep-time.Minute), now.Add(-keep+time.Minute)
	day := func(at time.Time) string { return at.Format("2006-01-02") }
	results := jobs.ResultPrefix("m")
	objects := []struct {
		key  string
		gone bool
	}{
		{results + named(old) + ".json", true},
		{results + named(old) + ".jsonl", true},
		{results + named(fresh) + ".json", false},
		{results + "not-a-ulid.json", false},
		{jobs.ResultPrefix("other") + named(old) + ".json", false},
		{CapturePrefix("m") + "1/" + day(old) + "/" + named(old) + ".jsonl", true},
		{CapturePrefix("m") + "2/" + day(old.AddDate(0, 0, -3)) + "/" + named(old.AddDate(0, 0, -3)) + ".jsonl", true},
		{CapturePrefix("m") + "1/" + day(fresh) + "/" + named(fresh) + ".jsonl", false},
		{CapturePrefix("m") + "3/" + day(old) + "/" + named(old) + ".jsonl", false}, // no such version
	}
	for _, o := range objects {
		if err := store.Put(ctx, o.key, strings.NewReader("{}")); err != nil {
			t.Fatal(err)
		}
	}
	r := retention{Model: "m", Versions: []string{"1", "2"}, Keep: keep, Store: store, Logger: slog.New(slog.DiscardHandler)}
	if n := r.sweep(ctx, now); n != 4 {
		t.Errorf("deleted %d objects, want 4", n)
	}
	for _, o := range objects {
		rc, err := store.Get(ctx, o.key)
		if err == nil {
			rc.Close()
		}
		if kept := err == nil; kept == o.gone {
			t.Errorf("%s kept: %v, want %v (%v)", o.key, kept, !o.gone, err)
		}
	}
}
