package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/inferq/inferq/internal/pull"
	"github.com/inferq/inferq/record"
	"github.com/nats-io/nats.go/jetstream"
)

// BatchBucket holds batch records by batch id.
const BatchBucket = "INFERQ_BATCHES"

// HeaderBatch, on an announcement, is the batch its job belongs to.
const HeaderBatch = "Inferq-Batch-Id"

// Batches keeps batch records in a key-value bucket.
type Batches struct {
	kv jetstream.KeyValue
	js jetstream.JetStream
}

// ErrBatchNotFound is returned for an id that has no batch record.
var ErrBatchNotFound = errors.New("batch not found")

// Create stores a new batch record.
func (b *Batches) Create(ctx context.Context, rec *record.BatchRecord) error {
	v, err := json.Marshal(batchStored(rec))
	if err != nil {
		return err
	}
	if _, err := b.kv.Create(ctx, rec.ID, v); err != nil {
		return fmt.Errorf("store batch %s: %w", rec.ID, err)
	}
	return nil
}

// batchStored is how a record is stored: with its index key.
func batchStored(rec *record.BatchRecord) any {
	type stored record.BatchRecord
	return struct {
		*stored
		Index       string        `json:"index_key"`
		Counted     record.SeqSet `json:"counted,omitempty"`
		Feed        *record.Feed  `json:"feed,omitempty"`
		ResultsFrom uint64        `json:"results_from,omitempty"`
	}{(*stored)(rec), rec.Index, rec.Counted, rec.Feed, rec.ResultsFrom}
}

// Get returns the record of batch id.
func (b *Batches) Get(ctx context.Context, id string) (*record.BatchRecord, error) {
	rec, _, err := b.get(ctx, id)
	return rec, err
}

// Recent returns the newest batch records, at most n, newest first, of
// the models keep accepts. Batch ids are ULIDs: their order is their age.
func (b *Batches) Recent(ctx context.Context, n int, keep func(model string) bool) ([]*record.BatchRecord, error) {
	lister, err := b.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list batches: %w", err)
	}
	var ids []string
	for k := range lister.Keys() {
		if !strings.Contains(k, ".") { // not uploading.* nor feeding.*
			ids = append(ids, k)
		}
	}
	slices.Sort(ids)
	var out []*record.BatchRecord
	for i := len(ids) - 1; i >= 0 && len(out) < n; i-- {
		rec, _, err := b.get(ctx, ids[i])
		if err != nil || !keep(rec.Model) {
			continue
		}
		out = append(out, rec)
	}
	return out, nil
}

func (b *Batches) get(ctx context.Context, id string) (*record.BatchRecord, uint64, error) {
	e, err := b.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, fmt.Errorf("%w: %s", ErrBatchNotFound, id)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read batch %s: %w", id, err)
	}
	var s struct {
		record.BatchRecord
		Index       string        `json:"index_key"`
		Counted     record.SeqSet `json:"counted"`
		Feed        *record.Feed  `json:"feed"`
		ResultsFrom uint64        `json:"results_from"`
	}
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		return nil, 0, fmt.Errorf("decode batch %s: %w", id, err)
	}
	s.BatchRecord.Index, s.BatchRecord.Counted = s.Index, s.Counted
	s.BatchRecord.Feed, s.BatchRecord.ResultsFrom = s.Feed, s.ResultsFrom
	return &s.BatchRecord, e.Revision(), nil
}

// Update applies fn to batch id's record and stores it, retrying when
// another writer got there first. If fn returns an error the record is
// left alone. A running batch whose lines all have an outcome is marked
// succeeded.
func (b *Batches) Update(ctx context.Context, id string, fn func(*record.BatchRecord) error) (*record.BatchRecord, error) {
	for {
		rec, rev, err := b.get(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := fn(rec); err != nil {
			return rec, err
		}
		rec.Settle(time.Now().UTC())
		v, err := json.Marshal(batchStored(rec))
		if err != nil {
			return nil, err
		}
		if _, err := b.kv.Update(ctx, id, v, rev); errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("update batch %s: %w", id, err)
		}
		return rec, nil
	}
}

// BatchConsumer creates, or finds, the durable consumer that batch
// trackers share. It delivers only what is announced after it was first
// created, so an API process creates it before it accepts a batch file:
// otherwise, on a new system's first start, a batch finished before the
// tracker got going would never be counted.
func (q *Queue) BatchConsumer(ctx context.Context) (jetstream.Consumer, error) {
	c, err := q.js.CreateOrUpdateConsumer(ctx, ResultStream, jetstream.ConsumerConfig{
		Durable:       "inferq-batches",
		Description:   "inferq batch progress",
		FilterSubject: resultPrefix + ">",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("set up batch tracking: %w", err)
	}
	return c, nil
}

// TrackBatches counts the outcomes of batch jobs into their batch
// records, from the results stream, until ctx ends. Every API process runs
// it, on the durable consumer BatchConsumer gave; they share it, so each
// announcement is counted once. Announcements are taken as they arrive,
// in groups (pull.Loop), and counted with one update per batch.
func (q *Queue) TrackBatches(ctx context.Context, c jetstream.Consumer, log *slog.Logger) error {
	loop := pull.Loop{Consumer: c, Max: 256, Logger: log, What: "tracking batches"}
	return loop.Run(ctx, func(ctx context.Context, taken []jetstream.Msg) error {
		return q.countBatches(context.WithoutCancel(ctx), log, taken)
	})
}

// countBatches adds the outcomes that announcements report to their
// batches' counts, one update per batch. Each job is counted once,
// however often it is announced or its announcement delivered: the batch
// record keeps which of its jobs it has counted, in the same write as the
// counts. If an update fails it says so, and the announcements are handed
// back; those already counted are skipped when they come again.
func (q *Queue) countBatches(ctx context.Context, log *slog.Logger, taken []jetstream.Msg) error {
	outcomes := map[string][]*record.Record{}
	for _, m := range taken {
		id := m.Headers().Get(HeaderBatch)
		if id == "" {
			continue
		}
		var rec record.Record
		if json.Unmarshal(m.Data(), &rec) != nil {
			continue
		}
		outcomes[id] = append(outcomes[id], &rec)
	}
	var failed error
	for id, recs := range outcomes {
		_, err := q.Batches.Update(ctx, id, func(b *record.BatchRecord) error {
			for _, rec := range recs {
				b.Count(rec)
			}
			return nil
		})
		if err != nil && !errors.Is(err, ErrBatchNotFound) {
			log.Warn("counting batch progress", "batch", id, "err", err)
			failed = fmt.Errorf("count batch %s: %w", id, err)
		}
	}
	return failed
}

// uploadingPrefix begins the keys of the batches bucket that say a batch
// file is being read: uploading.<batch id>, its value when its reader
// last said so (RFC 3339). Batch ids are ULIDs: no batch record's key
// holds a '.'.
const uploadingPrefix = "uploading."

// Reading says that batch id's file is being read, now; the API process
// reading it says so every --upload-heartbeat, and Read when it has
// finished (whatever the outcome).
func (b *Batches) Reading(ctx context.Context, id string, now time.Time) error {
	_, err := b.kv.Put(ctx, uploadingPrefix+id, []byte(now.UTC().Format(time.RFC3339Nano)))
	return err
}

// Read says that batch id's file is no longer being read.
func (b *Batches) Read(ctx context.Context, id string) error {
	return b.kv.Purge(ctx, uploadingPrefix+id)
}

// FailCutUploads ends failed every batch still queued (its file being
// read) whose reader has not said so (Batches.Reading) for stalled: the
// API process reading it stopped (crashed, killed) before the end of the
// file, and its client never got an answer. The lines it queued and that
// have not started are cancelled by the workers that take them
// (record.BatchRecord.UploadCut). Only the uploads under way are read.
// It returns how many batches it ended.
func (q *Queue) FailCutUploads(ctx context.Context, now time.Time, stalled time.Duration) (int, error) {
	lister, err := q.Batches.kv.ListKeysFiltered(ctx, uploadingPrefix+">")
	if err != nil {
		return 0, fmt.Errorf("list batch uploads: %w", err)
	}
	n := 0
	for key := range lister.Keys() {
		id := strings.TrimPrefix(key, uploadingPrefix)
		e, err := q.Batches.kv.Get(ctx, key)
		if err != nil {
			continue
		}
		last, err := time.Parse(time.RFC3339Nano, string(e.Value()))
		if err == nil && now.Sub(last) <= stalled {
			continue
		}
		_, err = q.Batches.Update(ctx, id, func(b *record.BatchRecord) error {
			if b.Status != record.BatchQueued {
				return record.ErrConflict // ended meanwhile
			}
			b.Status, b.FinishedAt = record.BatchFailed, &now
			b.Error = fmt.Sprintf("its upload was cut off: the API process reading its file stopped (last heard of at %s); its lines that had not started do not run, and it has no output: upload the file again", last.Format(time.RFC3339Nano))
			return nil
		})
		switch {
		case err == nil:
			n++
			fallthrough
		case errors.Is(err, record.ErrConflict), errors.Is(err, ErrBatchNotFound):
			_ = q.Batches.Read(ctx, id)
		}
	}
	return n, nil
}

// feedingPrefix begins the keys of the batches bucket that say a batch
// over stored objects is being listed and queued: feeding.<batch id>, its
// value when its feeder last said so (RFC 3339). One API process feeds a
// batch at a time: it holds the key's revision, and every write it makes
// to the key is a compare-and-set on it.
const feedingPrefix = "feeding."

// ErrFeedTaken is returned to a feeder whose batch another process has
// taken over (it was silent too long).
var ErrFeedTaken = errors.New("another API process feeds this batch now")

// StartFeed says that this process begins feeding batch id; it returns
// the revision the feeder holds.
func (b *Batches) StartFeed(ctx context.Context, id string, now time.Time) (uint64, error) {
	rev, err := b.kv.Create(ctx, feedingPrefix+id, []byte(now.UTC().Format(time.RFC3339Nano)))
	if err != nil {
		return 0, fmt.Errorf("start feeding batch %s: %w", id, err)
	}
	return rev, nil
}

// Feeding says again that the holder of rev feeds batch id, now, and
// returns the new revision; ErrFeedTaken if another has taken it.
func (b *Batches) Feeding(ctx context.Context, id string, rev uint64, now time.Time) (uint64, error) {
	rev, err := b.kv.Update(ctx, feedingPrefix+id, []byte(now.UTC().Format(time.RFC3339Nano)), rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, fmt.Errorf("batch %s: %w", id, ErrFeedTaken)
	}
	return rev, err
}

// Fed says that batch id's listing has ended (whatever the outcome). The
// key's messages are purged from the bucket's stream, no marker left, so
// that the search for stalled feeds (TakeStalledFeeds) does not meet the
// batches fed long ago.
func (b *Batches) Fed(ctx context.Context, id string) error {
	stream, err := b.js.Stream(ctx, "KV_"+BatchBucket)
	if err != nil {
		return fmt.Errorf("end feeding batch %s: %w", id, err)
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject("$KV."+BatchBucket+"."+feedingPrefix+id)); err != nil {
		return fmt.Errorf("end feeding batch %s: %w", id, err)
	}
	return nil
}

// TakeStalledFeeds takes over, for this process, the feeding of every
// batch whose feeder has not said so for stalled (it stopped: crashed,
// killed), and returns their ids and the revisions now held.
//
// The keys are found from the bucket's stream's subjects (one request,
// no consumer made): every API process looks every few seconds, and a
// listing of the keys would make a consumer each time.
func (b *Batches) TakeStalledFeeds(ctx context.Context, now time.Time, stalled time.Duration) (map[string]uint64, error) {
	stream, err := b.js.Stream(ctx, "KV_"+BatchBucket)
	if err != nil {
		return nil, fmt.Errorf("list batch feeds: %w", err)
	}
	prefix := "$KV." + BatchBucket + "."
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(prefix+feedingPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("list batch feeds: %w", err)
	}
	taken := map[string]uint64{}
	for subject := range info.State.Subjects {
		key := strings.TrimPrefix(subject, prefix)
		e, err := b.kv.Get(ctx, key)
		if err != nil {
			continue
		}
		last, err := time.Parse(time.RFC3339Nano, string(e.Value()))
		if err == nil && now.Sub(last) <= stalled {
			continue
		}
		rev, err := b.kv.Update(ctx, key, []byte(now.UTC().Format(time.RFC3339Nano)), e.Revision())
		if err != nil {
			continue // another process took it first
		}
		taken[strings.TrimPrefix(key, feedingPrefix)] = rev
	}
	return taken, nil
}
