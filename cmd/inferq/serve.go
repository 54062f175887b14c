package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"

	"github.com/inferq/inferq/console"
	"github.com/inferq/inferq/consumer"
	"github.com/inferq/inferq/internal/embednats"
	"github.com/inferq/inferq/internal/retry"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/lease"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/producer"
	"github.com/inferq/inferq/scaling"
	"github.com/inferq/inferq/storage"
	"github.com/inferq/inferq/tracing"
	"github.com/inferq/inferq/traffic"
	"github.com/inferq/inferq/webhook"
)

type mode int

const (
	modeServe mode = iota
	modeAPI
	modeWorker
)

func (m mode) String() string { return [...]string{"serve", "api", "worker"}[m] }

type serveFlags struct {
	models, data, storage string
	http                  string
	natsURL, natsListen   string
	natsSyncAlways        bool
	only                  string
	shadows               string
	maxShadowBytes        int64
	maxBody               int64
	maxImagePixels        int64
	maxWait               time.Duration
	modelPoll             time.Duration
	recordRetention       time.Duration
	duplicateWindow       time.Duration
	maxDeadLetters        int64
	uploadHeartbeat       time.Duration
	deadLetterRetention   time.Duration
	webhookSecret         string
	s3                    storage.S3Options
	resultLayout          string
	resultURLExpiry       time.Duration
	maxMessageBytes       int
	minReplicas           int
	streamReplicas        int
	maxQueued             int64
	maxQueuedBytes        int64
	apiTokens             string
	tokensFile            string
	tlsCert, tlsKey       string
	natsSec               natsSecurity
	maxReplicas           int
	targetBacklog         int64
	scaleInterval         time.Duration
	scaleDownWindow       time.Duration
	maxBatchBytes         int64
	maxBatchLines         int64
	batchSources          string
	webhookAttempts       int
	webhookAllow          string
	webhookPerHost        int
	idleTimeout           time.Duration
	bodyTimeout           time.Duration
	maxConns              int
	natsToken             string
	metricsAddr           string
	metricsToken          string
	pprofAddr             string
	otlpEndpoint          string
	statsInterval         time.Duration
	console               bool
	webhookBackoff        time.Duration
	drainTimeout          time.Duration
	ackWait               time.Duration
	runningAfter          time.Duration
	maxHandBacks          int
	maxResultBytes        int64
	device                string
	overrides             consumer.Overrides
	logLevel, logFormat   string
	memoryLimit           string
}

// serveCmd runs serve, api or worker. onListen, when set, is told the HTTP
// address once the API listens (tests use it with --http 127.0.0.1:0).
func serveCmd(ctx context.Context, args []string, stderr io.Writer, m mode, onListen func(addr string)) error {
	fs := flag.NewFlagSet("inferq "+m.String(), flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serveFlags
	fs.StringVar(&f.models, "models", "models", "model repository: DIR/{model}/{version}/model.onnx")
	fs.StringVar(&f.data, "data", "data", "data folder: JetStream's store (serve) and results")
	fs.StringVar(&f.storage, "storage", "", "folder for results and payloads (default DATA/objects); see --s3-* for S3 or MinIO")
	fs.StringVar(&f.s3.Endpoint, "s3-endpoint", "", "S3 API host:port (such as s3.amazonaws.com or minio:9000); set to store results in S3 instead of files")
	fs.StringVar(&f.s3.Bucket, "s3-bucket", "inferq", "S3 bucket")
	fs.StringVar(&f.s3.Region, "s3-region", "", "S3 region")
	fs.StringVar(&f.s3.AccessKey, "s3-access-key", "", "S3 access key; empty uses the environment's AWS credentials")
	fs.StringVar(&f.s3.SecretKey, "s3-secret-key", "", "S3 secret key")
	fs.BoolVar(&f.s3.Secure, "s3-secure", true, "use https for S3")
	fs.BoolVar(&f.s3.CreateBucket, "s3-create-bucket", true, "create the S3 bucket if it is missing")
	fs.StringVar(&f.batchSources, "batch-sources", "", "S3 buckets and prefixes that batches over stored objects (?source=) may read besides inputs/{model}/, comma-separated (s3://photos/2026/); read with the store's endpoint and credentials")
	fs.StringVar(&f.resultLayout, "result-layout", "batch", "batch: a batch's results in one object (fast); job: an object per job, keyed by job id, with presigned result_url on S3")
	fs.DurationVar(&f.resultURLExpiry, "result-url-expiry", time.Hour, "how long a presigned result_url stays valid (S3, job layout)")
	fs.IntVar(&f.maxMessageBytes, "max-message-bytes", 1<<20, "a job whose request is larger is stored in object storage and the queue carries a reference")
	fs.StringVar(&f.natsURL, "nats", "", "external NATS server URL; empty runs an embedded server (serve only)")
	f.natsSec.register(fs)
	fs.StringVar(&f.otlpEndpoint, "otlp-endpoint", os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "OTLP/HTTP collector for traces, such as http://otel-collector:4318 (default $OTEL_EXPORTER_OTLP_ENDPOINT); empty traces nothing")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.StringVar(&f.memoryLimit, "memory-limit", "auto", fmt.Sprintf("Go's soft memory limit, which makes the garbage collector return memory before a container's limit is met: auto ($GOMEMLIMIT, else %d%% of the container's memory limit, if it has one), off, or a size such as 800MiB", int(100*memoryShare(m))))
	fs.DurationVar(&f.drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long to finish work in hand")
	fs.Int64Var(&f.maxQueued, "max-queued", 1_000_000, "most jobs waiting per model (and priority); past it submissions get 429")
	fs.Int64Var(&f.maxShadowBytes, "max-shadow-bytes", 1<<30, "most bytes of shadow runs waiting (traffic splits' shadow versions), all models together, in a stream apart from the jobs; past it the oldest are dropped")
	fs.Int64Var(&f.maxQueuedBytes, "max-queued-bytes", 10<<30, "most bytes of waiting jobs, all models together; past it submissions get 429 (bodies over --max-message-bytes are in storage and count only their reference)")
	fs.IntVar(&f.streamReplicas, "stream-replicas", 1, "replicas of inferq's JetStream streams and buckets, on a NATS cluster (3 for production)")
	fs.DurationVar(&f.recordRetention, "record-retention", 7*24*time.Hour, "how long job records are kept after their last change; 0 for ever")
	fs.DurationVar(&f.uploadHeartbeat, "upload-heartbeat", 10*time.Second, "how often the record of a batch file being read says so; a batch unheard of for 6 times this was cut off by its reader's end, and is ended failed (every API process must agree)")
	fs.Int64Var(&f.maxDeadLetters, "max-dead-letters", 1000, "dead letters kept per model: past it a model's oldest go first, so that one model's failures never evict another's")
	fs.DurationVar(&f.duplicateWindow, "duplicate-window", 2*time.Minute, "how long JetStream recognises and drops a repeated job or announcement (every process of a deployment must agree; keep it above --ack-wait)")
	fs.DurationVar(&f.deadLetterRetention, "dead-letter-retention", 14*24*time.Hour, "how long a failed job is kept in its model's dead letters for replay")
	fs.DurationVar(&f.modelPoll, "model-poll", 10*time.Second, "how often to rescan --models for new, changed and removed models and versions; 0 never")
	if m != modeWorker {
		fs.StringVar(&f.http, "http", ":8080", "HTTP listen address")
		fs.Int64Var(&f.maxBody, "max-body", 64<<20, "largest request body accepted, in bytes (and largest line of a batch file)")
		fs.Int64Var(&f.maxImagePixels, "max-image-pixels", pipeline.MaxImagePixels, "largest picture a job's body may be, in pixels, as its header declares (read before decoding: a decompression bomb is refused); -1 no bound")
		fs.Int64Var(&f.maxBatchBytes, "max-batch-bytes", 16<<30, "largest batch file accepted, in bytes; it is read as it arrives, not held in memory")
		fs.Int64Var(&f.maxBatchLines, "max-batch-lines", 10_000_000, "most lines of a batch over stored objects (?source=); a source holding more is refused with the count")
		fs.StringVar(&f.apiTokens, "api-tokens", "", "comma-separated API tokens; when set, every path but health and metrics needs Authorization: Bearer <token> (prefer INFERQ_API_TOKENS)")
		fs.StringVar(&f.tokensFile, "tokens-file", "", "file of API tokens, one per line, each optionally followed by the models it may use; reloaded when it changes")
		fs.StringVar(&f.tlsCert, "tls-cert", "", "serve HTTPS with this certificate (PEM; reloaded when it changes)")
		fs.StringVar(&f.tlsKey, "tls-key", "", "key of --tls-cert (PEM)")
		fs.StringVar(&f.webhookSecret, "webhook-secret", "", "secret that signs webhook calls (HMAC-SHA256 in the Inferq-Signature header); empty sends them unsigned")
		fs.IntVar(&f.webhookAttempts, "webhook-attempts", 10, "calls made to a job's webhook before giving up")
		fs.DurationVar(&f.webhookBackoff, "webhook-backoff", 2*time.Second, "wait after a failed webhook call; doubles each time, up to 10m")
		fs.StringVar(&f.webhookAllow, "webhook-allow", "", "comma-separated networks (CIDR) or addresses webhooks may reach although not public; by default loopback, private, link-local and reserved addresses are refused")
		fs.IntVar(&f.webhookPerHost, "webhook-per-host", 4, "most webhook calls in flight to one receiving host; its other deliveries wait their turn")
		fs.DurationVar(&f.idleTimeout, "http-idle-timeout", 30*time.Second, "how long an idle keep-alive connection stays open")
		fs.DurationVar(&f.bodyTimeout, "body-timeout", 30*time.Second, "longest wait for the next bytes of a request body before the request fails")
		fs.IntVar(&f.maxConns, "max-conns", 10000, "most HTTP connections open at once; further ones wait to be accepted")
		fs.BoolVar(&f.console, "console", true, "serve the operator console at / (its pages need no token; what they show does)")
		fs.DurationVar(&f.maxWait, "max-wait", 60*time.Second, "longest a job poll (?wait=) or a synchronous /v2 infer call waits for a job")
	}
	fs.StringVar(&f.pprofAddr, "pprof", "", "where to serve Go's profiles (/debug/pprof/) for finding where CPU and memory go, such as 127.0.0.1:6060; empty for nowhere. Unauthenticated: bind it to loopback")
	if m == modeServe {
		fs.StringVar(&f.natsListen, "nats-listen", "", "where the embedded NATS server listens for native clients, such as 127.0.0.1:4222; empty for nowhere. Clients need the token (--nats-token, or the one generated into DATA/nats-token)")
		fs.StringVar(&f.natsToken, "nats-token", "", "token native clients of the embedded NATS server must give (prefer INFERQ_NATS_TOKEN); empty generates one into DATA/nats-token")
		fs.BoolVar(&f.natsSyncAlways, "nats-sync-always", false, "fsync every JetStream write, so accepted jobs survive a machine crash too")
	}
	fs.StringVar(&f.metricsToken, "metrics-token", "", "token /metrics asks for, as Authorization: Bearer <token>; the metrics show every model's traffic and prediction distribution (prefer INFERQ_METRICS_TOKEN)")
	if m == modeWorker {
		fs.StringVar(&f.metricsAddr, "metrics", "", "where a worker serves /metrics and /v2/health/live for Prometheus, such as :9090; empty for nowhere")
	}
	if m != modeAPI {
		fs.DurationVar(&f.ackWait, "ack-wait", 60*time.Second, "how long a job delivered to a worker that died waits before it is delivered again")
		fs.DurationVar(&f.runningAfter, "running-after", 100*time.Millisecond, "how long a batch runs before its jobs' records say running: a job done sooner goes from queued to its final state with one JetStream write fewer; 0 marks each batch running before it runs")
		fs.DurationVar(&f.statsInterval, "stats-interval", time.Minute, "how often workers publish the statistics of what models are asked and answer, and write captured jobs")
		fs.StringVar(&f.device, "device", "", "where this process runs every model: cpu, cuda, cuda:N, tensorrt or tensorrt:N; empty runs each where its config.yaml says")
		fs.IntVar(&f.overrides.MaxBatchSize, "max-batch-size", 0, "this process's max batch size for every model, over their configs (a GPU worker wants larger batches than a CPU one on the same queue); 0 keeps each model's")
		fs.DurationVar(&f.overrides.MaxQueueDelay, "max-queue-delay", 0, "this process's max queue delay for every model, over their configs; 0 keeps each model's")
		fs.IntVar(&f.overrides.Instances, "instances", 0, "this process's instances (sessions in parallel) of every model, over their configs; 0 keeps each model's")
		fs.Int64Var(&f.maxResultBytes, "max-result-bytes", 256<<20, "largest result one job may store, in bytes; a job whose result is larger fails with the reason (0: no bound)")
		fs.IntVar(&f.maxHandBacks, "max-hand-backs", 100, "deliveries after which a job whose inputs or result storage cannot read or write fails, instead of returning to the queue again (each waits longer, up to 30s)")
		fs.StringVar(&f.only, "only", "", "comma-separated models to run workers for (default all)")
		fs.StringVar(&f.shadows, "shadows", "with", "the workers of the models' shadow versions (traffic splits): with (run them here too), without (not here), or only (here, and no other worker): put shadows on machines of their own")
		fs.IntVar(&f.minReplicas, "min-replicas", 1, "fewest worker replicas per model in this process; 0 lets an idle model scale to zero")
		fs.IntVar(&f.maxReplicas, "max-replicas", 0, "most worker replicas per model in this process; 0 means --min-replicas (no autoscaling)")
		fs.Int64Var(&f.targetBacklog, "target-backlog", 64, "jobs (waiting and in flight) one replica should carry; more adds replicas")
		fs.DurationVar(&f.scaleInterval, "scale-interval", 2*time.Second, "how often the autoscaler reads the queue")
		fs.DurationVar(&f.scaleDownWindow, "scale-down-window", 30*time.Second, "scale down only to the highest replica count asked for within this")
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	if m != modeServe && f.natsURL == "" {
		return errors.New("--nats (or INFERQ_NATS) is required: the API and workers share an external NATS server")
	}
	return serve(ctx, m, f, log, onListen)
}

func serve(ctx context.Context, m mode, f serveFlags, log *slog.Logger, onListen func(string)) error {
	// What can be checked before starting anything is.
	tokens, tokensRaw, err := loadTokens(f.apiTokens, f.tokensFile)
	if err != nil {
		return err
	}
	tlsConf, err := tlsConfig(f.tlsCert, f.tlsKey)
	if err != nil {
		return err
	}
	natsSec, err := f.natsSec.options()
	if err != nil {
		return err
	}
	var device onnx.Provider
	if f.device != "" {
		if device, err = onnx.ParseDevice(f.device); err != nil {
			return fmt.Errorf("--device: %w", err)
		}
	}
	if f.overrides.MaxBatchSize < 0 || f.overrides.MaxQueueDelay < 0 || f.overrides.Instances < 0 {
		return errors.New("--max-batch-size, --max-queue-delay and --instances must not be negative")
	}
	allow, err := webhook.ParseAllow(f.webhookAllow)
	if err != nil {
		return fmt.Errorf("--webhook-allow: %w", err)
	}
	hookPolicy := webhook.Policy{Allow: allow}
	restoreMemoryLimit, err := setMemoryLimit(f.memoryLimit, memoryShare(m), memlimit.FromCgroup, log)
	if err != nil {
		return err
	}
	defer restoreMemoryLimit()
	lib, err := findORT()
	if err != nil {
		return err
	}
	rt, err := onnx.Open(lib)
	if err != nil {
		return err
	}
	defer rt.Close()
	log.Info("ONNX Runtime loaded", "version", rt.Version(), "library", lib)

	tp, stopTracing, err := tracing.New(ctx, tracing.Options{Endpoint: f.otlpEndpoint, Service: "inferq-" + m.String()})
	if err != nil {
		return fmt.Errorf("--otlp-endpoint: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			log.Warn("flushing traces", "err", err)
		}
	}()
	tracer := tracing.Tracer(tp)
	if f.otlpEndpoint != "" {
		log.Info("tracing to OTLP", "endpoint", f.otlpEndpoint)
	}

	catalog, err := model.NewCatalog(f.models, rt)
	if err != nil {
		return fmt.Errorf("%w (pass --models DIR, laid out as DIR/{model}/{version}/model.onnx)", err)
	}
	logRepository(log, catalog.Repository(), nil)

	// NATS: embedded for serve unless --nats points elsewhere.
	var nc *nats.Conn
	var embedded *embednats.Server
	natsOpts := []nats.Option{nats.Name("inferq-" + m.String()), nats.MaxReconnects(-1), nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "url", c.ConnectedUrlRedacted()) }),
	}
	if f.natsURL == "" {
		host, port, err := listenAddr(f.natsListen)
		if err != nil {
			return err
		}
		var token, tokenFile string
		if f.natsListen != "" {
			if token, tokenFile, err = natsToken(f.data, f.natsToken); err != nil {
				return err
			}
		}
		embedded, err = embednats.Start(embednats.Options{
			StoreDir: filepath.Join(f.data, "nats"), Host: host, Port: port, Token: token, SyncAlways: f.natsSyncAlways, Logger: log,
		})
		if err != nil {
			return err
		}
		defer embedded.Shutdown()
		if u := embedded.ClientURL(); u != "" {
			log.Info("embedded NATS with JetStream", "url", u, "store", filepath.Join(f.data, "nats"), "token_file", tokenFile)
		}
		nc, err = embedded.Connect(natsOpts...)
	} else {
		nc, err = nats.Connect(f.natsURL, append(natsOpts, natsSec...)...)
	}
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	// Workers publish each batch's records and announcements at once and
	// handle each one's outcome; room for a few large sets in flight.
	// Their acknowledgements can be lost with a node (see jobs.AckTimeout):
	// the timeout also lets go of the client's bookkeeping of each.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1<<14), jetstream.WithPublishAsyncTimeout(jobs.AckTimeout))
	if err != nil {
		return fmt.Errorf("JetStream: %w", err)
	}
	qopts := jobs.Options{RecordRetention: f.recordRetention, DuplicateWindow: f.duplicateWindow, MaxDeadLetters: f.maxDeadLetters, DeadLetterRetention: f.deadLetterRetention, Replicas: f.streamReplicas, MaxQueued: f.maxQueued, MaxQueuedBytes: f.maxQueuedBytes, MaxShadowBytes: f.maxShadowBytes}
	q, err := jobs.Setup(ctx, js, qopts)
	// A NATS cluster still forming (its nodes starting together, as a
	// StatefulSet's do) places no replicated stream yet: wait for it.
	wait, until := retry.New(time.Second, 10*time.Second), time.Now().Add(2*time.Minute)
	for ; err != nil && clusterForming(err) && time.Now().Before(until); q, err = jobs.Setup(ctx, js, qopts) {
		d := wait.Next()
		log.Warn("cannot set the queue up yet; retrying", "in", d, "err", err)
		if !retry.Sleep(ctx, d) {
			return ctx.Err()
		}
	}
	if err != nil {
		return err
	}

	store, presign, err := openStore(ctx, &f, log)
	if err != nil {
		return err
	}
	sources, err := openSources(store, f.batchSources)
	if err != nil {
		return err
	}
	q.StorePayloads(store, f.maxMessageBytes)
	if m != modeWorker {
		expireInStore(ctx, store, catalog.Repository(), log)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(jobs.NewDepthCollector(q, catalog.Names))

	// Shutdown runs in this order, once ctx ends or a part fails: the HTTP
	// server stops accepting and finishes the requests under way (a
	// synchronous infer among them waits for its job, which this
	// process's workers still run); then the workers drain (batches
	// running finish, jobs not started go back to the queue); then the
	// loops of the results stream, the autoscaler and the rest end with
	// gctx; last, the NATS connection drains.
	g, gctx := errgroup.WithContext(ctx)
	apiStopped := make(chan struct{}) // closed once the HTTP server has shut down, or at once without one
	var stopOnce sync.Once
	stopAPI := func() { stopOnce.Do(func() { close(apiStopped) }) }
	defer stopAPI() // a return before the server started
	var fleet *consumer.Fleet
	if m != modeAPI {
		metrics, err := consumer.NewMetrics(reg)
		if err != nil {
			return err
		}
		splits := &shadowTable{without: f.shadows == "without"}
		switch f.shadows {
		case "with", "without", "only":
		default:
			return fmt.Errorf("--shadows %q: with, without or only", f.shadows)
		}
		fleet = consumer.NewFleet(consumer.Options{
			Runtime: rt, Catalog: catalog, Queue: q, Results: store, Metrics: metrics, Sources: sources, ResultLayout: f.resultLayout, Name: processName(),
			Logger: log, DrainTimeout: f.drainTimeout, AckWait: f.ackWait, MaxHandBacks: f.maxHandBacks, MaxResultBytes: f.maxResultBytes, RunningAfter: f.runningAfter,
			Device: device, Overrides: f.overrides, Tracer: tracer, StatsInterval: f.statsInterval,
		}, consumer.FleetOptions{Only: splitList(f.only), Initial: &f.minReplicas, ShadowsOf: splits.Shadows, ShadowsOnly: f.shadows == "only"})
		if err := fleet.Apply(catalog.Repository()); err != nil {
			fleet.Stop()
			return err
		}
		// The shadow versions follow the traffic splits set at run time.
		g.Go(func() error {
			if q.Traffic == nil {
				return nil
			}
			return q.Traffic.Follow(gctx, log, func(model string, st *traffic.Stored) {
				splits.Set(model, st)
				if err := fleet.Reshadow(); err != nil {
					log.Warn("starting shadow versions' workers", "err", err)
				}
			})
		})
		g.Go(func() error { return fleet.Report(gctx, q, processName(), 10*time.Second) })
		g.Go(func() error {
			select {
			case <-gctx.Done():
				<-apiStopped
				fleet.Stop()
				return nil
			case err := <-fleet.Failed():
				fleet.Stop()
				return err
			}
		})
	}
	if fleet != nil && f.maxReplicas > f.minReplicas {
		as, err := scaling.NewAutoscaler(scaling.AutoscalerOptions{
			Queue: q, Pool: fleet, Interval: f.scaleInterval, Registerer: reg, Logger: log,
			Policy: scaling.Policy{Min: f.minReplicas, Max: f.maxReplicas, TargetBacklog: f.targetBacklog, DownWindow: f.scaleDownWindow},
		})
		if err != nil {
			return err
		}
		log.Info("autoscaling workers", "min", f.minReplicas, "max", f.maxReplicas, "target_backlog", f.targetBacklog)
		g.Go(func() error { return as.Run(gctx) })
	}
	if f.modelPoll > 0 {
		g.Go(func() error {
			watchModels(gctx, log, catalog, fleet, f.modelPoll)
			return nil
		})
	}
	if m != modeWorker {
		watcher := q.Records.Watch(log)
		defer watcher.Close()
		var live producer.Live
		var pages http.Handler
		if f.console {
			sampler := console.NewSampler(console.Options{Queue: q, Models: catalog.Names, Gatherer: reg, Logger: log})
			g.Go(func() error { return sampler.Run(gctx) })
			live, pages = sampler, console.Handler()
		}
		leaser, err := lease.New(lease.Options{Queue: q, Catalog: catalog, Results: store, Name: processName() + " (user code)"})
		if err != nil {
			return err
		}
		api, err := producer.New(producer.Options{
			Leases:  leaser,
			Catalog: catalog, Queue: q, Records: q.Records, Results: store, Watcher: watcher, Stream: q, DeadLetters: q,
			Batches: q.Batches, Objects: store, MaxBatchBytes: f.maxBatchBytes, Sources: sources, Feeds: q.Batches, MaxBatchLines: f.maxBatchLines, Traffic: q.Traffic, UploadHeartbeat: f.uploadHeartbeat, Presign: presign,
			Connected: nc.IsConnected, Version: version(), Workers: q, Monitoring: q, Live: live, Console: pages,
			Ready: func(ctx context.Context) error {
				if !nc.IsConnected() {
					return errors.New("NATS is not connected")
				}
				if err := q.Check(ctx); err != nil {
					return err
				}
				return store.Check(ctx)
			},
			MaxBodyBytes: f.maxBody, MaxImagePixels: f.maxImagePixels, MaxWait: f.maxWait, RecordRetention: f.recordRetention, Tokens: tokens,
			CheckWebhook: hookPolicy.CheckURL, BodyTimeout: f.bodyTimeout, Tracer: tracer,
			Registerer: reg, Gatherer: reg, MetricsToken: f.metricsToken, Logger: log,
		})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", f.http)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", f.http, err)
		}
		hooks, err := webhook.New(webhook.Options{
			Source: q, Secret: []byte(f.webhookSecret), MaxAttempts: f.webhookAttempts, Backoff: f.webhookBackoff,
			Policy: hookPolicy, PerHost: f.webhookPerHost,
			Registerer: reg, Logger: log,
		})
		if err != nil {
			return err
		}
		// Both consumers deliver only what comes after they were created:
		// they must exist before the first job or batch file is taken.
		if err := hooks.Subscribe(ctx); err != nil {
			return err
		}
		tracking, err := q.BatchConsumer(ctx)
		if err != nil {
			return err
		}
		g.Go(func() error { return hooks.Run(gctx) })
		g.Go(func() error { return q.TrackBatches(gctx, tracking, log) })
		g.Go(func() error { return api.RunFeeds(gctx) })
		g.Go(func() error { return api.RunTraffic(gctx) })
		g.Go(func() error {
			// Batches whose upload an API process was reading when it
			// stopped (crashed, killed) are ended, by whichever API
			// process looks first.
			every(gctx, 3*f.uploadHeartbeat, func() {
				if n, err := q.FailCutUploads(gctx, time.Now().UTC(), 6*f.uploadHeartbeat); err != nil {
					log.Warn("looking for batch uploads cut off", "err", err)
				} else if n > 0 {
					log.Warn("ended batches whose upload was cut off by the end of the API process reading them", "batches", n)
				}
			})
			return nil
		})
		if f.tokensFile != "" {
			g.Go(func() error {
				watchTokens(gctx, log, api, f.apiTokens, f.tokensFile, tokensRaw, 5*time.Second)
				return nil
			})
		}
		srv := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: f.idleTimeout}
		if f.maxConns > 0 {
			ln = netutil.LimitListener(ln, f.maxConns)
		}
		srv.RegisterOnShutdown(api.Shutdown)
		scheme := "http"
		if tlsConf != nil {
			ln, scheme = tls.NewListener(ln, tlsConf), "https"
		}
		log.Info("HTTP API listening", "addr", ln.Addr().String(), "scheme", scheme, "tokens", len(tokens))
		if onListen != nil {
			onListen(ln.Addr().String())
		}
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("HTTP server: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			defer stopAPI()
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), f.drainTimeout)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	} else {
		stopAPI()
	}
	if f.metricsAddr != "" {
		if err := serveMetrics(gctx, g, f.metricsAddr, f.metricsToken, reg, log); err != nil {
			return err
		}
	}
	if f.pprofAddr != "" {
		if err := serveProfiles(gctx, g, f.pprofAddr, log); err != nil {
			return err
		}
	}
	err = g.Wait()
	log.Info("shutting down")
	if derr := nc.Drain(); derr != nil && !errors.Is(derr, nats.ErrConnectionClosed) {
		log.Warn("draining NATS connection", "err", derr)
	}
	return err
}

// clusterForming reports an error JetStream gives while its cluster
// elects leaders or learns its peers, which passes by itself.
func clusterForming(err error) bool {
	msg := err.Error()
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		strings.Contains(msg, "no suitable peers") || strings.Contains(msg, "temporarily unavailable") || strings.Contains(msg, "no response from stream")
}

// serveProfiles serves Go's runtime profiles on addr, in g, until ctx
// ends: `go tool pprof http://ADDR/debug/pprof/profile` shows where a
// server under load spends its CPU.
func serveProfiles(ctx context.Context, g *errgroup.Group, addr string, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return serveDebug(ctx, g, "--pprof", addr, mux, log)
}

// serveDebug serves mux on addr, in g, until ctx ends.
func serveDebug(ctx context.Context, g *errgroup.Group, flag, addr string, mux *http.ServeMux, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s %s: %w", flag, addr, err)
	}
	// No write timeout: a CPU profile takes as long as it is asked to.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	log.Info(strings.TrimPrefix(flag, "--")+" listening", "addr", ln.Addr().String())
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("%s server: %w", flag, err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		return srv.Close()
	})
	return nil
}

// serveMetrics serves a worker's /metrics and liveness on addr, in g,
// until ctx ends: a worker process has no API, and its metrics (jobs
// finished, batch sizes, inference time, replicas) are the ones alerts
// and dashboards need.
func serveMetrics(ctx context.Context, g *errgroup.Group, addr, token string, reg *prometheus.Registry, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", producer.MetricsHandler(reg, token))
	mux.HandleFunc("GET /v2/health/live", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"live":true}` + "\n"))
	})
	return serveDebug(ctx, g, "--metrics", addr, mux, log)
}

// watchModels rescans the model repository every interval. Changed
// models get new workers (loaded before the old ones drain), and only then
// does the API see the change, so that a new version is never offered
// before a worker can run it.
func watchModels(ctx context.Context, log *slog.Logger, catalog *model.Catalog, fleet *consumer.Fleet, interval time.Duration) {
	every(ctx, interval, func() {
		repo, changed, err := catalog.Scan()
		if err != nil {
			log.Warn("rescanning models", "err", err)
			return
		}
		if len(changed) == 0 {
			return
		}
		log.Info("model repository changed", "models", changed)
		logRepository(log, repo, changed)
		if fleet != nil {
			if err := fleet.Apply(repo); err != nil {
				log.Error("applying model changes", "err", err)
			}
		}
		catalog.Publish(repo)
	})
}

// every calls fn each interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// logRepository logs the models of repo (only those named, when only is
// not nil) with their effective settings, and what was refused.
func logRepository(log *slog.Logger, repo *model.Repository, only []string) {
	for _, p := range repo.Problems {
		log.Warn("model repository", "problem", p)
	}
	fams := repo.Families()
	if len(fams) == 0 {
		log.Warn("no models found", "dir", repo.Dir)
	}
	for _, fam := range fams {
		if only != nil && !slices.Contains(only, fam.Name) {
			continue
		}
		for _, m := range fam.Versions {
			c := m.Config
			log.Info("model loaded", "model", m.Name, "version", m.Version, "batchable", m.Batchable, "batching", m.Batching,
				"max_batch_size", c.MaxBatchSize, "max_queue_delay", c.MaxQueueDelay, "preferred_batch_sizes", c.PreferredBatchSizes,
				"instances", c.Instances, "intra_op_threads", c.IntraOpThreads, "max_attempts", c.MaxAttempts)
			if m.Unchecked != "" {
				log.Warn("model batched on its signature's word: made-up rows could not be run to check that its rows stay independent when stacked; if they do not, set max_batch_size: 1 in its config.yaml", "model", m.Name, "version", m.Version, "err", m.Unchecked)
			}
		}
		for v, err := range fam.Refused {
			log.Warn("model version refused", "model", fam.Name, "version", v, "reason", err)
		}
	}
}

// listenAddr splits host:port for the embedded server; port 0 picks a free
// one, and an empty address listens nowhere.
func listenAddr(addr string) (string, int, error) {
	if addr == "" {
		return "", 0, nil
	}
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("--nats-listen %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("--nats-listen %q: bad port", addr)
	}
	if port == 0 {
		port = -1
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// natsToken is the token native clients of the embedded NATS server
// must give: the one given, or else one generated and written to
// DATA/nats-token (readable by its owner alone) for the operator and
// local tools to read. The token itself is never logged.
func natsToken(data, given string) (token, file string, err error) {
	if given != "" {
		return given, "", nil
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("generate a NATS token: %w", err)
	}
	token = hex.EncodeToString(b)
	file = filepath.Join(data, "nats-token")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return "", "", fmt.Errorf("write the NATS token: %w", err)
	}
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write the NATS token: %w", err)
	}
	return token, file, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// shadowTable is what a worker process knows of the traffic splits set
// at run time, for the shadow versions it runs.
type shadowTable struct {
	traffic.Table
	// without: this process runs no shadow (--shadows without).
	without bool
}

// Shadows are fam's shadow versions in force, for this process to run.
func (t *shadowTable) Shadows(fam *model.Family) []int64 {
	if t.without {
		return nil
	}
	split, _, _ := t.InForce(fam.Name, fam.Config.Split())
	return split.Shadows(func(int64) bool { return true }, 0)
}

// processName identifies this process in job records: host:pid.
func processName() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}
