package jobs

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
)

// setup starts an embedded NATS server and sets the queue up on it.
func setup(t *testing.T) (*Queue, jetstream.JetStream) {
	t.Helper()
	js := newJetStream(t, testenv.Connect(t, testenv.JetStream(t)))
	q, err := Setup(context.Background(), js, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return q, js
}

func newJetStream(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// queueJob publishes a bare job message of model and priority, as the
// API would (without a record), and returns its id.
func queueJob(t *testing.T, js jetstream.JetStream, model string, p record.Priority, id string) {
	t.Helper()
	msg := nats.NewMsg(RequestSubject(model, p))
	msg.Header.Set(HeaderJobID, id)
	msg.Header.Set(HeaderModel, model)
	msg.Data = []byte(`{}`)
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// fetchIDs pulls up to n jobs from c and returns their ids, acknowledged.
func fetchIDs(t *testing.T, c jetstream.Consumer, n int) []string {
	t.Helper()
	b, err := c.Fetch(n, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for m := range b.Messages() {
		ids = append(ids, m.Headers().Get(HeaderJobID))
		if err := m.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// TestConsumerNamesDoNotCollide: model "m" at high priority and model
// "m-high" at normal priority once shared a durable consumer name,
// inferq-m-high, so that each model's workers set the other's filter in
// turn, and one model's jobs were run by the other's.
func TestConsumerNamesDoNotCollide(t *testing.T) {
	q, js := setup(t)
	ctx := context.Background()
	queueJob(t, js, "m", record.High, "job-of-m")
	queueJob(t, js, "m-high", record.Normal, "job-of-m-high")
	high, err := q.Consumer(ctx, "m", record.High, ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	normal, err := q.Consumer(ctx, "m-high", record.Normal, ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := fetchIDs(t, high, 10); len(got) != 1 || got[0] != "job-of-m" {
		t.Errorf("model m's high-priority consumer gave %v; want [job-of-m]", got)
	}
	if got := fetchIDs(t, normal, 10); len(got) != 1 || got[0] != "job-of-m-high" {
		t.Errorf("model m-high's consumer gave %v; want [job-of-m-high]", got)
	}
}

// TestConsumerRetiresOldHighPriorityName: a queue set up by an earlier
// release has model m's high-priority consumer under its old name,
// inferq-m-high, holding a job delivered and never acknowledged (its
// worker stopped). Opening m's high-priority consumer retires the old one
// and delivers the job again; opening model m-high's consumer does not
// take the old one over.
func TestConsumerRetiresOldHighPriorityName(t *testing.T) {
	for _, first := range []string{"m", "m-high"} {
		t.Run("first "+first, func(t *testing.T) {
			q, js := setup(t)
			ctx := context.Background()
			old, err := js.CreateOrUpdateConsumer(ctx, RequestStream, jetstream.ConsumerConfig{
				Durable: "inferq-m-high", FilterSubject: RequestSubject("m", record.High),
				AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: -1,
			})
			if err != nil {
				t.Fatal(err)
			}
			queueJob(t, js, "m", record.High, "started-before")
			queueJob(t, js, "m", record.High, "waiting")
			queueJob(t, js, "m-high", record.Normal, "job-of-m-high")
			b, err := old.Fetch(1, jetstream.FetchMaxWait(time.Second))
			if err != nil {
				t.Fatal(err)
			}
			for range b.Messages() { // delivered, never acknowledged
			}

			open := map[string]func() (jetstream.Consumer, error){
				"m":      func() (jetstream.Consumer, error) { return q.Consumer(ctx, "m", record.High, ConsumerOptions{}) },
				"m-high": func() (jetstream.Consumer, error) { return q.Consumer(ctx, "m-high", record.Normal, ConsumerOptions{}) },
			}
			second := map[string]string{"m": "m-high", "m-high": "m"}[first]
			cons := map[string]jetstream.Consumer{}
			for _, name := range []string{first, second} {
				if cons[name], err = open[name](); err != nil {
					t.Fatalf("open the consumer of %s: %v", name, err)
				}
			}
			if got := fetchIDs(t, cons["m"], 10); len(got) != 2 || got[0] != "started-before" || got[1] != "waiting" {
				t.Errorf("model m's high-priority consumer gave %v; want [started-before waiting]", got)
			}
			if got := fetchIDs(t, cons["m-high"], 10); len(got) != 1 || got[0] != "job-of-m-high" {
				t.Errorf("model m-high's consumer gave %v; want [job-of-m-high]", got)
			}
			info, err := cons["m-high"].Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.Config.FilterSubject != RequestSubject("m-high", record.Normal) {
				t.Errorf("model m-high's consumer %s filters %s", info.Name, info.Config.FilterSubject)
			}
			if c, err := js.Consumer(ctx, RequestStream, "inferq-m-high"); err == nil && c.CachedInfo().Config.FilterSubject == RequestSubject("m", record.High) {
				t.Error("the old high-priority consumer inferq-m-high is still there")
			} else if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				t.Fatal(err)
			}
		})
	}
}

// watchers counts the consumers of the records bucket: the Watcher's
// watch is one.
func watchers(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	s, err := js.Stream(context.Background(), "KV_"+RecordBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

// TestWatcherWatchesOnlyWhileWaited: the bucket is watched from the
// first waiter until a while after the last; each waiter hears of every
// change made after Wait returned, a first one after a watch stopped too.
func TestWatcherWatchesOnlyWhileWaited(t *testing.T) {
	q, js := setup(t)
	ctx := context.Background()
	w := q.Records.Watch(nil)
	defer w.Close()
	w.idle = 50 * time.Millisecond
	if n := watchers(t, js); n != 0 {
		t.Fatalf("%d watches of the records with nobody waiting", n)
	}
	for round := range 2 {
		id := fmt.Sprintf("job-%d", round)
		if err := q.Records.Create(ctx, &record.Record{ID: id, Status: record.Queued}); err != nil {
			t.Fatal(err)
		}
		changed, stop := w.Wait(id)
		if n := watchers(t, js); n != 1 {
			t.Fatalf("round %d: %d watches of the records while one waiter waits", round, n)
		}
		if _, err := q.Records.Update(ctx, id, func(r *record.Record) error { r.Status = record.Running; return nil }); err != nil {
			t.Fatal(err)
		}
		select {
		case rec := <-changed:
			if rec.ID != id || rec.Status != record.Running {
				t.Fatalf("round %d: the waiter heard %+v", round, rec)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the waiter heard nothing of the change", round)
		}
		stop()
		testenv.Eventually(t, 5*time.Second, fmt.Sprintf("round %d: the watch ends after its last waiter left (idle %s)", round, w.idle),
			func() bool { return watchers(t, js) == 0 })
	}
}

// TestWatcherStartsAfterOutage: a waiter that comes while NATS is away
// cannot have its watch started; once NATS is back the watch starts by
// itself, and the waiter hears of a change made while it was away and of
// one made after.
func TestWatcherStartsAfterOutage(t *testing.T) {
	startNATS := testenv.RestartableJetStream(t)
	ns := startNATS()
	js := newJetStream(t, testenv.Connect(t, ns, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond)))
	ctx := context.Background()
	q, err := Setup(ctx, js, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Records.Create(ctx, &record.Record{ID: "job", Status: record.Queued}); err != nil {
		t.Fatal(err)
	}
	w := q.Records.Watch(nil)
	defer w.Close()

	ns.Shutdown()
	changed, stop := w.Wait("job") // returns after its first try fails
	defer stop()
	ns = startNATS()
	defer ns.Shutdown()
	// Changed at once, on a connection of its own, before this one is
	// back (it retries every 50 ms, the watch's start every 100 ms and
	// more): only the catch-up can tell the waiter.
	oq, err := Open(ctx, newJetStream(t, testenv.Connect(t, ns)))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []record.Status{record.Running, record.Succeeded} {
		if _, err := oq.Records.Update(ctx, "job", func(r *record.Record) error { r.Status = s; return nil }); err != nil {
			t.Fatal(err)
		}
		// (Should the watch start just before the change, the catch-up
		// may tell of the state before it, queued: skipped.)
		for heard := record.Status(""); heard != s; {
			select {
			case rec := <-changed:
				if heard = rec.Status; heard != s && heard != record.Queued {
					t.Fatalf("the waiter heard %s; want %s", heard, s)
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("the waiter heard nothing of %s after NATS came back", s)
			}
		}
	}
}

// TestModelOfConsumer: consumer names read back as the model and
// priority they were made for, and nothing else reads as a model.
func TestModelOfConsumer(t *testing.T) {
	for _, model := range []string{"m", "m-high", "resnet50-v1.5", "a~b-high"} {
		for _, p := range []record.Priority{record.Normal, record.High} {
			name := ConsumerName(model, p)
			got, gotP, ok := ModelOfConsumer(name)
			if !ok || got != modelOfToken(Token(model)) || gotP != p {
				t.Errorf("ModelOfConsumer(%q) = %q, %q, %v; want %q, %q", name, got, gotP, ok, model, p)
			}
		}
	}
	for _, name := range []string{"inferq-", "inferq-@high", "batches", "inferq-a@b", "inferq-x@high@high"} {
		if m, _, ok := ModelOfConsumer(name); ok {
			t.Errorf("ModelOfConsumer(%q) = %q; want no model", name, m)
		}
	}
}

// failedMsg is a job message as a worker holds it, for dead-lettering.
type failedMsg struct {
	jetstream.Msg
	h    nats.Header
	data []byte
}

func (m failedMsg) Headers() nats.Header { return m.h }
func (m failedMsg) Data() []byte         { return m.data }
func (m failedMsg) Subject() string      { return RequestSubject(m.h.Get(HeaderModel), record.Normal) }

// TestDeadLettersBoundedPerModel: one model's flood of failures keeps
// only its newest letters, and never evicts another model's, even when
// the stream's shared bound is small.
func TestDeadLettersBoundedPerModel(t *testing.T) {
	js := newJetStream(t, testenv.Connect(t, testenv.JetStream(t)))
	q, err := Setup(context.Background(), js, Options{MaxDeadLetters: 5, MaxQueuedBytes: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	letter := func(model, id string) {
		t.Helper()
		h := nats.Header{}
		h.Set(HeaderJobID, id)
		h.Set(HeaderModel, model)
		if err := q.DeadLetter(ctx, failedMsg{h: h, data: make([]byte, 4000)}, "boom", 1); err != nil {
			t.Fatal(err)
		}
	}
	letter("b", "b-only")
	for i := range 600 { // 2.4 MB of letters, far past the stream's bound
		letter("a", fmt.Sprintf("a-%03d", i))
	}
	bs, err := q.DeadLetters(ctx, "b", 0, 100)
	if err != nil || len(bs) != 1 || bs[0].JobID != "b-only" {
		t.Errorf("model b's letters after model a's flood: %+v (%v); want its one letter", bs, err)
	}
	as, err := q.DeadLetters(ctx, "a", 0, 100)
	if err != nil || len(as) != 5 || as[0].JobID != "a-595" || as[4].JobID != "a-599" {
		t.Errorf("model a's letters: %d (%v); want its newest 5", len(as), err)
	}
}

// TestMonitoringBoundedPerModel: a model's snapshots past its bound drop
// its own oldest, not another model's.
func TestMonitoringBoundedPerModel(t *testing.T) {
	q, js := setup(t)
	ctx := context.Background()
	if err := q.PublishMonitoring(ctx, "b", []byte(`{"model":"b"}`)); err != nil {
		t.Fatal(err)
	}
	for range MaxSnapshotsPerModel + 100 {
		if _, err := js.PublishAsync(MonitoringSubject("a"), []byte(`{"model":"a"}`)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishing snapshots did not complete")
	}
	s, err := js.Stream(ctx, MonitoringStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(monitoringPrefix+">"))
	if err != nil {
		t.Fatal(err)
	}
	if a, b := info.State.Subjects[MonitoringSubject("a")], info.State.Subjects[MonitoringSubject("b")]; a != MaxSnapshotsPerModel || b != 1 {
		t.Errorf("model a keeps %d snapshots, b %d; want %d and 1", a, b, MaxSnapshotsPerModel)
	}
}
