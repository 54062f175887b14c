package consumer

import (
	"context"
	"strings"
	"time"

	"github.com/inferq/inferq/jobs"
	"github.com/oklog/ulid/v2"
)

// sweep deletes the model's result objects older than keep, every tenth of
// keep (at least a second, at most a minute), until ctx ends. An object's
// name is the ULID of its batch, which says when it was written. Several
// workers of a model may sweep at once; deleting twice is harmless.
func (w *Worker) sweep(ctx context.Context, keep time.Duration) {
	t := time.NewTicker(min(max(keep/10, time.Second), time.Minute))
	defer t.Stop()
	prefix := jobs.ResultPrefix(w.name)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		keys, err := w.opts.Results.List(ctx, prefix)
		if err != nil {
			w.log.Warn("listing results to expire", "err", err)
			continue
		}
		cutoff := time.Now().Add(-keep)
		deleted := 0
		for _, key := range keys {
			name := strings.TrimPrefix(key, prefix)
			name = strings.TrimSuffix(strings.TrimSuffix(name, ".jsonl"), ".json")
			id, err := ulid.ParseStrict(name)
			if err != nil || ulid.Time(id.Time()).After(cutoff) {
				continue
			}
			if err := w.opts.Results.Delete(ctx, key); err != nil {
				w.log.Warn("deleting expired results", "key", key, "err", err)
				continue
			}
			deleted++
		}
		deleted += w.expireCaptured(ctx, cutoff)
		if deleted > 0 {
			w.log.Info("expired results deleted", "objects", deleted, "older_than", keep)
		}
	}
}
