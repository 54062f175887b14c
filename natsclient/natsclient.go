// Package natsclient submits jobs to inferq and follows their results
// straight over NATS JetStream, for services already on NATS that should
// not need the HTTP hop. Jobs submitted this way get records and results
// like HTTP ones; the worker checks them against the model, and one that
// does not fit ends failed with the reason (the HTTP API refuses such a
// request before queueing it instead).
//
// The subjects and message format are documented in docs/nats.md.
package natsclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// Client submits and follows jobs through JetStream. It is safe for
// concurrent use.
type Client struct {
	q *jobs.Queue
}

// New opens inferq's streams and buckets on js as the API and workers set
// them up, changing none of their settings (replicas, retention, limits);
// it fails where inferq has not been started on js yet.
func New(ctx context.Context, js jetstream.JetStream) (*Client, error) {
	q, err := jobs.Open(ctx, js)
	if err != nil {
		return nil, fmt.Errorf("natsclient: %w", err)
	}
	return &Client{q: q}, nil
}

// Options are a job's optional settings.
type Options struct {
	// Version pins a model version; 0 is the default version.
	Version int64
	// Priority is record.High or record.Normal.
	Priority record.Priority
	// Deadline expires the job if it has not started by then.
	Deadline time.Time
	// Webhook is called when the job finishes.
	Webhook string
}

// Submit queues req for model and returns the job's record once JetStream
// has stored it.
func (c *Client) Submit(ctx context.Context, model string, req *tensor.Request, opts Options) (*record.Record, error) {
	if len(req.Inputs) == 0 {
		return nil, errors.New("natsclient: the request has no inputs")
	}
	job, rec := jobs.New(req, jobs.Spec{Model: model, Version: opts.Version, Priority: opts.Priority, Deadline: opts.Deadline, Webhook: opts.Webhook})
	if err := c.q.Submit(ctx, job, rec); err != nil {
		return nil, err
	}
	return rec, nil
}

// Job returns a job's record.
func (c *Client) Job(ctx context.Context, id string) (*record.Record, error) {
	rec, err := c.q.Records.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return rec.Public(), nil
}

// Result is one finished job, as the results stream carries it.
type Result struct {
	// Seq is its position in the results stream: pass it to Follow to
	// resume after it.
	Seq uint64
	jobs.Announcement
}

// Response decodes the V2 response carried inline, when there is one
// (results larger than jobs.MaxInlineResponse are read over HTTP from the
// record's result_url).
func (r *Result) Response() (*tensor.Response, error) {
	if len(r.Announcement.Response) == 0 {
		return nil, fmt.Errorf("job %s (%s) has no inline response", r.ID, r.Status)
	}
	return tensor.DecodeResponse(r.Announcement.Response)
}

// Position is the results stream's position now. Taken before
// submitting and passed to Follow with fromStart set, it lets a follower
// started afterwards (in another goroutine, say) miss none of the results
// of those jobs, however fast they finish.
func (c *Client) Position(ctx context.Context) (uint64, error) {
	return c.q.ResultsPosition(ctx)
}

// Follow calls fn with each finished job of model, in order, until ctx
// ends or fn returns an error. after resumes after a Result's Seq (or a
// Position). With after 0 it starts from the oldest result retained when
// fromStart is set, and otherwise from the moment it begins following.
func (c *Client) Follow(ctx context.Context, model string, after uint64, fromStart bool, fn func(Result) error) error {
	if after == 0 && !fromStart {
		pos, err := c.q.ResultsPosition(ctx)
		if err != nil {
			return err
		}
		after, fromStart = pos, pos == 0
	}
	return c.q.FollowResults(ctx, model, after, fromStart, func(seq uint64, data []byte) error {
		r := Result{Seq: seq}
		if err := json.Unmarshal(data, &r.Announcement); err != nil {
			return fmt.Errorf("natsclient: decode result %d: %w", seq, err)
		}
		return fn(r)
	})
}
