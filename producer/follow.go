package producer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/inferq/inferq/batchfile"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// followQuiet is how long a followed output of a batch that has ended
// waits for announcements still on their way before it makes its last
// lines from the jobs' records.
const followQuiet = 2 * time.Second

// followOutput streams a batch's output lines as they finish (?follow=1):
// each with its line number, in the order its job's outcome was
// announced in the results stream, until every line has been written.
// The order is the stream's, so it is the same on every request: a
// client whose stream dropped asks again with after= the lines it read,
// and gets the rest. An index line that failed before it was queued comes
// when the reading of the index passes it.
func (s *Server) followOutput(w http.ResponseWriter, r *http.Request, rec *record.BatchRecord) error {
	if s.opts.Stream == nil {
		return errorf(http.StatusNotFound, "followed output is not served here")
	}
	var skip int64
	if a := r.URL.Query().Get("after"); a != "" {
		n, err := strconv.ParseInt(a, 10, 64)
		if err != nil || n < 0 {
			return errorf(http.StatusBadRequest, "after=%q: give the number of lines already read", a)
		}
		skip = n
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	type ann struct {
		data []byte
	}
	anns := make(chan ann, 256)
	followErr := make(chan error, 1)
	marker := []byte(`"batch_id":"` + rec.ID + `"`)
	go func() {
		followErr <- s.opts.Stream.FollowResults(ctx, rec.Model, rec.ResultsFrom, true, func(_ uint64, data []byte) error {
			if !bytes.Contains(data, marker) {
				return nil
			}
			select {
			case anns <- ann{data: data}:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()

	w.Header().Set("Content-Type", "application/jsonl")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	out := bufio.NewWriterSize(w, 64<<10)
	f := &follower{s: s, rec: rec, skip: skip, out: out, pending: map[string][]batchfile.IndexLine{}}
	sel := batchfile.Select{Numbered: true}
	flush := func() error {
		if err := out.Flush(); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	}
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	lastAnn := time.Now()
	for {
		select {
		case a := <-anns:
			lastAnn = time.Now()
			var an jobs.Announcement
			if err := json.Unmarshal(a.data, &an); err != nil || an.Batch != rec.ID {
				continue
			}
			if an.BatchSeq > 0 && !f.seen.Add(an.BatchSeq) {
				continue // announced again
			}
			f.jobs++
			lines, err := f.linesOf(ctx, an.ID)
			if err != nil {
				return f.cut(err)
			}
			if lines == nil {
				continue // a job the index never named: its page was not kept
			}
			if err := f.write(s.announcedLines(ctx, rec.ID, &an, lines, sel)); err != nil {
				return nil // the client left
			}
			if len(anns) == 0 {
				if err := flush(); err != nil {
					return nil
				}
			}
		case err := <-followErr:
			if ctx.Err() != nil {
				return nil
			}
			return f.cut(fmt.Errorf("the results stream: %w", err))
		case <-tick.C:
			if err := flush(); err != nil {
				return nil
			}
			b, err := s.opts.Batches.Get(ctx, rec.ID)
			if err != nil {
				continue
			}
			f.rec = b
			if b.Read() && f.written >= b.Counts.Total {
				return flush()
			}
			if b.Read() && f.jobs >= b.Jobs && len(f.pending) == 0 {
				// Every job written: what is left are lines that failed
				// before they were queued, further down the index.
				if err := f.rest(ctx, sel); err != nil {
					return f.cut(err)
				}
				return flush()
			}
			if b.Final() && !b.Read() {
				return f.cut(fmt.Errorf("batch %s %s before its lines were all queued: %s", b.ID, b.Status, b.Error))
			}
			if b.Final() && time.Since(lastAnn) > followQuiet {
				// Ended (cancelled) with lines whose outcome was never
				// announced: they are made from their records.
				if err := f.rest(ctx, sel); err != nil {
					return f.cut(err)
				}
				return flush()
			}
		}
	}
}

// follower is the state of one followed output.
type follower struct {
	s    *Server
	rec  *record.BatchRecord
	skip int64
	out  *bufio.Writer
	// written counts the lines made, those skipped included.
	written int64
	// seen is the jobs (by batch_seq) whose lines are written.
	seen record.SeqSet
	jobs int64
	// pending holds the index lines read ahead of their job's
	// announcement, by job id.
	pending map[string][]batchfile.IndexLine
	// segment is the next index object to read, and read the lines of
	// the one being read that are still to be taken.
	segment int
	read    []indexGroup
	ended   bool
}

type indexGroup struct {
	job   string
	lines []batchfile.IndexLine
}

// write writes lines, past the first skip of the output.
func (f *follower) write(lines [][]byte) error {
	for _, l := range lines {
		f.written++
		if f.written <= f.skip {
			continue
		}
		if _, err := f.out.Write(l); err != nil {
			return err
		}
	}
	return nil
}

// cut ends the output with a line saying why it stopped.
func (f *follower) cut(err error) error {
	f.s.log.Warn("followed batch output cut short", "batch", f.rec.ID, "err", err)
	msg, _ := json.Marshal("the output stopped: " + err.Error() + "; ask again with after= the lines read")
	fmt.Fprintf(f.out, "{\"error\":%s}\n", msg)
	return f.out.Flush()
}

// linesOf returns the index lines of job, reading the index ahead up to
// it (and writing the lines that failed before they were queued, as it
// passes them). Nil when the index has ended without naming it.
func (f *follower) linesOf(ctx context.Context, job string) ([]batchfile.IndexLine, error) {
	for {
		if lines, ok := f.pending[job]; ok {
			delete(f.pending, job)
			return lines, nil
		}
		g, ok, err := f.nextGroup(ctx)
		if err != nil || !ok {
			return nil, err
		}
		if g.job == "" {
			if err := f.write(batchfile.Failed(f.rec.ID, g.lines, "", batchfile.Select{Numbered: true})); err != nil {
				return nil, err
			}
			continue
		}
		f.pending[g.job] = g.lines
	}
}

// nextGroup returns the next group of the index, waiting for the index to
// grow while the batch is being listed; false once it has ended.
func (f *follower) nextGroup(ctx context.Context) (indexGroup, bool, error) {
	for len(f.read) == 0 {
		if f.ended {
			return indexGroup{}, false, nil
		}
		keys := indexKeys(f.rec)
		if f.rec.Feed == nil && !f.rec.Read() {
			keys = nil // the file is still being read: its index is not stored yet
		}
		if f.segment < len(keys) {
			if err := f.readSegment(ctx, keys[f.segment]); err != nil {
				return indexGroup{}, false, err
			}
			f.segment++
			continue
		}
		if f.rec.Read() || f.rec.Final() {
			f.ended = true
			continue
		}
		select {
		case <-ctx.Done():
			return indexGroup{}, false, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		b, err := f.s.opts.Batches.Get(ctx, f.rec.ID)
		if err != nil {
			return indexGroup{}, false, err
		}
		f.rec = b
	}
	g := f.read[0]
	f.read = f.read[1:]
	return g, true, nil
}

// readSegment reads one index object into f.read.
func (f *follower) readSegment(ctx context.Context, key string) error {
	rc, err := f.s.opts.Objects.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("batch index: %w", err)
	}
	defer rc.Close()
	return batchfile.ReadIndex(rc, func(job string, lines []batchfile.IndexLine) error {
		f.read = append(f.read, indexGroup{job: job, lines: slices.Clone(lines)})
		return nil
	})
}

// rest writes the lines not written yet, in index order, from their jobs'
// records: those of a batch that ended with jobs never announced.
func (f *follower) rest(ctx context.Context, sel batchfile.Select) error {
	var groups []indexGroup
	for job, lines := range f.pending {
		groups = append(groups, indexGroup{job: job, lines: lines})
	}
	slices.SortFunc(groups, func(a, b indexGroup) int { return int(a.lines[0].Line - b.lines[0].Line) })
	for {
		g, ok, err := f.nextGroup(ctx)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		groups = append(groups, g)
	}
	for _, g := range groups {
		if err := f.write(f.s.outputLines(ctx, f.rec.ID, g.job, g.lines, sel)); err != nil {
			return err
		}
	}
	clear(f.pending)
	return nil
}

// announcedLines makes the output lines of a job's lines from its
// announcement: the response it carries, or else (a batch's jobs are
// announced without it) the stored one its record names.
func (s *Server) announcedLines(ctx context.Context, batch string, an *jobs.Announcement, lines []batchfile.IndexLine, sel batchfile.Select) [][]byte {
	if an.Status != record.Succeeded {
		msg := an.Error
		if msg == "" {
			msg = "job " + an.ID + " is " + string(an.Status)
		}
		return batchfile.Failed(batch, lines, msg, sel)
	}
	if len(an.Response) == 0 {
		return s.outputLines(ctx, batch, an.ID, lines, sel)
	}
	resp, err := tensor.DecodeResponse(an.Response)
	if err != nil {
		return batchfile.Failed(batch, lines, err.Error(), sel)
	}
	return batchfile.Assemble(batch, an.ID, lines, resp, sel)
}
