package producer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/inferq/inferq/batchfile"
	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// BatchStore keeps batch records; *jobs.Batches is one.
type BatchStore interface {
	Create(ctx context.Context, rec *record.BatchRecord) error
	Get(ctx context.Context, id string) (*record.BatchRecord, error)
	Update(ctx context.Context, id string, fn func(*record.BatchRecord) error) (*record.BatchRecord, error)
	// Reading says a batch's file is being read (again every
	// Options.UploadHeartbeat), and Read that it no longer is.
	Reading(ctx context.Context, id string, now time.Time) error
	Read(ctx context.Context, id string) error
}

// ObjectWriter writes batch indexes; the storage package's stores are.
type ObjectWriter interface {
	Put(ctx context.Context, key string, r io.Reader) error
	Get(ctx context.Context, key string) (io.ReadCloser, error)
}

// createBatch reads a JSON Lines body, one V2 request per line, as it
// arrives: each valid line joins a job (consecutive lines that can share
// a run are packed into one), each invalid one becomes an error line of
// the output. Memory stays bounded by one job, whatever the file's size.
func (s *Server) createBatch(w http.ResponseWriter, r *http.Request) error {
	if s.opts.Batches == nil || s.opts.Objects == nil {
		return errorf(http.StatusNotFound, "batch files are not served here")
	}
	m, err := s.lookup(r)
	if err != nil {
		return err
	}
	if q := r.URL.Query(); q.Has("source") {
		return s.createSourceBatch(w, r, m, q.Get("source"))
	}
	if err := s.queueReachable(); err != nil {
		return err
	}
	now := time.Now().UTC()
	rec := &record.BatchRecord{ID: ulid.Make().String(), Model: m.Name, Status: record.BatchQueued, CreatedAt: now}
	rec.Index = batchfile.IndexKey(rec.ID)
	if s.opts.Stream != nil {
		// Where a followed output replays its announcements from.
		if rec.ResultsFrom, err = s.opts.Stream.ResultsPosition(r.Context()); err != nil {
			return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "the results stream is unavailable: " + err.Error()}
		}
	}
	if err := s.opts.Batches.Create(r.Context(), rec); err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "batch records are unavailable: " + err.Error()}
	}
	ctx := context.WithoutCancel(r.Context())

	// The index streams to storage as the file is read.
	pr, pw := io.Pipe()
	stored := make(chan error, 1)
	go func() { stored <- s.opts.Objects.Put(ctx, rec.Index, pr) }()
	index := bufio.NewWriterSize(pw, 64<<10)
	enc := json.NewEncoder(index)

	var (
		n, invalid, jobCount int64
		ids                  []string
	)
	// While the file is read, the record says so every UploadHeartbeat:
	// a batch whose reader stops saying so (this process ended mid-upload)
	// is ended by the others (jobs.Queue.FailCutUploads).
	reading, stopReading := context.WithCancel(ctx)
	heartbeat := make(chan struct{})
	_ = s.opts.Batches.Reading(ctx, rec.ID, time.Now())
	go func() {
		defer close(heartbeat)
		t := time.NewTicker(s.opts.UploadHeartbeat)
		defer t.Stop()
		for {
			select {
			case <-reading.Done():
				return
			case now := <-t.C:
				_ = s.opts.Batches.Reading(reading, rec.ID, now)
			}
		}
	}()
	// Said last, after the record's final write below.
	defer func() { _ = s.opts.Batches.Read(ctx, rec.ID) }()
	// Jobs are submitted a few at a time, concurrently: each waits for
	// JetStream's acknowledgements, and one after the other they would cap
	// a batch at a job per round trip. The index names each job as soon as
	// its id is drawn, so it stays in input order.
	var (
		submitting sync.WaitGroup
		slots      = make(chan struct{}, 16)
		submitErr  error
		submitMu   sync.Mutex
	)
	failed := func() error {
		submitMu.Lock()
		defer submitMu.Unlock()
		return submitErr
	}
	// submit queues a chunk the packer closed (none: nothing to do).
	submit := func(c *batchfile.Chunk) error {
		if c == nil {
			return nil
		}
		if err := failed(); err != nil {
			return err
		}
		id, seq := ulid.Make().String(), jobCount+1
		slots <- struct{}{}
		submitting.Go(func() {
			defer func() { <-slots }()
			if err := s.submitChunk(r, m, rec.ID, id, seq, c); err != nil {
				submitMu.Lock()
				if submitErr == nil {
					submitErr = err
				}
				submitMu.Unlock()
			}
		})
		ids = append(ids, id)
		jobCount++
		for _, l := range c.Lines {
			l.Job = id
			if err := enc.Encode(l); err != nil {
				return err
			}
		}
		return nil
	}
	// Lines of a sliceable model whose shapes differ (image sizes, sequence
	// lengths) still share a job, laid end to end; the worker runs those of
	// one shape (once padded, where the config asks) together.
	packer := batchfile.Packer{MaxRows: m.MaxJobRows(), Mixable: m.Sliceable()}
	body := bufio.NewReaderSize(http.MaxBytesReader(w, r.Body, s.opts.MaxBatchBytes), 1<<20)
	readErr := s.parseLines(m, body, func(line int64, text []byte, p parsedLine, perr error) error {
		n = line
		il := batchfile.IndexLine{Line: n, CustomID: p.customID, OpenAI: p.openai}
		if perr != nil {
			invalid++
			il.Error = fmt.Sprintf("line %d: %v", n, perr)
			// The lines before it go first, to keep the index in order.
			if err := submit(packer.Flush()); err != nil {
				return err
			}
			return enc.Encode(il)
		}
		l := batchfile.Line{Index: il, Inputs: p.inputs, Outputs: p.req.Outputs, Rows: p.rows, Bytes: len(text), Key: p.key}
		if err := submit(packer.Add(l)); err != nil {
			return err
		}
		if n%4096 == 0 && s.batchCancelled(ctx, rec.ID) {
			return errors.New("the batch was cancelled while it was being read")
		}
		return nil
	})
	if readErr == nil {
		readErr = submit(packer.Flush())
	}
	submitting.Wait()
	if err := failed(); err != nil && readErr == nil {
		readErr = err
	}
	if err := index.Flush(); err != nil && readErr == nil {
		readErr = err
	}
	pw.CloseWithError(readErr)
	if err := <-stored; err != nil && readErr == nil {
		readErr = fmt.Errorf("store the batch index: %w", err)
	}

	stopReading()
	<-heartbeat
	done := time.Now().UTC()
	if readErr != nil {
		// What was queued of a batch that failed does not run.
		s.cancelJobs(ctx, ids)
		var tooBig *http.MaxBytesError
		var refused *httpError
		msg := readErr.Error()
		code, retryAfter := http.StatusBadRequest, 0
		switch {
		case errors.As(readErr, &tooBig):
			msg, code = fmt.Sprintf("the batch file exceeds the limit of %d bytes", s.opts.MaxBatchBytes), http.StatusRequestEntityTooLarge
		case errors.As(readErr, new(batchfile.LineTooLong)):
			code = http.StatusRequestEntityTooLarge
		case errors.Is(readErr, os.ErrDeadlineExceeded):
			msg, code = s.bodyStalled().Error(), http.StatusRequestTimeout
		case errors.As(readErr, &refused):
			code, retryAfter = refused.code, refused.retryAfter
		}
		rec, _ = s.opts.Batches.Update(ctx, rec.ID, func(b *record.BatchRecord) error {
			if b.Status != record.BatchCancelled {
				b.Status, b.Error, b.FinishedAt = record.BatchFailed, msg, &done
			}
			b.Counts.Total, b.Jobs = n, jobCount
			return nil
		})
		return &httpError{code: code, retryAfter: retryAfter, msg: fmt.Sprintf("batch %s failed after %d lines: %s", rec.ID, n, msg)}
	}
	rec, err = s.opts.Batches.Update(ctx, rec.ID, func(b *record.BatchRecord) error {
		b.Counts.Total = n
		b.Counts.Failed += invalid
		b.Jobs = jobCount
		b.QueuedAt = &done
		if b.Status == record.BatchQueued {
			b.Status = record.BatchRunning
		}
		return nil
	})
	if err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "batch records are unavailable: " + err.Error()}
	}
	w.Header().Set("Location", "/v1/batches/"+rec.ID)
	writeJSON(w, http.StatusAccepted, rec)
	return nil
}

// parsedLine is a line of a batch file, decoded and checked.
type parsedLine struct {
	// customID is the line's custom_id, found even in a line that is not
	// a valid request when it comes before what is wrong.
	customID json.RawMessage
	req      *tensor.Request
	inputs   []tensor.Tensor // in the model's input order
	rows     int
	// key is that of the lines it can share a job with: "" for a line
	// that shares none.
	key string
	// openai says the line came in the form of OpenAI's Batch API.
	openai bool
}

// parseLine decodes and checks one line. Its custom_id is returned with
// the error too, and the request when only the check failed.
func (s *Server) parseLine(m *model.Model, line []byte) (parsedLine, error) {
	body, env, err := openAIEnvelope(m, line)
	if env != nil {
		if err != nil {
			return parsedLine{customID: env.CustomID, openai: true}, err
		}
		line = body
	}
	req, err := objectLine(m, line)
	if req == nil && err == nil {
		req, err = tensor.DecodeRequest(line, s.opts.Limits)
	}
	if err != nil {
		p := parsedLine{customID: batchfile.PeekCustomID(line)}
		if env != nil {
			p.customID, p.openai = env.CustomID, true
		}
		return p, err
	}
	p := parsedLine{req: req, customID: req.CustomID}
	if env != nil {
		p.customID, p.openai = env.CustomID, true
	}
	if p.rows, err = m.Check(req); err != nil { // a line is held to what a request is
		return p, err
	}
	if err := s.checkObjects(m.Name, req); err != nil {
		return p, err
	}
	p.inputs, _ = m.OrderedInputs(req) // Check found them all
	switch {
	case m.Pipeline != nil || slices.ContainsFunc(req.Inputs, func(t tensor.Tensor) bool { return t.Object != "" }) || !m.Stackable && m.Config.Padding != nil:
		// never shares a job (a pipeline's line is a job of its own,
		// its model steps batched on their models' queues)
	case !m.Stackable:
		// Lines that cannot share a run still share a job, laid end to
		// end whatever their shapes, and run one at a time.
		p.key = batchfile.EndToEnd
	default:
		p.key = batching.Key(p.inputs, m.Batched)
	}
	return p, nil
}

// objectLine reads a line that names a stored file for a model or
// pipeline of one BYTES input: {"custom_id": ..., "object":
// "inputs/{model}/..."}, or an s3:// URL under an allowed source. Nil,
// nil for any other line.
func objectLine(m *model.Model, line []byte) (*tensor.Request, error) {
	if !bytes.Contains(line, []byte(`"object"`)) {
		return nil, nil
	}
	var l struct {
		CustomID json.RawMessage `json:"custom_id"`
		Object   *string         `json:"object"`
		Inputs   json.RawMessage `json:"inputs"`
	}
	if json.Unmarshal(line, &l) != nil || l.Object == nil || l.Inputs != nil {
		return nil, nil // a request, or not JSON: its own decoding says what is wrong
	}
	if len(m.Inputs) != 1 || m.Inputs[0].Datatype != tensor.Bytes {
		return nil, fmt.Errorf(`a line naming an "object" goes to a model or pipeline of one BYTES input; %s takes %s`, m.Name, describeInputs(m))
	}
	return &tensor.Request{CustomID: l.CustomID, Inputs: []tensor.Tensor{{Name: m.Inputs[0].Name, Datatype: tensor.Bytes, Shape: []int64{1}, Object: *l.Object}}}, nil
}

// submitChunk queues a chunk's lines as one job.
func (s *Server) submitChunk(r *http.Request, m *model.Model, batch, id string, seq int64, c *batchfile.Chunk) error {
	req, lines, err := c.Request(m.Batched)
	if err != nil {
		return err
	}
	spec := jobs.Spec{ID: id, Model: m.Name, Rows: c.Rows, Batch: batch, BatchSeq: seq, Lines: len(c.Lines)}
	if r.PathValue("version") != "" {
		spec.Version = m.Version
	} else if am, routed, shadows := s.route(m, false); routed || len(shadows) > 0 {
		// A batch is split per job its lines are packed into.
		spec.Shadows = shadows
		if routed {
			spec.Version, spec.Routed = am.Version, true
		}
	}
	job, rec := jobs.New(req, spec)
	job.Lines = lines
	if job, err = s.pipelineJob(m, job); err != nil {
		return err
	}
	if err := s.opts.Queue.Submit(context.WithoutCancel(r.Context()), job, rec); err != nil {
		if errors.Is(err, jobs.ErrQueueFull) {
			s.metrics.rejected.WithLabelValues(m.Name, "queue_full").Inc()
			return &httpError{code: http.StatusTooManyRequests, retryAfter: 5, msg: fmt.Sprintf("the queue of model %s is full; nothing of this batch runs, retry later", m.Name)}
		}
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "the queue is unavailable; nothing of this batch runs, retry later: " + err.Error()}
	}
	s.metrics.accepted.WithLabelValues(m.Name).Inc()
	return nil
}

func (s *Server) batchCancelled(ctx context.Context, id string) bool {
	b, err := s.opts.Batches.Get(ctx, id)
	return err == nil && b.Status == record.BatchCancelled
}

// cancelJobs cancels those of ids still queued, a few at a time.
func (s *Server) cancelJobs(ctx context.Context, ids []string) {
	var wg sync.WaitGroup
	slots := make(chan struct{}, 32)
	for _, id := range ids {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			_, _ = s.opts.Queue.End(ctx, id, record.Cancel, "the batch was cancelled")
		})
	}
	wg.Wait()
}

func (s *Server) batchRecord(ctx context.Context, id string) (*record.BatchRecord, error) {
	if s.opts.Batches == nil {
		return nil, errorf(http.StatusNotFound, "batch files are not served here")
	}
	if _, err := ulid.ParseStrict(id); err != nil {
		return nil, errorf(http.StatusNotFound, "batch %q not found: batch ids are 26-character ULIDs", id)
	}
	rec, err := s.opts.Batches.Get(ctx, id)
	if errors.Is(err, jobs.ErrBatchNotFound) {
		return nil, errorf(http.StatusNotFound, "batch %s not found", id)
	}
	if err != nil {
		return nil, &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "batch records are unavailable: " + err.Error()}
	}
	return rec, nil
}

// batchFor reads the record of the batch the request names, for a request
// whose token may use the batch's model.
func (s *Server) batchFor(r *http.Request) (*record.BatchRecord, error) {
	rec, err := s.batchRecord(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if !mayUse(r.Context(), rec.Model) {
		// As if unknown: a refusal would confirm that the id exists.
		return nil, errorf(http.StatusNotFound, "batch %s not found", rec.ID)
	}
	return rec, nil
}

func (s *Server) getBatch(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.batchFor(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rec)
	return nil
}

// cancelBatch cancels the jobs of a batch that have not started; those
// running finish.
func (s *Server) cancelBatch(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.batchFor(r)
	if err != nil {
		return err
	}
	if rec.Final() {
		writeJSON(w, http.StatusConflict, map[string]any{"error": fmt.Sprintf("batch %s is %s", rec.ID, rec.Status), "batch": rec})
		return nil
	}
	ctx := context.WithoutCancel(r.Context())
	now := time.Now().UTC()
	if _, err := s.opts.Batches.Update(ctx, rec.ID, func(b *record.BatchRecord) error {
		b.Status, b.FinishedAt = record.BatchCancelled, &now
		return nil
	}); err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "batch records are unavailable: " + err.Error()}
	}
	if rec.Status == record.BatchRunning {
		var ids []string
		err := s.eachIndexGroup(ctx, rec, func(job string, _ []batchfile.IndexLine) error {
			if job != "" {
				ids = append(ids, job)
			}
			return nil
		})
		if err != nil {
			return &httpError{code: http.StatusServiceUnavailable, retryAfter: 5, msg: "batch index is unavailable: " + err.Error()}
		}
		s.cancelJobs(ctx, ids)
	}
	rec, err = s.batchRecord(ctx, rec.ID)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rec)
	return nil
}

// eachIndexGroup calls fn with each run of consecutive index lines that
// share a job (job empty for an error line, alone), in order.
func (s *Server) eachIndexGroup(ctx context.Context, rec *record.BatchRecord, fn func(job string, lines []batchfile.IndexLine) error) error {
	for _, key := range indexKeys(rec) {
		rc, err := s.opts.Objects.Get(ctx, key)
		if err != nil {
			return err
		}
		err = batchfile.ReadIndex(rc, fn)
		rc.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// indexKeys are the storage keys of a batch's index, in order: one
// object for a batch file, a segment per listed page for a batch over
// stored objects.
func indexKeys(rec *record.BatchRecord) []string {
	if rec.Feed == nil {
		return []string{rec.Index}
	}
	keys := make([]string, rec.Feed.Segments)
	for i := range keys {
		keys[i] = SegmentKey(rec.ID, int64(i))
	}
	return keys
}

// batchOutput streams a finished batch's output: a JSON line per input
// line, in input order, with its custom_id and either the V2 response of
// its rows or an error. Jobs are read ahead a few at a time.
func (s *Server) batchOutput(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.batchFor(r)
	if err != nil {
		return err
	}
	var sel batchfile.Select
	switch only := r.URL.Query().Get("only"); only {
	case "":
	case "errors":
		sel.ErrorsOnly = true
	default:
		return errorf(http.StatusBadRequest, "only=%q: the one choice is only=errors (the failed lines alone, each with its line number)", only)
	}
	if q := r.URL.Query(); q.Get("follow") == "1" || q.Get("follow") == "true" {
		if sel.ErrorsOnly {
			return errorf(http.StatusBadRequest, "follow=1 and only=errors do not go together: a followed output numbers every line, pick its errors from it")
		}
		return s.followOutput(w, r, rec)
	}
	if !rec.Final() {
		writeJSON(w, http.StatusConflict, map[string]any{
			"error": fmt.Sprintf("batch %s is %s: %d of %d lines done; its output is ready when it has finished", rec.ID, rec.Status, rec.Counts.Done(), rec.Counts.Total),
			"batch": rec,
		})
		return nil
	}
	if rec.Status == record.BatchFailed && !rec.Read() {
		// The file could not be read to the end, and nothing of it ran.
		writeJSON(w, http.StatusConflict, map[string]any{
			"error": fmt.Sprintf("batch %s failed and has no output: %s", rec.ID, rec.Error),
			"batch": rec,
		})
		return nil
	}
	switch format := r.URL.Query().Get("format"); format {
	case "", "jsonl":
	case "parquet":
		if sel.ErrorsOnly {
			return errorf(http.StatusBadRequest, "format=parquet and only=errors do not go together: the Parquet output has every line, with its error column")
		}
		return s.parquetOutput(w, r, rec)
	default:
		return errorf(http.StatusBadRequest, "format=%q: the output is JSON Lines (the default) or format=parquet", format)
	}
	w.Header().Set("Content-Type", "application/jsonl")
	w.WriteHeader(http.StatusOK)
	out := bufio.NewWriterSize(w, 256<<10)
	err = s.eachOutput(r.Context(), rec, sel, func(_ []batchfile.IndexLine, lines [][]byte) error {
		for _, l := range lines {
			if _, err := out.Write(l); err != nil {
				return errClientLeft
			}
		}
		return nil
	})
	if errors.Is(err, errClientLeft) {
		return nil
	}
	if err != nil && r.Context().Err() == nil {
		s.log.Warn("batch output cut short", "batch", rec.ID, "err", err)
		msg, _ := json.Marshal("the output could not be read to the end: " + err.Error())
		fmt.Fprintf(out, "{\"error\":%s}\n", msg)
	}
	return out.Flush()
}

// errClientLeft is a write to a client that has gone.
var errClientLeft = errors.New("the client left")

// eachOutput calls fn with the output lines of each job of a finished
// batch (the lines sel selects), with their index lines, in input order.
// Jobs are read ahead a few at a time.
func (s *Server) eachOutput(ctx context.Context, rec *record.BatchRecord, sel batchfile.Select, fn func(index []batchfile.IndexLine, lines [][]byte) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type group struct {
		job   string
		lines []batchfile.IndexLine
		out   chan [][]byte
	}
	groups := make(chan *group, 64)
	ahead := make(chan struct{}, 16)
	readErr := make(chan error, 1)
	go func() {
		defer close(groups)
		readErr <- s.eachIndexGroup(ctx, rec, func(job string, lines []batchfile.IndexLine) error {
			g := &group{job: job, lines: slices.Clone(lines), out: make(chan [][]byte, 1)}
			select {
			case ahead <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			go func() {
				defer func() { <-ahead }()
				g.out <- s.outputLines(ctx, rec.ID, g.job, g.lines, sel)
			}()
			select {
			case groups <- g:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	for g := range groups {
		if err := fn(g.lines, <-g.out); err != nil {
			cancel()
			for range groups { // let the reader end
			}
			return err
		}
	}
	return <-readErr
}

// outputLines makes the output lines of one job's lines.
func (s *Server) outputLines(ctx context.Context, batch, job string, lines []batchfile.IndexLine, sel batchfile.Select) [][]byte {
	fail := func(msg string) [][]byte { return batchfile.Failed(batch, lines, msg, sel) }
	if job == "" {
		return fail("")
	}
	rec, err := s.opts.Records.Get(ctx, job)
	if err != nil {
		return fail("the job's record is unavailable: " + err.Error())
	}
	rec = s.expire(rec)
	if sel.ErrorsOnly && rec.Status == record.Succeeded && rec.Result != nil && rec.LinesFailed == 0 {
		return nil // every line succeeded: no need to read the result
	}
	if rec.Status != record.Succeeded || rec.Result == nil {
		msg := rec.Error
		if msg == "" {
			msg = "job " + rec.ID + " is " + string(rec.Status)
		}
		return fail(msg)
	}
	rc, err := s.opts.Results.GetRange(ctx, rec.Result.Key, rec.Result.Offset, rec.Result.Length)
	if err != nil {
		return fail("the result is unavailable: " + err.Error())
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return fail("the result is unavailable: " + err.Error())
	}
	resp, err := tensor.DecodeResponse(b)
	if err != nil {
		return fail(err.Error())
	}
	return batchfile.Assemble(batch, job, lines, resp, sel)
}
