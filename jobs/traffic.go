package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/retry"
	"github.com/inferq/inferq/traffic"
)

// TrafficBucket holds the traffic splits set at run time, by model.
const TrafficBucket = "INFERQ_TRAFFIC"

// Traffic keeps the traffic splits set at run time (PUT
// /v1/models/{model}/traffic) in a key-value bucket, by model: they
// outlive restarts, and every API process follows them (Watch). A model
// with none stored takes its config.yaml's. The bucket keeps each
// model's last 10 splits.
type Traffic struct {
	kv jetstream.KeyValue
}

// Get returns model's stored split; nil when none is stored.
func (t *Traffic) Get(ctx context.Context, model string) (*traffic.Stored, error) {
	e, err := t.kv.Get(ctx, model)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the traffic of %s: %w", model, err)
	}
	return decodeStored(model, e.Value())
}

func decodeStored(model string, b []byte) (*traffic.Stored, error) {
	var s traffic.Stored
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode the traffic of %s: %w", model, err)
	}
	return &s, nil
}

// Put stores model's split, set now.
func (t *Traffic) Put(ctx context.Context, model string, s traffic.Split, now time.Time) (*traffic.Stored, error) {
	st := &traffic.Stored{Split: s, UpdatedAt: now.UTC()}
	b, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	if _, err := t.kv.Put(ctx, model, b); err != nil {
		return nil, fmt.Errorf("store the traffic of %s: %w", model, err)
	}
	return st, nil
}

// Delete removes model's stored split: its config.yaml's applies again.
func (t *Traffic) Delete(ctx context.Context, model string) error {
	if err := t.kv.Delete(ctx, model); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("remove the traffic of %s: %w", model, err)
	}
	return nil
}

// Watch calls fn with each model's stored split, those stored now first
// and then every change (nil: removed), until ctx ends. ready, when set,
// is called once the splits stored now have been given.
func (t *Traffic) Watch(ctx context.Context, ready func(), fn func(model string, s *traffic.Stored)) error {
	w, err := t.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("follow traffic splits: %w", err)
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("follow traffic splits: the watch ended")
			}
			if e == nil { // the stored ones are all given
				if ready != nil {
					ready()
					ready = nil
				}
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				fn(e.Key(), nil)
				continue
			}
			s, err := decodeStored(e.Key(), e.Value())
			if err != nil {
				continue
			}
			fn(e.Key(), s)
		}
	}
}

// Follow calls fn with each model's stored split and every change, as
// Watch, until ctx ends, watching again (after a pause, logged) when a
// watch ends.
func (t *Traffic) Follow(ctx context.Context, log *slog.Logger, fn func(model string, s *traffic.Stored)) error {
	wait := retry.New(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		err := t.Watch(ctx, wait.Reset, fn)
		if ctx.Err() != nil {
			break
		}
		log.Warn("following traffic splits; trying again", "err", err)
		retry.Sleep(ctx, wait.Next())
	}
	return nil
}
