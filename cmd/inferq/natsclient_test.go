package main

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/natsclient"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// A service on NATS submits jobs and follows results with no HTTP: valid
// jobs succeed with ONNX Runtime's outputs, an invalid one ends failed
// with the reason, and a plain core NATS subscriber on the documented
// subject sees every result too.
func TestNATSClient(t *testing.T) {
	_, nc := startServeNATS(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)}))
	var plain atomic.Int64
	sub, err := nc.Subscribe("inferq.results.iris", func(*nats.Msg) { plain.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := natsclient.New(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	// The position is taken before submitting: the invalid job fails at
	// once, and a follower that started from "now" could begin after it.
	pos, err := c.Position(ctx)
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan natsclient.Result, 16)
	followed := make(chan error, 1)
	go func() {
		followed <- c.Follow(ctx, "iris", pos, true, func(r natsclient.Result) error { results <- r; return nil })
	}()
	d := openDirect(t, irisPath(t))
	want := map[string][]tensor.Tensor{}
	for i := range 5 {
		in := []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 4}, Data: f32(5+float32(i)/4, 3, 1+float32(i), 0.5)}}
		rec, err := c.Submit(ctx, "iris", &tensor.Request{Inputs: in}, natsclient.Options{})
		if err != nil {
			t.Fatal(err)
		}
		want[rec.ID] = d.run(t, in)
	}
	bad, err := c.Submit(ctx, "iris", &tensor.Request{Inputs: []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 3}, Data: f32(1, 2, 3)}}}, natsclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for range 6 {
		select {
		case r := <-results:
			if r.ID == bad.ID {
				if r.Status != record.Failed || !strings.Contains(r.Error, "dimension 1 must be 4") {
					t.Errorf("invalid job: %+v", r.Record)
				}
				continue
			}
			resp, err := r.Response()
			if err != nil || r.Status != record.Succeeded {
				t.Fatalf("job %s: %+v %v", r.ID, r.Record, err)
			}
			assertClose(t, r.ID, resp.Outputs, want[r.ID])
			delete(want, r.ID)
		case err := <-followed:
			t.Fatalf("follow ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("results missing: %v", want)
		}
	}
	if len(want) > 0 {
		t.Fatalf("no results for %v", want)
	}
	if rec, err := c.Job(ctx, bad.ID); err != nil || rec.Status != record.Failed {
		t.Fatalf("record of the invalid job: %+v %v", rec, err)
	}
	nc.Flush()
	if n := plain.Load(); n != 6 {
		t.Errorf("the plain subscriber saw %d results, want 6", n)
	}
}

// A native producer opens the queue as the API and workers set it up and
// changes none of its settings: it used to set the streams and buckets up
// again with defaults, putting replicas, retention and limits back.
func TestNATSClientKeepsQueueSettings(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	empty, err := jetstream.New(testenv.Connect(t, testenv.JetStream(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := natsclient.New(ctx, empty); err == nil || !strings.Contains(err.Error(), "start the API or a worker first") {
		t.Errorf("on a NATS server inferq never ran on: %v, want the way out", err)
	}

	_, nc := startServeNATS(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)}),
		"--record-retention", "90m", "--max-queued", "7", "--dead-letter-retention", "50h")
	js, _ := jetstream.New(nc)
	settings := func() string {
		var out []string
		for _, name := range []string{jobs.RequestStream, jobs.ResultStream, jobs.DeadLetterStream, "KV_" + jobs.RecordBucket, "KV_" + jobs.KeyBucket} {
			s, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			c := s.CachedInfo().Config
			out = append(out, fmt.Sprintf("%s: replicas %d, max age %v, max msgs/subject %d, max bytes %d, discard %v", name, c.Replicas, c.MaxAge, c.MaxMsgsPerSubject, c.MaxBytes, c.Discard))
		}
		return strings.Join(out, "\n")
	}
	before := settings()
	if !strings.Contains(before, "max age 1h30m0s") {
		t.Fatalf("the queue does not have the settings serve was given:\n%s", before)
	}
	c, err := natsclient.New(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(ctx, "iris", &tensor.Request{Inputs: []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 4}, Data: f32(5, 3, 1, 0.5)}}}, natsclient.Options{}); err != nil {
		t.Fatal(err)
	}
	if after := settings(); after != before {
		t.Errorf("settings changed by a native producer:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
