package jobs

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// TestShadowRunsPacked: the shadow runs of jobs that succeeded together
// reach each shadow version's queue as few messages, each run read back
// from its pack with its own request, answer and answering version; a
// pack never grows past the queue's largest message, and one that lies
// about its runs is refused with the reason.
func TestShadowRunsPacked(t *testing.T) {
	q, js := setup(t)
	ctx := context.Background()
	q.StorePayloads(nil, 64<<10) // packs of at most 64 KiB
	request := func(i, size int) *tensor.Request {
		data := make([]byte, size)
		data[0] = byte(i)
		return &tensor.Request{Inputs: []tensor.Tensor{{Name: "x", Datatype: tensor.Uint8, Shape: []int64{int64(size)}, Data: data}}}
	}
	var runs []ShadowRun
	for i := range 50 { // 50 runs of 4 KiB: 200 KiB, four packs at least
		shadows := []int64{2, 4}
		if i%10 == 9 {
			shadows = []int64{4} // not every job names every shadow
		}
		runs = append(runs, ShadowRun{
			Job:       &Job{ID: fmt.Sprintf("job-%02d", i), Model: "m", Version: 1, Routed: true, Shadows: shadows, Priority: record.Normal, Request: request(i, 4096)},
			Answering: "1",
			Answer:    []byte(fmt.Sprintf(`{"model_name":"m","outputs":[{"name":"y","datatype":"INT64","shape":[1],"data":[%d]}]}`, i)),
		})
	}
	runs = append(runs, ShadowRun{Job: &Job{ID: "no-shadows", Model: "m", Request: request(0, 8)}})
	queued, dropped, err := q.PublishShadows(runs)
	if err != nil || dropped != 0 {
		t.Fatalf("PublishShadows: %d dropped, %v", dropped, err)
	}
	total := 0
	for _, qs := range queued {
		select {
		case <-qs.Ack.Ok():
		case err := <-qs.Ack.Err():
			t.Fatal(err)
		case <-time.After(10 * time.Second):
			t.Fatal("no acknowledgement")
		}
		total += qs.Runs
	}
	if total != 45+50 {
		t.Fatalf("%d runs queued, want 95 (45 on version 2, 50 on 4)", total)
	}
	backlogs, err := q.ShadowBacklogs(ctx)
	backlog := backlogs["m"]
	if err != nil || len(backlog) != 2 || backlog[2] < 3 || backlog[4] < 4 || int(backlog[2]+backlog[4]) != len(queued) {
		t.Fatalf("ShadowBacklog = %v, %v; want the %d messages queued, on versions 2 and 4", backlog, err, len(queued))
	}
	for _, tc := range []struct {
		version    int64
		runs       int
		minM, maxM int
	}{{2, 45, 3, 4}, {4, 50, 4, 5}} {
		c, err := js.CreateOrUpdateConsumer(ctx, ShadowStream, jetstream.ConsumerConfig{FilterSubject: ShadowSubject("m", tc.version), AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			t.Fatal(err)
		}
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		var seen []string
		msgs := 0
		for m := range batch.Messages() {
			msgs++
			if size := len(m.Data()) + len(m.Headers().Get(HeaderShadowPack)); size > 64<<10+64*packedHeaderBytes {
				t.Errorf("version %d: a message of %d bytes, past the 64 KiB bound", tc.version, size)
			}
			headers, datas, ok, err := UnpackShadows(m.Headers(), m.Data())
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				headers, datas = []nats.Header{m.Headers()}, [][]byte{m.Data()}
			}
			for i := range headers {
				job, err := DecodeJob(headers[i], datas[i], tensor.Limits{})
				if err != nil {
					t.Fatal(err)
				}
				var n int
				fmt.Sscanf(job.ID, "job-%d", &n)
				want := fmt.Sprintf(`"data":[%d]`, n)
				if job.Version != tc.version || job.Routed || len(job.Shadows) != 0 || job.ShadowOf != "1" ||
					!strings.Contains(string(job.Answer), want) || job.Request.Inputs[0].Data[0] != byte(n) || len(job.Request.Inputs[0].Data) != 4096 {
					t.Fatalf("version %d: run %s read back as version %d routed %v shadows %v of %q, answer %s, request byte %d",
						tc.version, job.ID, job.Version, job.Routed, job.Shadows, job.ShadowOf, job.Answer, job.Request.Inputs[0].Data[0])
				}
				seen = append(seen, job.ID)
			}
		}
		if len(seen) != tc.runs || msgs < tc.minM || msgs > tc.maxM {
			t.Errorf("version %d: %d runs in %d messages, want %d runs in %d-%d", tc.version, len(seen), msgs, tc.runs, tc.minM, tc.maxM)
		}
	}

	bad := []struct{ name, header, data, want string }{
		{"not JSON", `[{"h":`, "", "not a list of runs"},
		{"longer than the data", `[{"h":{"Inferq-Job-Id":["a"]},"n":5}]`, "abc", "does not fit"},
		{"data left over", `[{"h":{"Inferq-Job-Id":["a"]},"n":1}]`, "abc", "take 1 of its 3 bytes"},
		{"negative", `[{"h":{"Inferq-Job-Id":["a"]},"n":-1}]`, "abc", "does not fit"},
		{"no headers", `[{"n":3}]`, "abc", "does not fit"},
	}
	for _, b := range bad {
		h := nats.Header{}
		h.Set(HeaderShadowPack, b.header)
		if _, _, ok, err := UnpackShadows(h, []byte(b.data)); !ok || err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s: UnpackShadows = %v, %v; want an error saying %q", b.name, ok, err, b.want)
		}
	}
}

// TestOldShadowQueuesRetired: a shadow worker's consumer, now in the
// shadow stream, removes the one a release before kept in the request
// stream, and the runs left on its subject there; a model's own consumer
// whose name is the same (model "m-shadow-2") is left alone.
func TestOldShadowQueuesRetired(t *testing.T) {
	q, js := setup(t)
	ctx := context.Background()
	for _, c := range []jetstream.ConsumerConfig{
		{Durable: ShadowConsumerName("m", 2), FilterSubject: oldShadowSubject("m", 2), AckPolicy: jetstream.AckExplicitPolicy},
		{Durable: ShadowConsumerName("n", 2), FilterSubject: RequestSubject("n-shadow-2", record.Normal), AckPolicy: jetstream.AckExplicitPolicy},
	} {
		if _, err := js.CreateConsumer(ctx, RequestStream, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, subject := range []string{oldShadowSubject("m", 2), oldShadowSubject("m", 2), RequestSubject("n-shadow-2", record.Normal)} {
		if _, err := js.Publish(ctx, subject, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for _, model := range []string{"m", "n"} {
		if _, err := q.ShadowConsumer(ctx, model, 2, ConsumerOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := js.Stream(ctx, RequestStream)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Consumer(ctx, ShadowConsumerName("m", 2)); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("the old shadow consumer of m in the request stream: %v, want it gone", err)
	}
	if c, err := s.Consumer(ctx, ShadowConsumerName("n", 2)); err != nil || c.CachedInfo().Config.FilterSubject != RequestSubject("n-shadow-2", record.Normal) {
		t.Errorf("model n-shadow-2's own consumer: %v, want it kept, on its model's subject", err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(requestPrefix+">"))
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Subjects[oldShadowSubject("m", 2)] != 0 || info.State.Subjects[RequestSubject("n-shadow-2", record.Normal)] != 1 {
		t.Errorf("request stream subjects %v: want the old shadow runs purged, model n-shadow-2's job kept", info.State.Subjects)
	}
	shadows, err := js.Stream(ctx, ShadowStream)
	if err != nil {
		t.Fatal(err)
	}
	backlogs, err := q.ShadowBacklogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, model := range []string{"m", "n"} {
		if _, err := shadows.Consumer(ctx, ShadowConsumerName(model, 2)); err != nil {
			t.Errorf("%s's shadow consumer in the shadow stream: %v", model, err)
		}
		// A shadow with a consumer and nothing queued has a backlog of 0,
		// not none.
		if n, ok := backlogs[model][2]; !ok || n != 0 {
			t.Errorf("%s's shadow backlog: %v (%v); want 0", model, n, ok)
		}
	}
}

// TestShadowsNeverFillTheQueue: shadow runs that nobody takes lose their
// oldest past --max-shadow-bytes, in a stream of their own, and never
// take the room of the jobs: with both bounds at 64 KiB and 300 KiB of
// shadow runs queued, a job of 8 KiB is still accepted (with the runs in
// the jobs' stream, as before, it was refused: the stream was full).
func TestShadowsNeverFillTheQueue(t *testing.T) {
	js := newJetStream(t, testenv.Connect(t, testenv.JetStream(t)))
	q, err := Setup(context.Background(), js, Options{MaxShadowBytes: 64 << 10, MaxQueuedBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	q.StorePayloads(nil, 8<<10) // packs of at most 8 KiB
	var runs []ShadowRun
	for i := range 75 { // 4 KiB each
		data := make([]byte, 4096)
		runs = append(runs, ShadowRun{Job: &Job{ID: fmt.Sprintf("job-%02d", i), Model: "m", Shadows: []int64{2},
			Request: &tensor.Request{Inputs: []tensor.Tensor{{Name: "x", Datatype: tensor.Uint8, Shape: []int64{4096}, Data: data}}}}, Answering: "1", Answer: []byte(`{}`)})
	}
	queued, dropped, err := q.PublishShadows(runs)
	if err != nil || dropped != 0 {
		t.Fatalf("PublishShadows: %d dropped, %v", dropped, err)
	}
	for _, qs := range queued {
		select {
		case <-qs.Ack.Ok():
		case err := <-qs.Ack.Err():
			t.Fatalf("a shadow pack refused: %v (the oldest should have gone instead)", err)
		case <-time.After(10 * time.Second):
			t.Fatal("no acknowledgement")
		}
	}
	s, err := js.Stream(context.Background(), ShadowStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Bytes > 64<<10 || info.State.Msgs == 0 || info.State.Msgs >= uint64(len(queued)) {
		t.Errorf("shadow stream: %d messages of %d queued, %d bytes; want the newest within 64 KiB", info.State.Msgs, len(queued), info.State.Bytes)
	}
	if _, err := js.Publish(context.Background(), RequestSubject("m", record.Normal), make([]byte, 8<<10)); err != nil {
		t.Fatalf("a job of 8 KiB refused after the shadow runs: %v", err)
	}
}
