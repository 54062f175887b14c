package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/scaling"
)

// scalerCmd: inferq scaler --nats URL. Decides worker replicas per model
// from the queue and publishes them for KEDA (JSON) and Prometheus.
func scalerCmd(ctx context.Context, args []string, stderr io.Writer, onListen func(string)) error {
	fs := flag.NewFlagSet("inferq scaler", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats", "", "NATS server URL (required)")
	var natsSec natsSecurity
	natsSec.register(fs)
	addr := fs.String("http", ":8081", "HTTP listen address: /v1/scaling, /v1/scaling/{model}, /metrics")
	models := fs.String("models", "", "comma-separated models to decide for; default every model whose workers have run")
	interval := fs.Duration("interval", 5*time.Second, "how often to read the queue")
	var p scaling.Policy
	fs.IntVar(&p.Min, "min-replicas", 0, "fewest replicas per model; 0 lets an idle model scale to zero")
	fs.IntVar(&p.Max, "max-replicas", 10, "most replicas per model")
	fs.Int64Var(&p.TargetBacklog, "target-backlog", 64, "jobs (waiting and in flight) one replica should carry")
	fs.Int64Var(&p.Activation, "activation", 1, "backlog that wakes a model at zero replicas")
	fs.DurationVar(&p.DownWindow, "scale-down-window", 5*time.Minute, "scale down only to the highest count asked for within this")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *natsURL == "" {
		return errors.New("--nats is required: the scaler reads the queue of an external NATS")
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	secure, err := natsSec.options()
	if err != nil {
		return err
	}
	nc, err := nats.Connect(*natsURL, append(secure, nats.Name("inferq-scaler"), nats.MaxReconnects(-1))...)
	if err != nil {
		return fmt.Errorf("connect to NATS: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	// The scaler reads the queue as the API and workers set it up; it
	// waits for them rather than set it up with settings of its own.
	q, err := jobs.Open(ctx, js)
	for err != nil {
		log.Warn("waiting for the queue to be set up", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(2 * time.Second):
		}
		q, err = jobs.Open(ctx, js)
	}
	list := q.Models
	if only := splitList(*models); len(only) > 0 {
		list = func(context.Context) ([]string, error) { return only, nil }
	}
	reg := prometheus.NewRegistry()
	metrics, err := scaling.NewMetrics(reg)
	if err != nil {
		return err
	}
	s, err := scaling.NewScaler(scaling.ScalerOptions{Queue: q, Models: list, Policy: p, Interval: *interval, Metrics: metrics, Logger: log})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/scaling", s.Handler())
	mux.Handle("/v1/scaling/", s.Handler())
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v2/health/live", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"live":true}`)) })
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Info("scaler listening", "addr", ln.Addr().String(), "min", p.Min, "max", p.Max, "target_backlog", p.TargetBacklog)
	if onListen != nil {
		onListen(ln.Addr().String())
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	go s.Run(ctx)
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
