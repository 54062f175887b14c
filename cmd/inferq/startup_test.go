package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
)

// TestStartTogether: two APIs, two workers and a scaler started at the
// same moment against a fresh NATS and a fresh MinIO bucket, as Kubernetes
// starts them, all come up (they race to create the streams, buckets,
// consumers and the storage bucket: whoever loses takes what the winner
// made), and a job then runs. Five rounds, each on fresh servers.
func TestStartTogether(t *testing.T) {
	if testing.Short() {
		t.Skip("starts five processes' worth of inferq, five times; skipped with -short")
	}
	t.Setenv("ONNXRUNTIME_LIB", testenv.ORTLibrary(t))
	m := testenv.StartMinIO(t)
	repo := testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)})
	for round := range 5 {
		t.Run(fmt.Sprint("round ", round), func(t *testing.T) {
			ns := testenv.JetStream(t)
			common := append([]string{"--nats", ns.ClientURL(), "--models", repo, "--log-level", "warn"}, s3Flags(m, fmt.Sprintf("fresh-%d", round))...)
			ctx, cancel := context.WithCancel(context.Background())
			var running sync.WaitGroup
			t.Cleanup(func() { cancel(); running.Wait() })
			errs := make(chan error, 5)
			addrs := make(chan string, 2)
			start := make(chan struct{})
			run := func(name string, f func() error) {
				running.Go(func() {
					<-start
					if err := f(); err != nil && ctx.Err() == nil {
						errs <- fmt.Errorf("%s: %w", name, err)
					}
				})
			}
			for i := range 2 {
				run(fmt.Sprint("api ", i), func() error {
					return serveCmd(ctx, append([]string{"--http", "127.0.0.1:0"}, common...), testWriter{t}, modeAPI, func(a string) { addrs <- a })
				})
				run(fmt.Sprint("worker ", i), func() error {
					return serveCmd(ctx, common, testWriter{t}, modeWorker, nil)
				})
			}
			run("scaler", func() error {
				return scalerCmd(ctx, []string{"--nats", ns.ClientURL(), "--http", "127.0.0.1:0", "--models", "iris"}, testWriter{t}, nil)
			})
			close(start)
			var apis []*server
			for len(apis) < 2 {
				select {
				case a := <-addrs:
					apis = append(apis, &server{url: "http://" + a})
				case err := <-errs:
					t.Fatal(err)
				case <-time.After(60 * time.Second):
					t.Fatal("the APIs did not start within 60s")
				}
			}
			for _, s := range apis {
				id := s.submit(t, "/v1/models/iris/jobs", []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`))
				if rec := s.await(t, id, 30*time.Second); rec.Status != record.Succeeded {
					t.Fatalf("job %+v", rec)
				}
			}
			select {
			case err := <-errs:
				t.Fatal(err)
			default:
			}
		})
	}
}
