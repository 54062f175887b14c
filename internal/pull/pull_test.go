package pull_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/pull"
	"github.com/inferq/inferq/internal/testenv"
)

// setup makes a stream holding n messages and a durable consumer on it
// with the given ack wait.
func setup(t *testing.T, n int, ackWait time.Duration) (jetstream.JetStream, jetstream.Consumer) {
	t.Helper()
	ctx := t.Context()
	js, err := jetstream.New(testenv.Connect(t, testenv.JetStream(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := js.Publish(ctx, "s.x", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "S", jetstream.ConsumerConfig{
		Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxDeliver: -1})
	if err != nil {
		t.Fatal(err)
	}
	return js, cons
}

func pending(t *testing.T, cons jetstream.Consumer) (unacked, unsent int) {
	t.Helper()
	info, err := cons.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumAckPending, int(info.NumPending)
}

func TestLoopSettles(t *testing.T) {
	errBusy := errors.New("busy")
	tests := []struct {
		name string
		// reply is the handler's answer for its i-th call.
		reply func(i int, msgs []jetstream.Msg) error
		// seen is how many deliveries of the 10 messages the handler
		// must see before the test stops the loop.
		seen int
	}{
		{"nil acknowledges", func(int, []jetstream.Msg) error { return nil }, 10},
		{"an error hands back, delivered again", func(i int, _ []jetstream.Msg) error {
			if i == 0 {
				return errBusy
			}
			return nil
		}, 10},
		{"kept messages are the handler's to settle", func(_ int, msgs []jetstream.Msg) error {
			for _, m := range msgs {
				go m.Ack()
			}
			return pull.Kept
		}, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, cons := setup(t, 10, time.Minute)
			ctx, cancel := context.WithCancel(t.Context())
			var mu sync.Mutex
			calls, seen := 0, map[string]int{}
			done := make(chan error, 1)
			go func() {
				done <- (&pull.Loop{Consumer: cons, Max: 4, Wait: 100 * time.Millisecond}).Run(ctx, func(_ context.Context, msgs []jetstream.Msg) error {
					mu.Lock()
					defer mu.Unlock()
					if len(msgs) > 4 {
						t.Errorf("a call got %d messages, more than Max 4", len(msgs))
					}
					err := tc.reply(calls, msgs)
					calls++
					for _, m := range msgs {
						if err == nil || errors.Is(err, pull.Kept) {
							seen[string(m.Data())]++
						}
					}
					return err
				})
			}()
			testenv.Eventually(t, 10*time.Second, "all 10 messages settled, none unacknowledged", func() bool {
				mu.Lock()
				n := len(seen)
				mu.Unlock()
				unacked, unsent := pending(t, cons)
				return n == tc.seen && unacked == 0 && unsent == 0
			})
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run after ctx ended: %v, want nil", err)
			}
			for k, n := range seen {
				if n != 1 {
					t.Errorf("message %s settled %d times", k, n)
				}
			}
		})
	}
}

func TestLoopStop(t *testing.T) {
	_, cons := setup(t, 5, time.Minute)
	boom := errors.New("model gone")
	err := (&pull.Loop{Consumer: cons, Max: 2}).Run(t.Context(), func(context.Context, []jetstream.Msg) error {
		return pull.Stop(boom)
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the handler's terminal error", err)
	}
	// What the loop stopped on went back: all five are delivered again
	// at once, not after the ack wait of a minute.
	b, err := cons.Fetch(5, jetstream.FetchMaxWait(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range b.Messages() {
		n++
		_ = m.Ack()
	}
	if n != 5 {
		t.Fatalf("%d of 5 messages delivered again after a terminal error, want all (handed back)", n)
	}
}

// TestLoopRoom: the loop never holds more messages than the room it is
// given, and asks again when told room was freed.
func TestLoopRoom(t *testing.T) {
	_, cons := setup(t, 20, time.Minute)
	var held atomic.Int64
	var most atomic.Int64
	freed := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var wg sync.WaitGroup
	var total atomic.Int64
	done := make(chan error, 1)
	go func() {
		done <- (&pull.Loop{Consumer: cons, Max: 100, Room: func() int { return 3 - int(held.Load()) }, Freed: freed, Wait: time.Second}).Run(ctx,
			func(_ context.Context, msgs []jetstream.Msg) error {
				now := held.Add(int64(len(msgs)))
				for most.Load() < now && !most.CompareAndSwap(most.Load(), now) {
				}
				for _, m := range msgs {
					wg.Go(func() {
						time.Sleep(10 * time.Millisecond)
						_ = m.Ack()
						total.Add(1)
						held.Add(-1)
						select {
						case freed <- struct{}{}:
						default:
						}
					})
				}
				return pull.Kept
			})
	}()
	testenv.Eventually(t, 10*time.Second, "all 20 handled", func() bool { return total.Load() == 20 })
	cancel()
	<-done
	wg.Wait()
	if most.Load() > 3 {
		t.Fatalf("held %d messages at once, room was 3", most.Load())
	}
}
