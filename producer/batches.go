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
	"strconv"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"github.com/oklog/ulid/v2"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/tensor"
)

// BatchStore keeps batch records; *jobs.Batches is one.
type BatchStore interface {
	Create(ctx context.Context, rec *jobs.BatchRecord) error
	Get(ctx context.Context, id string) (*jobs.BatchRecord, error)
	Update(ctx context.Context, id string, fn func(*jobs.BatchRecord) error) (*jobs.BatchRecord, error)
}

// ObjectWriter writes batch indexes; the storage package's stores are.
type ObjectWriter interface {
	Put(ctx context.Context, key string, r io.Reader) error
	Get(ctx context.Context, key string) (io.ReadCloser, error)
}

// indexLine is one line of a batch's index: where the output of an input
// line comes from.
type indexLine struct {
	Line     int64           `json:"line"`
	CustomID json.RawMessage `json:"custom_id,omitempty"`
	// OpenAI marks a line given in the form of OpenAI's Batch API, whose
	// output line takes that form too.
	OpenAI bool   `json:"openai,omitempty"`
	Job    string `json:"job,omitempty"`
	Row    int    `json:"row,omitempty"`
	Rows   int    `json:"rows,omitempty"`
	Error  string `json:"error,omitempty"`
}

// outputLine is one line of a batch's output.
type outputLine struct {
	// ID and OpenAI, for a line given in the form of OpenAI's Batch API:
	// its output line is {"id", "custom_id", "response": {"status_code",
	// "body"}, "error"}.
	ID       string
	OpenAI   bool
	CustomID json.RawMessage `json:"custom_id"`
	// Line is the input line's number, given only in a list of the
	// errors alone (where the position no longer says it).
	Line     int64           `json:"line,omitempty"`
	Response json.RawMessage `json:"response,omitempty"`
	Error    string          `json:"error,omitempty"`
}

func batchIndexKey(id string) string { return "batches/" + id + "/index.jsonl" }

// chunk is consecutive lines of a batch file packed into one job: same
// shapes, same shared inputs, same outputs wanted, at most a model's max
// batch size rows.
type chunk struct {
	key   string
	lines []indexLine
	reqs  [][]tensor.Tensor
	rows  int
	bytes int
	outs  []string
}

// packBytes bounds the request bytes of a job packed from a batch file's
// lines, as model.MaxJobRows bounds its rows: the costs paid per job (a
// record, an acknowledgement, an announcement) are shared by many small
// lines, and a worker runs the job in slices of at most max_batch_size
// rows.
const packBytes = 256 << 10

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
	if err := s.queueReachable(); err != nil {
		return err
	}
	now := time.Now().UTC()
	rec := &jobs.BatchRecord{ID: ulid.Make().String(), Model: m.Name, Status: jobs.BatchQueued, CreatedAt: now}
	rec.Index = batchIndexKey(rec.ID)
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
		cur                  chunk
	)
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
	flush := func() error {
		if len(cur.lines) == 0 {
			return nil
		}
		if err := failed(); err != nil {
			return err
		}
		c := cur
		id := ulid.Make().String()
		slots <- struct{}{}
		submitting.Go(func() {
			defer func() { <-slots }()
			if err := s.submitChunk(r, m, rec.ID, id, &c); err != nil {
				submitMu.Lock()
				if submitErr == nil {
					submitErr = err
				}
				submitMu.Unlock()
			}
		})
		ids = append(ids, id)
		jobCount++
		for _, l := range cur.lines {
			l.Job = id
			if err := enc.Encode(l); err != nil {
				return err
			}
		}
		cur = chunk{}
		return nil
	}
	limit := m.MaxJobRows()
	// Lines of a sliceable model whose shapes differ (image sizes, sequence
	// lengths) still share a job, laid end to end; the worker runs those of
	// one shape (once padded, where the config asks) together.
	mixable := m.Sliceable()
	body := bufio.NewReaderSize(http.MaxBytesReader(w, r.Body, s.opts.MaxBatchBytes), 1<<20)
	readErr := s.parseLines(m, body, func(line int64, text []byte, p parsedLine, perr error) error {
		n = line
		il := indexLine{Line: n, CustomID: p.customID, OpenAI: p.openai}
		req, rows, key := p.req, p.rows, p.key
		if perr != nil {
			invalid++
			il.Error = fmt.Sprintf("line %d: %v", n, perr)
			// The lines before it go first, to keep the index in order.
			if err := flush(); err != nil {
				return err
			}
			return enc.Encode(il)
		}
		if len(cur.lines) > 0 && !(key != "" && cur.key != "" && (cur.key == key || mixable) &&
			cur.rows+rows <= limit && cur.bytes+len(text) <= packBytes && slices.Equal(cur.outs, req.Outputs)) {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(cur.lines) > 0 && cur.key != key {
			key = endToEnd // lines of different shapes share the job end to end
		}
		il.Rows = rows
		il.Row = cur.rows
		cur.key, cur.outs = key, req.Outputs
		cur.lines = append(cur.lines, il)
		cur.reqs = append(cur.reqs, p.inputs)
		cur.rows += rows
		cur.bytes += len(text)
		if n%4096 == 0 && s.batchCancelled(ctx, rec.ID) {
			return errors.New("the batch was cancelled while it was being read")
		}
		return nil
	})
	if readErr == nil {
		readErr = flush()
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
		case errors.As(readErr, new(lineTooLong)):
			code = http.StatusRequestEntityTooLarge
		case errors.Is(readErr, os.ErrDeadlineExceeded):
			msg, code = s.bodyStalled().Error(), http.StatusRequestTimeout
		case errors.As(readErr, &refused):
			code, retryAfter = refused.code, refused.retryAfter
		}
		rec, _ = s.opts.Batches.Update(ctx, rec.ID, func(b *jobs.BatchRecord) error {
			if b.Status != jobs.BatchCancelled {
				b.Status, b.Error, b.FinishedAt = jobs.BatchFailed, msg, &done
			}
			b.Counts.Total, b.Jobs = n, jobCount
			return nil
		})
		return &httpError{code: code, retryAfter: retryAfter, msg: fmt.Sprintf("batch %s failed after %d lines: %s", rec.ID, n, msg)}
	}
	rec, err = s.opts.Batches.Update(ctx, rec.ID, func(b *jobs.BatchRecord) error {
		b.Counts.Total = n
		b.Counts.Failed += invalid
		b.Jobs = jobCount
		b.QueuedAt = &done
		if b.Status == jobs.BatchQueued {
			b.Status = jobs.BatchRunning
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

// lineTooLong is a batch file line over the size of a request (the
// limit, --max-body).
type lineTooLong int64

func (e lineTooLong) Error() string {
	return fmt.Sprintf("a line is longer than %d bytes (--max-body)", int64(e))
}

// readLine reads one line, refusing lines longer than max.
func readLine(r *bufio.Reader, max int64) ([]byte, error) {
	var line []byte
	for {
		part, err := r.ReadSlice('\n')
		line = append(line, part...)
		if int64(len(line)) > max {
			return nil, lineTooLong(max)
		}
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}

// peekCustomID finds the custom_id of a line that is not a valid request,
// when it comes before what is wrong, so that its error line can still be
// matched to it.
func peekCustomID(line []byte) json.RawMessage {
	dec := json.NewDecoder(bytes.NewReader(line))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil
		}
		if t == "custom_id" {
			return v
		}
	}
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
	req, err := tensor.DecodeRequest(line, s.opts.Limits)
	if err != nil {
		p := parsedLine{customID: peekCustomID(line)}
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
	if err := checkObjects(m.Name, req); err != nil {
		return p, err
	}
	p.inputs, _ = m.OrderedInputs(req) // Check found them all
	switch {
	case slices.ContainsFunc(req.Inputs, func(t tensor.Tensor) bool { return t.Object != "" }) || !m.Stackable && m.Config.Padding != nil:
		// never shares a job
	case !m.Stackable:
		// Lines that cannot share a run still share a job, laid end to
		// end whatever their shapes, and run one at a time.
		p.key = endToEnd
	default:
		p.key = batching.Key(p.inputs, m.Batched)
	}
	return p, nil
}

// endToEnd is the key of lines packed end to end (see batching.Pack).
const endToEnd = "end to end"

// submitChunk queues a chunk's lines as one job: stacked along the batch
// dimension, or end to end when they cannot be stacked (a model that
// cannot stack rows, or lines whose shapes differ).
func (s *Server) submitChunk(r *http.Request, m *model.Model, batch, id string, c *chunk) error {
	req := &tensor.Request{Outputs: c.outs}
	var lines *batching.Lines
	var err error
	if c.key == endToEnd && len(c.reqs) > 1 {
		var shapes [][][]int64
		if req.Inputs, shapes, err = batching.Pack(c.reqs); err != nil {
			return err
		}
		lines = &batching.Lines{Shapes: shapes}
	} else if req.Inputs, err = batching.Stack(c.reqs, m.Batched); err != nil {
		return err
	} else if len(c.lines) > 1 {
		// Each line's rows, so that a run that fails can be retried a
		// line at a time and fail only the lines at fault.
		rows := make([]int, len(c.lines))
		for i, l := range c.lines {
			rows[i] = l.Rows
		}
		lines = &batching.Lines{Rows: rows}
	}
	job, rec := jobs.New(req, jobs.Spec{ID: id, Model: m.Name, Rows: c.rows, Batch: batch, Lines: len(c.lines)})
	job.Lines = lines
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
	return err == nil && b.Status == jobs.BatchCancelled
}

// cancelJobs cancels those of ids still queued, a few at a time.
func (s *Server) cancelJobs(ctx context.Context, ids []string) {
	now := time.Now().UTC()
	var wg sync.WaitGroup
	slots := make(chan struct{}, 32)
	for _, id := range ids {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			rec, err := s.opts.Records.Update(ctx, id, func(rec *jobs.Record) error {
				if rec.Status != jobs.Queued {
					return jobs.ErrConflict
				}
				rec.Status, rec.FinishedAt, rec.Error = jobs.Cancelled, &now, "the batch was cancelled"
				return nil
			})
			if err == nil {
				_ = s.opts.Queue.Announce(rec, nil)
			}
		})
	}
	wg.Wait()
}

func (s *Server) batchRecord(ctx context.Context, id string) (*jobs.BatchRecord, error) {
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
func (s *Server) batchFor(r *http.Request) (*jobs.BatchRecord, error) {
	rec, err := s.batchRecord(r.Context(), r.PathValue("id"))
	if err != nil {
		return nil, err
	}
	if err := allow(r, rec.Model); err != nil {
		return nil, err
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
	if _, err := s.opts.Batches.Update(ctx, rec.ID, func(b *jobs.BatchRecord) error {
		b.Status, b.FinishedAt = jobs.BatchCancelled, &now
		return nil
	}); err != nil {
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "batch records are unavailable: " + err.Error()}
	}
	if rec.Status == jobs.BatchRunning {
		var ids []string
		err := s.eachIndexGroup(ctx, rec, func(job string, _ []indexLine) error {
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
func (s *Server) eachIndexGroup(ctx context.Context, rec *jobs.BatchRecord, fn func(job string, lines []indexLine) error) error {
	rc, err := s.opts.Objects.Get(ctx, rec.Index)
	if err != nil {
		return err
	}
	defer rc.Close()
	// encoding/json/v2's decoder: encoding/json's took most of the time
	// of reading a large batch's output back.
	dec := jsontext.NewDecoder(bufio.NewReaderSize(rc, 256<<10))
	var group []indexLine
	for {
		var l indexLine
		err := jsonv2.UnmarshalDecode(dec, &l)
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read batch index: %w", err)
		}
		if len(group) > 0 && (l.Job == "" || l.Job != group[0].Job) {
			if err := fn(group[0].Job, group); err != nil {
				return err
			}
			group = group[:0]
		}
		group = append(group, l)
	}
	if len(group) > 0 {
		return fn(group[0].Job, group)
	}
	return nil
}

// batchOutput streams a finished batch's output: a JSON line per input
// line, in input order, with its custom_id and either the V2 response of
// its rows or an error. Jobs are read ahead a few at a time.
func (s *Server) batchOutput(w http.ResponseWriter, r *http.Request) error {
	rec, err := s.batchFor(r)
	if err != nil {
		return err
	}
	errorsOnly := false
	switch only := r.URL.Query().Get("only"); only {
	case "":
	case "errors":
		errorsOnly = true
	default:
		return errorf(http.StatusBadRequest, "only=%q: the one choice is only=errors (the failed lines alone, each with its line number)", only)
	}
	if !rec.Final() {
		writeJSON(w, http.StatusConflict, map[string]any{
			"error": fmt.Sprintf("batch %s is %s: %d of %d lines done; its output is ready when it has finished", rec.ID, rec.Status, rec.Counts.Done(), rec.Counts.Total),
			"batch": rec,
		})
		return nil
	}
	if rec.Status == jobs.BatchFailed && !rec.Read() {
		// The file could not be read to the end, and nothing of it ran.
		writeJSON(w, http.StatusConflict, map[string]any{
			"error": fmt.Sprintf("batch %s failed and has no output: %s", rec.ID, rec.Error),
			"batch": rec,
		})
		return nil
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	type group struct {
		job   string
		lines []indexLine
		out   chan [][]byte
	}
	groups := make(chan *group, 64)
	ahead := make(chan struct{}, 16)
	readErr := make(chan error, 1)
	go func() {
		defer close(groups)
		readErr <- s.eachIndexGroup(ctx, rec, func(job string, lines []indexLine) error {
			g := &group{job: job, lines: slices.Clone(lines), out: make(chan [][]byte, 1)}
			select {
			case ahead <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			go func() {
				defer func() { <-ahead }()
				g.out <- s.outputLines(ctx, rec.ID, g.job, g.lines, errorsOnly)
			}()
			select {
			case groups <- g:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	w.Header().Set("Content-Type", "application/jsonl")
	w.WriteHeader(http.StatusOK)
	out := bufio.NewWriterSize(w, 256<<10)
	for g := range groups {
		for _, l := range <-g.out {
			if _, err := out.Write(l); err != nil {
				return nil // the client left
			}
		}
	}
	if err := <-readErr; err != nil && ctx.Err() == nil {
		s.log.Warn("batch output cut short", "batch", rec.ID, "err", err)
		msg, _ := json.Marshal("the output could not be read to the end: " + err.Error())
		fmt.Fprintf(out, "{\"error\":%s}\n", msg)
	}
	return out.Flush()
}

// outputLines makes the output lines of one job's lines.
func (s *Server) outputLines(ctx context.Context, batch, job string, lines []indexLine, errorsOnly bool) [][]byte {
	fail := func(msg string) [][]byte {
		out := make([][]byte, len(lines))
		for i, l := range lines {
			if l.Error != "" {
				msg = l.Error
			}
			ol := newOutputLine(batch, l)
			ol.Error = msg
			if errorsOnly {
				ol.Line = l.Line
			}
			out[i] = ol.appendLine(nil)
		}
		return out
	}
	if job == "" {
		return fail("")
	}
	rec, err := s.opts.Records.Get(ctx, job)
	if err != nil {
		return fail("the job's record is unavailable: " + err.Error())
	}
	rec = s.expire(rec)
	if errorsOnly && rec.Status == jobs.Succeeded && rec.Result != nil && rec.LinesFailed == 0 {
		return nil // every line succeeded: no need to read the result
	}
	if rec.Status != jobs.Succeeded || rec.Result == nil {
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
	rows := make([]int, len(lines))
	for i, l := range lines {
		rows[i] = l.Rows
	}
	parts := [][]tensor.Tensor{resp.Outputs}
	packed, err := batching.ParseLines(resp.Parameters)
	switch {
	case err != nil:
	case packed != nil && len(packed.Shapes) != len(lines):
		err = fmt.Errorf("the result holds %d responses for %d lines", len(packed.Shapes), len(lines))
	case packed != nil:
		parts, err = batching.Unpack(resp.Outputs, packed.Shapes)
	case len(lines) > 1:
		parts, err = batching.Split(resp.Outputs, rows)
	}
	if err != nil {
		return fail(err.Error())
	}
	out := make([][]byte, 0, len(lines))
	for i, l := range lines {
		ol := newOutputLine(batch, l)
		msg, failed := packed.Failed(i)
		switch {
		case failed && errorsOnly:
			ol.Error, ol.Line = msg, l.Line
		case failed:
			ol.Error = msg
		case errorsOnly:
			continue
		default:
			r := tensor.Response{ModelName: resp.ModelName, ModelVersion: resp.ModelVersion, ID: job, Outputs: parts[i]}
			ol.Response = r.AppendJSON(nil)
		}
		out = append(out, ol.appendLine(nil))
	}
	return out
}

// appendLine appends l as one line of JSON. It writes the fields itself:
// json.Marshal would check and compact the response, which AppendJSON has
// just written compact, and that was most of the output's cost.
func (l *outputLine) appendLine(b []byte) []byte {
	if l.OpenAI {
		return l.appendOpenAI(b)
	}
	b = append(b, `{"custom_id":`...)
	if len(l.CustomID) == 0 {
		b = append(b, "null"...)
	} else if c, err := compactJSON(b, l.CustomID); err == nil {
		b = c
	} else {
		b = append(b, "null"...) // not JSON: the index is damaged
	}
	if l.Line > 0 {
		b = strconv.AppendInt(append(b, `,"line":`...), l.Line, 10)
	}
	if len(l.Response) > 0 {
		b = append(append(b, `,"response":`...), l.Response...)
	}
	if l.Error != "" {
		msg, _ := json.Marshal(l.Error)
		b = append(append(b, `,"error":`...), msg...)
	}
	return append(b, "}\n"...)
}

// compactJSON appends raw to b without insignificant space.
func compactJSON(b []byte, raw []byte) ([]byte, error) {
	buf := bytes.NewBuffer(b)
	if err := json.Compact(buf, raw); err != nil {
		return b, err
	}
	return buf.Bytes(), nil
}
