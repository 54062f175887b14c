package consumer

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/inferq/inferq/jobs"
)

// expirer lists and deletes stored objects; the storage package's stores
// do.
type expirer interface {
	List(ctx context.Context, prefix string) ([]string, error)
	Delete(ctx context.Context, key string) error
}

// retention deletes a model's result objects, and its captured jobs, once
// they are older than Keep. An object's name is the ULID of when it was
// written. Several workers of a model may sweep at once; deleting twice
// is harmless.
type retention struct {
	Model string
	// Versions are the model's versions, whose captured jobs are kept
	// apart (capture/<model>/<version>/<day>/).
	Versions []string
	Keep     time.Duration
	Store    expirer
	Logger   *slog.Logger
}

// Run sweeps every tenth of Keep (at least a second, at most a minute)
// until ctx ends.
func (r *retention) Run(ctx context.Context) error {
	t := time.NewTicker(min(max(r.Keep/10, time.Second), time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if deleted := r.sweep(ctx, time.Now()); deleted > 0 {
			r.Logger.Info("expired results deleted", "objects", deleted, "older_than", r.Keep)
		}
	}
}

// sweep deletes what was written before now less Keep and returns how
// many objects it deleted.
func (r *retention) sweep(ctx context.Context, now time.Time) int {
	cutoff := now.Add(-r.Keep)
	prefix := jobs.ResultPrefix(r.Model)
	keys, err := r.Store.List(ctx, prefix)
	if err != nil {
		r.Logger.Warn("listing results to expire", "err", err)
	}
	deleted := r.expire(ctx, prefix, keys, cutoff)
	// Captured jobs lie in a folder per day: those of the 30 days up to
	// the cutoff's are looked at.
	for _, version := range r.Versions {
		for day := cutoff.UTC().AddDate(0, 0, -30); !day.After(cutoff); day = day.AddDate(0, 0, 1) {
			prefix := CapturePrefix(r.Model) + version + "/" + day.Format("2006-01-02") + "/"
			keys, err := r.Store.List(ctx, prefix)
			if err != nil {
				continue
			}
			deleted += r.expire(ctx, prefix, keys, cutoff)
		}
	}
	return deleted
}

// expire deletes the keys under prefix named by a ULID before cutoff.
func (r *retention) expire(ctx context.Context, prefix string, keys []string, cutoff time.Time) int {
	deleted := 0
	for _, key := range keys {
		name := strings.TrimPrefix(key, prefix)
		name = strings.TrimSuffix(strings.TrimSuffix(name, ".jsonl"), ".json")
		id, err := ulid.ParseStrict(name)
		if err != nil || ulid.Time(id.Time()).After(cutoff) {
			continue
		}
		if err := r.Store.Delete(ctx, key); err != nil {
			r.Logger.Warn("deleting expired results", "key", key, "err", err)
			continue
		}
		deleted++
	}
	return deleted
}
