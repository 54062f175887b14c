package jobs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/retry"
)

// Every process sets the queue up at start, and on a fresh cluster the
// API and the workers of a rollout start together. Two processes creating
// the same replicated stream at once may both wait out their request
// (the second is answered late or not at all: nats-io/nats.go#949), and
// CreateOrUpdateStream then fails the whole set-up. So each stream and
// bucket is looked at first and left alone when it is as wanted (a
// restart writes nothing), created only when missing, each request given
// setupCallTimeout, and a creation that timed out or lost a race is
// looked at again: the other process's stream is the one wanted.

// setupCallTimeout bounds one JetStream request of the set-up.
const setupCallTimeout = 2 * time.Second

// setupBudget bounds the set-up of one stream or bucket.
const setupBudget = time.Minute

// ensureStream makes stream cfg.Name as cfg says.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	return ensure(ctx, "stream "+cfg.Name, func(ctx context.Context) (bool, error) {
		s, err := js.Stream(ctx, cfg.Name)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			_, err = js.CreateStream(ctx, cfg)
			return err == nil, err
		case err != nil:
			return false, err
		case sameStream(s.CachedInfo().Config, cfg):
			return true, nil
		}
		cfg.Metadata = mergeMetadata(s.CachedInfo().Config.Metadata, cfg.Metadata)
		_, err = js.UpdateStream(ctx, cfg)
		return err == nil, err
	})
}

// ensureKeyValue makes bucket cfg.Bucket as cfg says, and returns it.
func ensureKeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	var kv jetstream.KeyValue
	err := ensure(ctx, "bucket "+cfg.Bucket, func(ctx context.Context) (bool, error) {
		var err error
		kv, err = js.KeyValue(ctx, cfg.Bucket)
		switch {
		case errors.Is(err, jetstream.ErrBucketNotFound):
			kv, err = js.CreateKeyValue(ctx, cfg)
			return err == nil, err
		case err != nil:
			return false, err
		}
		st, err := kv.Status(ctx)
		if err != nil {
			return false, err
		}
		if sameBucket(st.Config(), cfg) {
			return true, nil
		}
		kv, err = js.CreateOrUpdateKeyValue(ctx, cfg)
		return err == nil, err
	})
	return kv, err
}

// ensure calls try, each time within setupCallTimeout, until it reports
// done, fails for good, or setupBudget passes. A request that timed out,
// found no responder, or found its stream created meanwhile by another
// process is tried again soon: the next try looks at what is there.
func ensure(ctx context.Context, what string, try func(ctx context.Context) (bool, error)) error {
	deadline := time.Now().Add(setupBudget)
	wait := retry.New(100*time.Millisecond, time.Second)
	for {
		tctx, cancel := context.WithTimeout(ctx, setupCallTimeout)
		done, err := try(tctx)
		cancel()
		if done {
			return nil
		}
		if ctx.Err() != nil || !setupTransient(err) || time.Now().After(deadline) {
			return fmt.Errorf("set up %s: %w", what, err)
		}
		if !wait.Wait(ctx) {
			return fmt.Errorf("set up %s: %w", what, ctx.Err())
		}
	}
}

// setupTransient reports an error that another try may not meet: a
// request unanswered in time, a cluster still electing, or a creation
// that another process won.
func setupTransient(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) || errors.Is(err, jetstream.ErrBucketExists) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		(errors.As(err, &apiErr) && apiErr.Code == 503)
}

// sameStream reports whether stream config have holds what want sets.
// Only the fields inferq sets are compared: the server fills in others.
func sameStream(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) && have.Description == want.Description &&
		have.Retention == want.Retention && have.Storage == want.Storage && have.Replicas == max(want.Replicas, 1) &&
		(want.Duplicates == 0 || have.Duplicates == want.Duplicates) && have.Discard == want.Discard && have.MaxAge == want.MaxAge &&
		sameLimit(have.MaxBytes, want.MaxBytes) && sameLimit(have.MaxMsgsPerSubject, want.MaxMsgsPerSubject) &&
		have.DiscardNewPerSubject == want.DiscardNewPerSubject && hasMetadataKeys(have.Metadata, want.Metadata)
}

// hasMetadataKeys reports whether have holds every key of want (whatever
// its value: a stream keeps the values it was given first).
func hasMetadataKeys(have, want map[string]string) bool {
	for k := range want {
		if _, ok := have[k]; !ok {
			return false
		}
	}
	return true
}

// mergeMetadata is want's metadata over have's, but with have's value
// for the keys both hold, so that an update keeps what the stream holds
// (the server's own keys, and inferq's event key).
func mergeMetadata(have, want map[string]string) map[string]string {
	if len(have) == 0 && len(want) == 0 {
		return nil
	}
	out := map[string]string{}
	for k, v := range want {
		out[k] = v
	}
	for k, v := range have {
		out[k] = v
	}
	return out
}

// sameLimit compares limits where the server reads 0 as none (-1).
func sameLimit(have, want int64) bool {
	if want == 0 {
		want = -1
	}
	return have == want
}

// sameBucket reports whether bucket config have holds what want sets.
func sameBucket(have, want jetstream.KeyValueConfig) bool {
	return have.Description == want.Description && have.History == max(want.History, 1) &&
		have.TTL == want.TTL && have.Storage == want.Storage && have.Replicas == max(want.Replicas, 1)
}
