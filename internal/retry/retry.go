// Package retry is how inferq waits between tries, in one place: an
// exponential backoff with jitter from github.com/cenkalti/backoff/v5 for
// loops that retry in hand (a pull loop while NATS is away, a publish
// whose answer was lost, a stream set up while a cluster forms), and
// Delay for retries counted across deliveries of a message, where no
// state survives between tries but the delivery count.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Backoff is an exponential backoff: Next grows from Min to Max, doubling,
// each delay jittered by a fifth either way so that processes that failed
// together do not retry together. Reset starts it again from Min.
type Backoff struct {
	b *backoff.ExponentialBackOff
}

// New returns a Backoff from min up to max.
func New(min, max time.Duration) *Backoff {
	b := &backoff.ExponentialBackOff{
		InitialInterval:     min,
		RandomizationFactor: 0.2,
		Multiplier:          2,
		MaxInterval:         max,
	}
	b.Reset()
	return &Backoff{b: b}
}

// Next returns the next delay and moves on.
func (b *Backoff) Next() time.Duration { return b.b.NextBackOff() }

// Reset starts the delays again from min.
func (b *Backoff) Reset() { b.b.Reset() }

// Wait waits the next delay, or until ctx ends, and reports whether the
// delay passed.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

// Sleep waits d, or until ctx ends, and reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Delay is the wait before try n (from 1) of a message retried across
// deliveries: first for the first, doubling with each one after, at most
// most.
func Delay(first, most time.Duration, n int) time.Duration {
	d := first
	for i := 1; i < n && d < most; i++ {
		d *= 2
	}
	return min(d, most)
}
