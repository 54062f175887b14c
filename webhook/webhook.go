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
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/inferq/inferq/internal/pull"
	"github.com/inferq/inferq/internal/retry"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
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
	// Policy says which addresses webhooks may reach; the zero value,
	// public addresses only.
	Policy Policy
	// Client makes the calls. Default: Policy's client, with a 10s
	// timeout. A client given here is used as it is, policy and all.
	Client *http.Client
	// MaxAttempts bounds the calls per job. Default 10.
	MaxAttempts int
	// Backoff is the wait after the first failed call; it doubles, up to
	// 10 minutes. Default 2s.
	Backoff time.Duration
	// Concurrency bounds the calls in flight, all receivers together.
	// Default 64.
	Concurrency int
	// PerHost bounds the calls in flight to one receiving host (name and
	// port), so that a slow receiver delays only its own deliveries.
	// Default 4.
	PerHost int
	// HostQueue bounds the deliveries held waiting for one host; past it
	// a delivery is handed back to be tried later, which uses up one of
	// its attempts. Default 256.
	HostQueue  int
	Registerer prometheus.Registerer
	Logger     *slog.Logger
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
		opts.Client = opts.Policy.Client(10 * time.Second)
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 10
	}
	if opts.Backoff <= 0 {
		opts.Backoff = 2 * time.Second
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 64
	}
	if opts.PerHost <= 0 {
		opts.PerHost = 4
	}
	if opts.HostQueue <= 0 {
		opts.HostQueue = 256
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Dispatcher{opts: opts, deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "inferq_webhook_deliveries_total",
		Help: "Webhook calls, by outcome: delivered, retried (failed, to be tried again), abandoned (failed for the last time), deferred (its host had too many waiting; tried again later) and refused (a target the policy does not allow).",
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

// delivery is a job's webhook to call.
type delivery struct {
	msg jetstream.Msg
	rec record.Record
}

// Run delivers webhooks until ctx ends, then waits for the calls in
// flight and hands back the deliveries still waiting.
//
// Calls are shared among receiving hosts (Options.PerHost, HostQueue):
// the deliveries of a host with its calls all in flight wait in its own
// queue, reported in progress so that JetStream does not deliver them
// again, while other hosts' go ahead.
//
// It pulls with pull.Loop: when ctx ends it stops asking, and handles
// what the request under way brings until that request ends.
func (d *Dispatcher) Run(ctx context.Context) error {
	if d.cons == nil {
		if err := d.Subscribe(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	sched := newHosts[delivery](d.opts.PerHost, d.opts.Concurrency, d.opts.HostQueue)
	maxHeld := d.opts.Concurrency + d.opts.HostQueue
	freed := make(chan struct{}, 1)
	var wg sync.WaitGroup
	callCtx := context.WithoutCancel(ctx)
	var launch func(name string, dl delivery)
	launch = func(name string, dl delivery) {
		wg.Go(func() {
			d.handle(callCtx, dl)
			for _, next := range sched.done(name) {
				launch(next.host, next.v)
			}
			select {
			case freed <- struct{}{}:
			default:
			}
		})
	}
	defer func() {
		// What waits for a busy host goes back for any dispatcher.
		for _, dl := range sched.waiting(true) {
			_ = dl.msg.Nak()
		}
		wg.Wait()
	}()
	wg.Go(func() { d.keepWaiting(ctx, sched) })

	loop := pull.Loop{Consumer: d.cons, Max: d.opts.Concurrency, Freed: freed,
		Room:   func() int { return maxHeld - sched.held() },
		Logger: d.opts.Logger, What: "webhooks: pulling results"}
	return loop.Run(ctx, func(_ context.Context, msgs []jetstream.Msg) error {
		for _, m := range msgs {
			dl, ok := d.decode(m)
			if !ok {
				_ = m.Ack() // most jobs: nothing to call
				continue
			}
			name := hostOf(dl.rec.Webhook)
			start, queued := sched.add(name, dl)
			switch {
			case start:
				launch(name, dl)
			case !queued:
				d.deliveries.WithLabelValues("deferred").Inc()
				d.opts.Logger.Info("webhook deferred: its host has too many deliveries waiting", "job", dl.rec.ID, "host", name)
				_ = m.NakWithDelay(d.retryWait(m))
			}
		}
		return pull.Kept
	})
}

// keepWaiting reports the deliveries waiting for their host in progress,
// every 20s (a third of the consumer's ack wait), until ctx ends.
func (d *Dispatcher) keepWaiting(ctx context.Context, sched *hosts[delivery]) {
	t := time.NewTicker(20 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for _, dl := range sched.waiting(false) {
				_ = dl.msg.InProgress()
			}
		}
	}
}

// decode reads the record of an announcement that names a webhook.
func (d *Dispatcher) decode(m jetstream.Msg) (delivery, bool) {
	if m.Headers().Get(jobs.HeaderWebhook) == "" { // most jobs: no decoding
		return delivery{}, false
	}
	dl := delivery{msg: m}
	if err := json.Unmarshal(m.Data(), &dl.rec); err != nil || dl.rec.Webhook == "" {
		return delivery{}, false
	}
	return dl, true
}

// hostOf is the host a webhook URL calls, as host:port, lower case: the
// unit that shares calls. A URL that does not parse is its own unit.
func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return strings.ToLower(u.Hostname()) + ":" + port
}

// retryWait is how long a delivery waits before it is tried again,
// doubling with each delivery, up to 10 minutes.
func (d *Dispatcher) retryWait(m jetstream.Msg) time.Duration {
	attempt := 1
	if meta, err := m.Metadata(); err == nil {
		attempt = int(meta.NumDelivered)
	}
	return retry.Delay(d.opts.Backoff, 10*time.Minute, attempt)
}

func (d *Dispatcher) handle(ctx context.Context, dl delivery) {
	m, rec := dl.msg, dl.rec
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
	case errors.Is(err, ErrForbidden):
		// Waiting does not change the policy's answer.
		d.deliveries.WithLabelValues("refused").Inc()
		log.Warn("webhook not called: its target is not allowed", "err", err)
		_ = m.Term()
	case attempt >= d.opts.MaxAttempts:
		d.deliveries.WithLabelValues("abandoned").Inc()
		log.Warn("webhook abandoned after its last attempt", "err", err)
		_ = m.Term()
	default:
		d.deliveries.WithLabelValues("retried").Inc()
		wait := d.retryWait(m)
		log.Info("webhook failed; will retry", "err", err, "in", wait)
		_ = m.NakWithDelay(wait)
	}
}

func (d *Dispatcher) call(ctx context.Context, rec record.Record, body []byte) error {
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
	switch {
	case res.StatusCode/100 == 3:
		return fmt.Errorf("receiver answered %s; redirects are not followed, name the final URL", res.Status)
	case res.StatusCode/100 != 2:
		return fmt.Errorf("receiver answered %s", res.Status)
	}
	return nil
}
