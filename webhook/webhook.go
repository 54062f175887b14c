// Package webhook calls the URL a job names when it finishes. A Dispatcher
// consumes the results stream through a durable consumer shared by every
// dispatcher of the deployment, so each finished job's webhook is called by
// one of them, and retried with backoff until the receiver answers 2xx or
// the attempts run out.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/inferq/inferq/jobs"
)

// SignatureHeader carries the HMAC-SHA256 of a delivery: "t=<unix
// seconds>,v1=<hex of HMAC(secret, "<t>.<body>")>". Receivers recompute it
// with the shared secret, and reject old timestamps to stop replays.
const SignatureHeader = "Inferq-Signature"

// Sign returns the SignatureHeader value of body at time t.
func Sign(secret, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Source gives the dispatcher its durable consumer; *jobs.Queue is one.
type Source interface {
	WebhookConsumer(ctx context.Context, maxDeliver int) (jetstream.Consumer, error)
}

// Options configure a Dispatcher. Source is required.
type Options struct {
	Source Source
	// Secret signs every delivery (SignatureHeader). Empty sends them
	// unsigned.
	Secret []byte
	// Client makes the calls. Default: a client with a 10s timeout.
	Client *http.Client
	// MaxAttempts bounds the calls per job. Default 10.
	MaxAttempts int
	// Backoff is the wait after the first failed call; it doubles, up to
	// 10 minutes. Default 2s.
	Backoff time.Duration
	// Concurrency bounds the calls in flight. Default 16.
	Concurrency int
	Registerer  prometheus.Registerer
	Logger      *slog.Logger
}

// Dispatcher delivers webhooks. Start it with Run.
type Dispatcher struct {
	opts       Options
	deliveries *prometheus.CounterVec
	cons       jetstream.Consumer // set by Subscribe
}

// New returns a Dispatcher.
func New(opts Options) (*Dispatcher, error) {
	if opts.Source == nil {
		return nil, errors.New("webhook: Source is required")
	}
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 10
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 2 * time.Second
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 16
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Dispatcher{opts: opts, deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "inferq_webhook_deliveries_total",
		Help: "Webhook calls, by outcome: delivered, retried (failed, to be tried again) and abandoned (failed for the last time).",
	}, []string{"outcome"})}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(d.deliveries); err != nil {
			return nil, fmt.Errorf("register webhook metrics: %w", err)
		}
	}
	return d, nil
}

// Subscribe creates, or finds, the durable consumer that dispatchers
// share. It delivers only what is announced after it was first created,
// so call it before accepting jobs (Run calls it if it was not): on a new
// system's first start, a job with a webhook that finished before the
// dispatcher got going would otherwise never be delivered.
func (d *Dispatcher) Subscribe(ctx context.Context) error {
	cons, err := d.opts.Source.WebhookConsumer(ctx, d.opts.MaxAttempts)
	if err != nil {
		return err
	}
	d.cons = cons
	return nil
}

// Run delivers webhooks until ctx ends, then waits for the calls in
// flight.
//
// It pulls with Fetch requests of a bounded wait; when ctx ends it stops
// asking, and handles what the request under way brings until that
// request ends. (A continuous pull stopped by unsubscribing lost an
// announcement on its way at that moment: JetStream held it as
// delivered until its ack wait ran out.)
func (d *Dispatcher) Run(ctx context.Context) error {
	if d.cons == nil {
		if err := d.Subscribe(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	slots := make(chan struct{}, d.opts.Concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		// As many as there are calls allowed in flight: a job that waited
		// here for a free call would spend its ack wait waiting.
		b, err := d.cons.Fetch(d.opts.Concurrency, jetstream.FetchMaxWait(500*time.Millisecond))
		if err == nil {
			for m := range b.Messages() {
				if m.Headers().Get(jobs.HeaderWebhook) == "" { // most jobs: nothing to call
					_ = m.Ack()
					continue
				}
				slots <- struct{}{}
				wg.Go(func() {
					defer func() { <-slots }()
					d.handle(context.WithoutCancel(ctx), m)
				})
			}
			err = b.Error()
		}
		if err == nil {
			backoff = 100 * time.Millisecond
			continue
		}
		// NATS away or the consumer gone: try again, more slowly.
		if ctx.Err() == nil {
			d.opts.Logger.Warn("webhooks: pulling results", "err", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

func (d *Dispatcher) handle(ctx context.Context, m jetstream.Msg) {
	if m.Headers().Get(jobs.HeaderWebhook) == "" { // most jobs: no decoding
		_ = m.Ack()
		return
	}
	var rec jobs.Record
	if err := json.Unmarshal(m.Data(), &rec); err != nil || rec.Webhook == "" {
		_ = m.Ack()
		return
	}
	attempt := 1
	if meta, err := m.Metadata(); err == nil {
		attempt = int(meta.NumDelivered)
	}
	log := d.opts.Logger.With("job", rec.ID, "url", rec.Webhook, "attempt", attempt)
	err := d.call(ctx, rec, m.Data())
	switch {
	case err == nil:
		d.deliveries.WithLabelValues("delivered").Inc()
		_ = m.Ack()
	case attempt >= d.opts.MaxAttempts:
		d.deliveries.WithLabelValues("abandoned").Inc()
		log.Warn("webhook abandoned after its last attempt", "err", err)
		_ = m.Term()
	default:
		d.deliveries.WithLabelValues("retried").Inc()
		wait := d.opts.Backoff << min(attempt-1, 16)
		wait = min(wait, 10*time.Minute)
		log.Info("webhook failed; will retry", "err", err, "in", wait)
		_ = m.NakWithDelay(wait)
	}
}

func (d *Dispatcher) call(ctx context.Context, rec jobs.Record, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, "POST", rec.Webhook, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "inferq-webhook")
	req.Header.Set(jobs.HeaderJobID, rec.ID)
	if len(d.opts.Secret) > 0 {
		req.Header.Set(SignatureHeader, Sign(d.opts.Secret, body, time.Now()))
	}
	res, err := d.opts.Client.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("receiver answered %s", res.Status)
	}
	return nil
}
