// Package client is a Go client of inferq's HTTP API: submit jobs, poll and
// read their results, follow a model's results as they finish, and run
// batch files. The inferq command's client subcommands use it.
package client

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/traffic"
)

// Client talks to one inferq API. The zero value is not usable; use New.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New returns a client of the API at baseURL (such as
// http://localhost:8080). token, when not empty, is sent as a bearer
// token.
func New(baseURL, token string) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("inferq URL %q: want http(s)://host:port", baseURL)
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), token: token, http: &http.Client{}}, nil
}

// Error is an answer of the API other than success.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("inferq: %d %s", e.Status, e.Message) }

// JobOptions are a job's optional settings.
type JobOptions struct {
	// Version pins a model version; 0 is the default version.
	Version int64
	// Priority is "high" or "" (normal).
	Priority string
	// Timeout expires the job if it has not started within it.
	Timeout time.Duration
	// IdempotencyKey makes a repeated submission answer the first job.
	IdempotencyKey string
	// Webhook is called when the job finishes.
	Webhook string
	// ContentType is the request's media type: empty for a V2 JSON
	// request, or a file's (image/jpeg, audio/wav, ...), sent as it is to
	// a model or pipeline of one BYTES input.
	ContentType string
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, header http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("inferq: %w", err)
	}
	return res, nil
}

// decode reads a JSON answer into v, or the error the API sent.
func decode(res *http.Response, v any, ok ...int) error {
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return fmt.Errorf("inferq: read answer: %w", err)
	}
	good := res.StatusCode/100 == 2
	for _, code := range ok {
		good = good || res.StatusCode == code
	}
	if !good {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return &Error{Status: res.StatusCode, Message: e.Error}
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("inferq: decode answer: %w", err)
	}
	return nil
}

// Submit submits a V2 request (JSON) to model and returns the job's
// record.
func (c *Client) Submit(ctx context.Context, model string, request []byte, opts JobOptions) (*record.Record, error) {
	path := "/v1/models/" + url.PathEscape(model) + "/jobs"
	if opts.Version > 0 {
		path = fmt.Sprintf("/v1/models/%s/versions/%d/jobs", url.PathEscape(model), opts.Version)
	}
	h := http.Header{"Content-Type": {cmp.Or(opts.ContentType, "application/json")}}
	if opts.Priority != "" {
		h.Set("Inferq-Priority", opts.Priority)
	}
	if opts.Timeout > 0 {
		h.Set("Inferq-Timeout", opts.Timeout.String())
	}
	if opts.IdempotencyKey != "" {
		h.Set("Idempotency-Key", opts.IdempotencyKey)
	}
	if opts.Webhook != "" {
		h.Set("Inferq-Webhook", opts.Webhook)
	}
	res, err := c.do(ctx, "POST", path, bytes.NewReader(request), h)
	if err != nil {
		return nil, err
	}
	var rec record.Record
	return &rec, decode(res, &rec)
}

// Job returns a job's record, waiting up to wait for it to be final.
func (c *Client) Job(ctx context.Context, id string, wait time.Duration) (*record.Record, error) {
	path := "/v1/jobs/" + url.PathEscape(id)
	if wait > 0 {
		path += "?wait=" + wait.String()
	}
	res, err := c.do(ctx, "GET", path, nil, nil)
	if err != nil {
		return nil, err
	}
	var rec record.Record
	return &rec, decode(res, &rec)
}

// Await polls a job until it is final or ctx ends.
func (c *Client) Await(ctx context.Context, id string) (*record.Record, error) {
	for {
		rec, err := c.Job(ctx, id, 30*time.Second)
		if err != nil || rec.Status.Final() {
			return rec, err
		}
		if err := ctx.Err(); err != nil {
			return rec, err
		}
	}
}

// Result returns a succeeded job's V2 response, as JSON.
func (c *Client) Result(ctx context.Context, id string) ([]byte, error) {
	res, err := c.do(ctx, "GET", "/v1/jobs/"+url.PathEscape(id)+"/result", nil, nil)
	if err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := decode(res, &raw); err != nil {
		return nil, err
	}
	return raw, nil
}

// Cancel cancels a queued job.
func (c *Client) Cancel(ctx context.Context, id string) (*record.Record, error) {
	res, err := c.do(ctx, "DELETE", "/v1/jobs/"+url.PathEscape(id), nil, nil)
	if err != nil {
		return nil, err
	}
	var rec record.Record
	return &rec, decode(res, &rec)
}

// Event is one event of a stream.
type Event struct {
	ID, Name string
	Data     []byte
}

// Watch follows a model's finished jobs (GET /v1/models/{model}/results)
// and calls fn with each, until ctx ends or fn returns an error. When the
// connection drops it reconnects and resumes after the last event seen,
// so fn sees every result once. after resumes after an event id; "start"
// replays what the server retains; "" starts from now.
func (c *Client) Watch(ctx context.Context, model, after string, fn func(Event) error) error {
	last := after
	for {
		err := c.watchOnce(ctx, model, &last, fn)
		if ctx.Err() != nil {
			return nil
		}
		var apiErr *Error
		if errors.As(err, &apiErr) && apiErr.Status/100 == 4 {
			return err
		}
		var fnErr fnError
		if errors.As(err, &fnErr) {
			return fnErr.err
		}
		select { // reconnect after a pause
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

func (c *Client) watchOnce(ctx context.Context, model string, last *string, fn func(Event) error) error {
	path := "/v1/models/" + url.PathEscape(model) + "/results"
	h := http.Header{"Accept": {"text/event-stream"}}
	switch *last {
	case "":
	case "start":
		path += "?from=start"
	default:
		h.Set("Last-Event-ID", *last)
	}
	res, err := c.do(ctx, "GET", path, nil, h)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return decode(res, nil)
	}
	defer res.Body.Close()
	events := NewEventReader(res.Body)
	for {
		ev, err := events.Next()
		if errors.Is(err, io.EOF) {
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
		if err := fn(ev); err != nil {
			return fnError{err}
		}
		if ev.ID != "" {
			*last = ev.ID
		}
	}
}

// CreateBatch uploads a JSON Lines batch file to model, streaming it.
func (c *Client) CreateBatch(ctx context.Context, model string, body io.Reader) (*record.BatchRecord, error) {
	res, err := c.do(ctx, "POST", "/v1/models/"+url.PathEscape(model)+"/batches", body, http.Header{"Content-Type": {"application/jsonl"}})
	if err != nil {
		return nil, err
	}
	var rec record.BatchRecord
	return &rec, decode(res, &rec)
}

// CreateSourceBatch starts a batch over the objects under source (a
// prefix under inputs/{model}/ of the result store, or an s3:// URL the
// server allows): a line per object, the object the model's input.
func (c *Client) CreateSourceBatch(ctx context.Context, model, source string) (*record.BatchRecord, error) {
	res, err := c.do(ctx, "POST", "/v1/models/"+url.PathEscape(model)+"/batches?source="+url.QueryEscape(source), nil, nil)
	if err != nil {
		return nil, err
	}
	var rec record.BatchRecord
	return &rec, decode(res, &rec)
}

// FollowBatch copies a batch's output lines to w as they finish (each
// with its line number, in the order they finished), until every line
// has come. A dropped stream is resumed after the lines already written.
func (c *Client) FollowBatch(ctx context.Context, id string, w io.Writer) error {
	var n int64
	for pause := time.Duration(0); ; pause = min(2*pause+100*time.Millisecond, 5*time.Second) {
		if pause > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(pause):
			}
		}
		res, err := c.do(ctx, "GET", fmt.Sprintf("/v1/batches/%s/output?follow=1&after=%d", url.PathEscape(id), n), nil, nil)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			continue // the server away: ask again
		}
		if res.StatusCode != http.StatusOK {
			return decode(res, nil)
		}
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(nil, 256<<20)
		cut := false
		for sc.Scan() {
			line := sc.Bytes()
			if !bytes.Contains(line, []byte(`"line":`)) {
				cut = true // the server said why it stopped: ask again
				break
			}
			if _, err := w.Write(append(line, '\n')); err != nil {
				res.Body.Close()
				return err
			}
			n++
		}
		res.Body.Close()
		if cut || sc.Err() != nil {
			continue
		}
		rec, err := c.Batch(ctx, id)
		if err != nil {
			continue
		}
		if rec.Final() && (n >= rec.Counts.Total || !rec.Read()) {
			return nil
		}
	}
}

// BatchParquet copies a finished batch's output as one Parquet file to w.
func (c *Client) BatchParquet(ctx context.Context, id string, w io.Writer) error {
	return c.copyOutput(ctx, "/v1/batches/"+url.PathEscape(id)+"/output?format=parquet", w)
}

// SetBaseline takes model's drift baseline from the statistics of a batch
// file's jobs (batch) or of the last span (since, such as "1h"), for
// version ("" the default), and returns it as the server keeps it (JSON).
func (c *Client) SetBaseline(ctx context.Context, model, batch, since, version string) (json.RawMessage, error) {
	body, _ := json.Marshal(map[string]string{"batch": batch, "since": since, "version": version})
	res, err := c.do(ctx, "POST", "/v1/models/"+url.PathEscape(model)+"/monitoring/baseline", bytes.NewReader(body), http.Header{"Content-Type": {"application/json"}})
	if err != nil {
		return nil, err
	}
	var out json.RawMessage
	return out, decode(res, &out)
}

// Traffic returns GET /v1/models/{model}/traffic (JSON): the model's
// traffic split in force, where it comes from, and its versions.
func (c *Client) Traffic(ctx context.Context, model string) (json.RawMessage, error) {
	return c.trafficCall(ctx, "GET", model, nil)
}

// SetTraffic sets model's traffic split (PUT /v1/models/{model}/traffic)
// and returns it as the server now holds it (JSON).
func (c *Client) SetTraffic(ctx context.Context, model string, split traffic.Split) (json.RawMessage, error) {
	body, err := json.Marshal(split)
	if err != nil {
		return nil, err
	}
	return c.trafficCall(ctx, "PUT", model, body)
}

// ResetTraffic removes the split set at run time: the model's
// config.yaml's applies again.
func (c *Client) ResetTraffic(ctx context.Context, model string) (json.RawMessage, error) {
	return c.trafficCall(ctx, "DELETE", model, nil)
}

func (c *Client) trafficCall(ctx context.Context, method, model string, body []byte) (json.RawMessage, error) {
	var rd io.Reader
	h := http.Header{}
	if body != nil {
		rd, h = bytes.NewReader(body), http.Header{"Content-Type": {"application/json"}}
	}
	res, err := c.do(ctx, method, "/v1/models/"+url.PathEscape(model)+"/traffic", rd, h)
	if err != nil {
		return nil, err
	}
	var out json.RawMessage
	return out, decode(res, &out)
}

// Monitoring returns GET /v1/models/{model}/monitoring (JSON).
func (c *Client) Monitoring(ctx context.Context, model string) (json.RawMessage, error) {
	res, err := c.do(ctx, "GET", "/v1/models/"+url.PathEscape(model)+"/monitoring", nil, nil)
	if err != nil {
		return nil, err
	}
	var out json.RawMessage
	return out, decode(res, &out)
}

// Batch returns a batch's record.
func (c *Client) Batch(ctx context.Context, id string) (*record.BatchRecord, error) {
	res, err := c.do(ctx, "GET", "/v1/batches/"+url.PathEscape(id), nil, nil)
	if err != nil {
		return nil, err
	}
	var rec record.BatchRecord
	return &rec, decode(res, &rec)
}

// BatchOutput copies a finished batch's output (JSON Lines) to w.
func (c *Client) BatchOutput(ctx context.Context, id string, w io.Writer) error {
	return c.copyOutput(ctx, "/v1/batches/"+url.PathEscape(id)+"/output", w)
}

// BatchErrors copies the failed lines of a finished batch's output to w,
// each with its input line number.
func (c *Client) BatchErrors(ctx context.Context, id string, w io.Writer) error {
	return c.copyOutput(ctx, "/v1/batches/"+url.PathEscape(id)+"/output?only=errors", w)
}

func (c *Client) copyOutput(ctx context.Context, path string, w io.Writer) error {
	res, err := c.do(ctx, "GET", path, nil, nil)
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return decode(res, nil)
	}
	defer res.Body.Close()
	if _, err := io.Copy(w, res.Body); err != nil {
		return fmt.Errorf("inferq: read batch output: %w", err)
	}
	return nil
}

// DeadLetters returns a page of a model's failed jobs, oldest first,
// after the dead letter with seq after (0 for the first page).
func (c *Client) DeadLetters(ctx context.Context, model string, after uint64, limit int) ([]record.DeadLetter, error) {
	path := fmt.Sprintf("/v1/models/%s/dead-letters?after=%d", url.PathEscape(model), after)
	if limit > 0 {
		path += fmt.Sprintf("&limit=%d", limit)
	}
	res, err := c.do(ctx, "GET", path, nil, nil)
	if err != nil {
		return nil, err
	}
	var page struct {
		DeadLetters []record.DeadLetter `json:"dead_letters"`
	}
	if err := decode(res, &page); err != nil {
		return nil, err
	}
	return page.DeadLetters, nil
}

// Replay queues a failed job's request again as a new job and returns the
// new job's record.
func (c *Client) Replay(ctx context.Context, model, id string) (*record.Record, error) {
	res, err := c.do(ctx, "POST", "/v1/models/"+url.PathEscape(model)+"/dead-letters/"+url.PathEscape(id)+"/replay", nil, nil)
	if err != nil {
		return nil, err
	}
	var rec record.Record
	return &rec, decode(res, &rec)
}

// Models returns the names of the models served.
func (c *Client) Models(ctx context.Context) ([]string, error) {
	res, err := c.do(ctx, "GET", "/v1/models", nil, nil)
	if err != nil {
		return nil, err
	}
	var list struct {
		Models []struct {
			Name string `json:"name"`
		} `json:"models"`
	}
	if err := decode(res, &list); err != nil {
		return nil, err
	}
	names := make([]string, len(list.Models))
	for i, m := range list.Models {
		names[i] = m.Name
	}
	return names, nil
}
