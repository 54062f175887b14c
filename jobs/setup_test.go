package jobs

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/inferq/inferq/internal/testenv"
)

// TestSetupWritesOnlyWhatChanged: setting up a queue that is already as
// wanted (every restart) creates and updates nothing; a changed option
// updates its one stream; two processes setting a fresh queue up at once
// both succeed.
func TestSetupWritesOnlyWhatChanged(t *testing.T) {
	ns := testenv.JetStream(t)
	nc := testenv.Connect(t, ns)
	js := newJetStream(t, nc)
	ctx := context.Background()
	var writes atomic.Int64
	var mu sync.Mutex
	var subjects []string
	for _, s := range []string{"$JS.API.STREAM.CREATE.>", "$JS.API.STREAM.UPDATE.>"} {
		sub, err := nc.Subscribe(s, func(m *nats.Msg) {
			writes.Add(1)
			mu.Lock()
			subjects = append(subjects, m.Subject)
			mu.Unlock()
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	flush := func() {
		t.Helper()
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// Two at once on a fresh server.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = Setup(ctx, newJetStream(t, testenv.Connect(t, ns)), Options{})
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("concurrent set-up: %v", err)
		}
	}
	flush()
	mu.Lock()
	writes.Store(0)
	subjects = nil
	mu.Unlock()
	if _, err := Setup(ctx, js, Options{}); err != nil {
		t.Fatal(err)
	}
	flush()
	mu.Lock()
	if n := writes.Load(); n != 0 {
		t.Errorf("a set-up of a queue already as wanted wrote %d times: %v", n, subjects)
	}
	mu.Unlock()
	if _, err := Setup(ctx, js, Options{MaxQueued: 5}); err != nil {
		t.Fatal(err)
	}
	flush()
	mu.Lock()
	defer mu.Unlock()
	if len(subjects) != 1 || subjects[0] != "$JS.API.STREAM.UPDATE."+RequestStream {
		t.Errorf("a set-up with --max-queued changed wrote %v; want one update of %s", subjects, RequestStream)
	}
}
