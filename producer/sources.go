package producer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/inferq/inferq/batchfile"
	"github.com/inferq/inferq/internal/retry"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/storage"
	"github.com/inferq/inferq/tensor"
)

// Sources resolves the source of a batch over stored objects to where
// it is listed; *storage.Sources is one.
type Sources interface {
	Resolve(source string) (storage.Bucket, string, error)
}

// Feeds keeps who feeds which batch over stored objects; *jobs.Batches
// does.
type Feeds interface {
	StartFeed(ctx context.Context, id string, now time.Time) (uint64, error)
	Feeding(ctx context.Context, id string, rev uint64, now time.Time) (uint64, error)
	Fed(ctx context.Context, id string) error
	TakeStalledFeeds(ctx context.Context, now time.Time, stalled time.Duration) (map[string]uint64, error)
}

// submitAgain submits a job whose id may have been submitted before;
// *jobs.Queue does.
type submitAgain interface {
	SubmitAgain(ctx context.Context, job *jobs.Job, rec *record.Record) error
}

const (
	// feedPage is how many objects are listed, queued and indexed at a
	// time: a page is what a feeder that stops queues again.
	feedPage = 1000
	// countAhead is how many objects a new batch's request lists before
	// it is answered, to refuse at once a prefix beyond --max-batch-lines
	// (or an empty one).
	countAhead = 10_000
)

// SegmentKey is the storage key of segment n of the index of batch id
// over stored objects: the index lines of one listed page.
func SegmentKey(id string, n int64) string {
	return fmt.Sprintf("batches/%s/index/%08d.jsonl", id, n)
}

// lineJobID is the job id of line of batch: a ULID of the batch's time,
// the rest drawn from the batch and line, so that a page queued again
// names the same jobs.
func lineJobID(batch string, line int64) string {
	b := ulid.MustParse(batch)
	h := sha256.Sum256(fmt.Appendf(nil, "%s/%d", batch, line))
	return ulid.MustNew(b.Time(), bytes.NewReader(h[:10])).String()
}

// createSourceBatch starts a batch over the objects under a prefix: one
// line per object, in key order, the object the single BYTES input of
// the model or pipeline, its key the line's custom_id. The first pages
// are listed before the answer (an empty prefix, or one of more objects
// than --max-batch-lines, is refused at once); the listing goes on
// behind the answer, a page at a time, each page's jobs queued and its
// index stored before the batch record says the page is done.
func (s *Server) createSourceBatch(w http.ResponseWriter, r *http.Request, m *model.Model, source string) error {
	if s.opts.Sources == nil || s.opts.Feeds == nil {
		return errorf(http.StatusNotFound, "batches over stored objects are not served here")
	}
	if r.ContentLength > 0 {
		return errorf(http.StatusBadRequest, "a batch over ?source= has no body: its lines are the objects under the source")
	}
	if len(m.Inputs) != 1 || m.Inputs[0].Datatype != tensor.Bytes {
		return errorf(http.StatusBadRequest, "a batch over stored objects goes to a model or pipeline of one BYTES input (each object is that input); %s takes %s", m.Name, describeInputs(m))
	}
	bucket, prefix, err := s.opts.Sources.Resolve(source)
	if err == nil && !storage.IsURL(source) && !strings.HasPrefix(prefix, jobs.InputPrefix(m.Name)) {
		err = fmt.Errorf("%w: %s is not under %s, the inputs of %s", storage.ErrSourceRefused, source, jobs.InputPrefix(m.Name), m.Name)
	}
	if err != nil {
		return errorf(http.StatusForbidden, "%v", err)
	}
	if err := s.queueReachable(); err != nil {
		return err
	}
	n, ended, err := countObjects(r.Context(), bucket, prefix, min(s.opts.MaxBatchLines+1, countAhead))
	switch {
	case err != nil:
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 5, msg: fmt.Sprintf("source %s could not be listed: %v", source, err)}
	case n == 0:
		return errorf(http.StatusBadRequest, "source %s holds no objects", source)
	case n > s.opts.MaxBatchLines && ended:
		return errorf(http.StatusBadRequest, "source %s holds %d objects, more than the %d lines a batch may have (--max-batch-lines)", source, n, s.opts.MaxBatchLines)
	case n > s.opts.MaxBatchLines:
		return errorf(http.StatusBadRequest, "source %s holds more than %d objects, the lines a batch may have (--max-batch-lines)", source, s.opts.MaxBatchLines)
	}
	now := time.Now().UTC()
	rec := &record.BatchRecord{ID: ulid.Make().String(), Model: m.Name, Status: record.BatchQueued, CreatedAt: now, Source: source, Feed: &record.Feed{}}
	if s.opts.Stream != nil {
		if rec.ResultsFrom, err = s.opts.Stream.ResultsPosition(r.Context()); err != nil {
			return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "the results stream is unavailable: " + err.Error()}
		}
	}
	if err := s.opts.Batches.Create(r.Context(), rec); err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "batch records are unavailable: " + err.Error()}
	}
	rev, err := s.opts.Feeds.StartFeed(r.Context(), rec.ID, now)
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "batch records are unavailable: " + err.Error()}
	}
	s.startFeed(rec.ID, rev, false)
	w.Header().Set("Location", "/v1/batches/"+rec.ID)
	writeJSON(w, http.StatusAccepted, rec)
	return nil
}

// countObjects counts the objects under prefix, up to limit; ended says
// the listing ended before it.
func countObjects(ctx context.Context, b storage.Bucket, prefix string, limit int64) (n int64, ended bool, err error) {
	after := ""
	for n < limit {
		page, err := b.ListPage(ctx, prefix, after, feedPage)
		if err != nil {
			return n, false, err
		}
		n += int64(len(page))
		if len(page) < feedPage {
			return n, true, nil
		}
		after = page[len(page)-1].Key
	}
	return n, false, nil
}

// startFeed feeds batch id in the background, holding rev, until its
// listing ends or the server shuts down.
func (s *Server) startFeed(id string, rev uint64, resumed bool) {
	s.feeding.Go(func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case <-s.closing:
				cancel()
			case <-stop:
			}
		}()
		if err := s.feed(ctx, id, rev, resumed); err != nil && ctx.Err() == nil {
			s.log.Warn("feeding a batch over stored objects", "batch", id, "err", err)
		}
	})
}

// RunFeeds takes over, until ctx ends, the batches over stored objects
// whose feeder stopped (its API process crashed or was killed): their
// listing goes on from the last page recorded. Every API process runs
// it; a batch is taken by one.
func (s *Server) RunFeeds(ctx context.Context) error {
	if s.opts.Feeds == nil {
		return nil
	}
	t := time.NewTicker(2 * s.opts.FeedHeartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.feeding.Wait()
			return nil
		case <-t.C:
		}
		taken, err := s.opts.Feeds.TakeStalledFeeds(ctx, time.Now(), 5*s.opts.FeedHeartbeat)
		if err != nil {
			s.log.Warn("looking for batch feeds that stopped", "err", err)
			continue
		}
		for id, rev := range taken {
			s.log.Info("taking over the feeding of a batch over stored objects, whose feeder stopped", "batch", id)
			s.metrics.takeovers.Inc()
			s.startFeed(id, rev, true)
		}
	}
}

// feed lists batch id's source from where its record says, a page at a
// time: each page's lines are queued (a job per object; an object larger
// than --max-body fails its line), its index segment stored, and then
// the record advanced, in one compare-and-set with the counts of the
// failed lines. A feeder that stops between the first step and the last
// has its page listed and queued again by the one that takes over:
// the jobs' ids come from the batch and line, so none runs twice.
func (s *Server) feed(parent context.Context, id string, rev uint64, resumed bool) error {
	ctx, cancel := context.WithCancel(parent)
	beating := make(chan struct{})
	defer func() { cancel(); <-beating }()
	go func() { // says it feeds, as long as it does
		defer close(beating)
		t := time.NewTicker(s.opts.FeedHeartbeat)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				if parent.Err() != nil {
					// Shut down, not crashed: another may take over at once.
					_, _ = s.opts.Feeds.Feeding(context.WithoutCancel(parent), id, rev, time.Time{})
				}
				return
			case now := <-t.C:
				r, err := s.opts.Feeds.Feeding(ctx, id, rev, now)
				if err == nil {
					rev = r
				}
				if errors.Is(err, jobs.ErrFeedTaken) {
					cancel() // another feeds it now: this one stops
					return
				}
			}
		}
	}()

	wait := retry.New(100*time.Millisecond, 5*time.Second)
	again := resumed // the first page may have been queued in part
	for {
		rec, err := s.opts.Batches.Get(ctx, id)
		if errors.Is(err, jobs.ErrBatchNotFound) {
			return s.opts.Feeds.Fed(ctx, id)
		}
		if err != nil {
			if !retry.Sleep(ctx, wait.Next()) {
				return ctx.Err()
			}
			continue
		}
		if rec.Final() || rec.Read() || rec.Feed == nil {
			return s.opts.Feeds.Fed(ctx, id) // cancelled, failed, or listed to its end
		}
		// The listing keeps at most FeedAhead lines queued beyond those
		// with an outcome: JetStream holds a window of the batch, not
		// all of it, and other work is not starved.
		if rec.Feed.Lines-rec.Counts.Done() >= s.opts.FeedAhead {
			if !retry.Sleep(ctx, 100*time.Millisecond) {
				return ctx.Err()
			}
			continue
		}
		done, err := s.feedPage(ctx, rec, again)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.log.Warn("feeding a batch over stored objects; trying again", "batch", id, "err", err)
			if !retry.Sleep(ctx, wait.Next()) {
				return ctx.Err()
			}
			again = true
			continue
		}
		wait.Reset()
		again = false
		if done {
			return s.opts.Feeds.Fed(ctx, id)
		}
	}
}

// errPageRefused is a page that cannot be queued, for good: the batch
// ends failed with it.
type errPageRefused struct{ msg string }

func (e errPageRefused) Error() string { return e.msg }

// feedPage lists, queues and indexes the page of rec's source after its
// feed, and advances the feed; done says the listing has ended.
func (s *Server) feedPage(ctx context.Context, rec *record.BatchRecord, again bool) (done bool, err error) {
	m, err := s.opts.Catalog.Lookup(rec.Model, 0)
	if err != nil {
		return true, s.endFeed(ctx, rec.ID, fmt.Sprintf("model %s is no longer served: %v", rec.Model, err))
	}
	bucket, prefix, err := s.opts.Sources.Resolve(rec.Source)
	if err != nil {
		return true, s.endFeed(ctx, rec.ID, fmt.Sprintf("source %s may no longer be read: %v", rec.Source, err))
	}
	page, err := bucket.ListPage(ctx, prefix, rec.Feed.After, feedPage)
	if err != nil {
		return false, fmt.Errorf("list %s after %q: %w", rec.Source, rec.Feed.After, err)
	}
	feed := *rec.Feed
	if feed.Lines+int64(len(page)) > s.opts.MaxBatchLines {
		return true, s.endFeed(ctx, rec.ID, fmt.Sprintf("source %s holds more than %d objects, the lines a batch may have (--max-batch-lines): listing stopped", rec.Source, s.opts.MaxBatchLines))
	}
	index := make([]batchfile.IndexLine, len(page))
	var (
		failed, queued int64
		wg             sync.WaitGroup
		slots          = make(chan struct{}, 32)
		errMu          sync.Mutex
		submitErr      error
	)
	for i, o := range page {
		line := feed.Lines + int64(i) + 1
		customID, _ := json.Marshal(o.Key)
		index[i] = batchfile.IndexLine{Line: line, CustomID: customID}
		if o.Size > s.opts.MaxBodyBytes {
			index[i].Error = fmt.Sprintf("object %s holds %d bytes, more than the %d a job may have (--max-body)", o.Key, o.Size, s.opts.MaxBodyBytes)
			failed++
			continue
		}
		spec := jobs.Spec{ID: lineJobID(rec.ID, line), Model: m.Name, Rows: 1, Batch: rec.ID, BatchSeq: line, Lines: 1}
		if am, routed, shadows := s.route(m, false); routed || len(shadows) > 0 {
			spec.Shadows = shadows
			if routed {
				spec.Version, spec.Routed = am.Version, true
			}
		}
		job, jrec := jobs.New(&tensor.Request{CustomID: customID, Inputs: []tensor.Tensor{{
			Name: m.Inputs[0].Name, Datatype: tensor.Bytes, Shape: []int64{1}, Object: storage.Ref(rec.Source, o.Key),
		}}}, spec)
		index[i].Job, index[i].Rows = job.ID, 1
		queued++
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			err := s.submitLine(ctx, m, job, jrec, again)
			if err != nil {
				errMu.Lock()
				submitErr = errors.Join(submitErr, err)
				errMu.Unlock()
			}
		})
	}
	wg.Wait()
	if submitErr != nil {
		var refused errPageRefused
		if errors.As(submitErr, &refused) {
			return true, s.endFeed(ctx, rec.ID, refused.msg)
		}
		return false, submitErr
	}
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	enc := json.NewEncoder(bw)
	for _, l := range index {
		_ = enc.Encode(l)
	}
	_ = bw.Flush()
	if len(page) > 0 {
		if err := s.opts.Objects.Put(ctx, SegmentKey(rec.ID, feed.Segments), &buf); err != nil {
			return false, fmt.Errorf("store the index of lines %d-%d: %w", feed.Lines+1, feed.Lines+int64(len(page)), err)
		}
	}
	done = len(page) < feedPage
	now := time.Now().UTC()
	_, err = s.opts.Batches.Update(ctx, rec.ID, func(b *record.BatchRecord) error {
		if b.Feed == nil || b.Feed.Segments != feed.Segments || b.Final() {
			return record.ErrConflict // advanced by another feeder, or ended
		}
		if len(page) > 0 {
			b.Feed.After = page[len(page)-1].Key
			b.Feed.Lines += int64(len(page))
			b.Feed.Segments++
			b.Counts.Failed += failed
			b.Jobs += queued
		}
		if done {
			b.Counts.Total = b.Feed.Lines
			b.QueuedAt = &now
			b.Status = record.BatchRunning
		}
		return nil
	})
	if errors.Is(err, record.ErrConflict) {
		return true, nil // another feeder, or an end: this one stops
	}
	if err == nil {
		s.metrics.listed.WithLabelValues(m.Name).Add(float64(len(page)))
	}
	return done, err
}

// submitLine queues the job of a line; again, for a page that may have
// been queued in part before, so that a job queued before is not queued
// twice.
func (s *Server) submitLine(ctx context.Context, m *model.Model, job *jobs.Job, rec *record.Record, again bool) error {
	job, err := s.pipelineJob(m, job)
	if err != nil {
		return errPageRefused{msg: err.Error()}
	}
	if sa, ok := s.opts.Queue.(submitAgain); ok && again {
		err = sa.SubmitAgain(ctx, job, rec)
	} else {
		err = s.opts.Queue.Submit(ctx, job, rec)
	}
	switch {
	case errors.Is(err, jobs.ErrQueueFull):
		// Its record says so (failed, "could not be queued"), and it is
		// counted as such: the line fails, not the batch.
		s.metrics.rejected.WithLabelValues(m.Name, "queue_full").Inc()
		return nil
	case err == nil:
		s.metrics.accepted.WithLabelValues(m.Name).Inc()
	}
	return err
}

// endFeed ends a batch whose listing cannot go on, failed with msg: its
// lines not started do not run (record.BatchRecord.UploadCut).
func (s *Server) endFeed(ctx context.Context, id, msg string) error {
	now := time.Now().UTC()
	_, err := s.opts.Batches.Update(ctx, id, func(b *record.BatchRecord) error {
		if b.Final() {
			return record.ErrConflict
		}
		b.Status, b.Error, b.FinishedAt = record.BatchFailed, msg, &now
		return nil
	})
	if errors.Is(err, record.ErrConflict) {
		return nil
	}
	return err
}
