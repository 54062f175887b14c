package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/record"
)

// ErrKeyReused is a claim of an idempotency key already tied to a job
// whose request differs.
var ErrKeyReused = errors.New("idempotency key reused with a different request")

// ClaimKey ties an idempotency key of a caller to job id and the digest
// of its request, unless the key is already tied to a job: then it
// returns that job's id, with ErrKeyReused when the digests differ. The
// caller (owner) is whoever the API knows the request by, such as a hash
// of its token: keys of different callers never meet. Keys are hashed,
// so any string the client sends is a valid key.
func (q *Queue) ClaimKey(ctx context.Context, owner, key, id, digest string) (existing string, err error) {
	k := keyName(owner, key)
	if _, err := q.keys.Create(ctx, k, []byte(id+" "+digest)); err == nil {
		return "", nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return "", fmt.Errorf("idempotency key: %w", err)
	}
	e, err := q.keys.Get(ctx, k)
	if err != nil {
		return "", fmt.Errorf("idempotency key: %w", err)
	}
	existing, was, _ := strings.Cut(string(e.Value()), " ")
	if was != digest {
		return existing, ErrKeyReused
	}
	return existing, nil
}

// ReclaimKey ties an idempotency key already tied to job old, which was
// never queued, to job id instead: a client retrying a submission that
// failed (and whose key could not be released then) gets a new job, not
// the one that failed. It returns ErrConflict when the key has been tied
// to another job meanwhile.
func (q *Queue) ReclaimKey(ctx context.Context, owner, key, old, id, digest string) error {
	k := keyName(owner, key)
	e, err := q.keys.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		_, err = q.keys.Create(ctx, k, []byte(id+" "+digest))
	} else if err == nil {
		if cur, _, _ := strings.Cut(string(e.Value()), " "); cur != old {
			return record.ErrConflict
		}
		_, err = q.keys.Update(ctx, k, []byte(id+" "+digest), e.Revision())
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return record.ErrConflict
	}
	if err != nil {
		return fmt.Errorf("idempotency key: %w", err)
	}
	return nil
}

// ReleaseKey unties an idempotency key, when its job could not be queued.
func (q *Queue) ReleaseKey(ctx context.Context, owner, key string) error {
	return q.keys.Purge(ctx, keyName(owner, key))
}

func keyName(owner, key string) string {
	sum := sha256.Sum256([]byte(owner + "\x00" + key))
	return hex.EncodeToString(sum[:])
}
