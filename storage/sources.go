package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrSourceRefused is returned for a source a batch may not read.
var ErrSourceRefused = errors.New("source refused")

// Bucket is a place objects are listed and read from.
type Bucket interface {
	ListPage(ctx context.Context, prefix, after string, max int) ([]Object, error)
	Open(ctx context.Context, key string) (io.ReadCloser, error)
}

// Open opens the object at key; the caller closes it.
func (d *Dir) Open(ctx context.Context, key string) (io.ReadCloser, error) { return d.Get(ctx, key) }

// Sources says which objects batches may read as their inputs, and reads
// them: those of the store under inputs/ (any model's inputs folder;
// which model's, the caller checks), and those under the buckets and
// prefixes the operator allowed (--batch-sources), as s3://bucket/prefix
// URLs, read with the store's own endpoint and credentials. Nothing else
// is read, and a refusal says nothing of what exists.
type Sources struct {
	// Store is the result store.
	Store Bucket
	// S3 is the result store when it is S3: the allowed buckets are
	// reached through it.
	S3 *S3
	// Allowed are the allowed s3://bucket/prefix URLs.
	Allowed []string
}

// ParseSources reads --batch-sources: s3://bucket/prefix URLs, separated
// by commas.
func ParseSources(list string) ([]string, error) {
	var out []string
	for _, u := range strings.Split(list, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		bucket, _, ok := splitS3(u)
		if !ok || bucket == "" {
			return nil, fmt.Errorf("batch source %q: give s3://bucket/ or s3://bucket/prefix/", u)
		}
		out = append(out, u)
	}
	return out, nil
}

// splitS3 splits s3://bucket/key.
func splitS3(u string) (bucket, key string, ok bool) {
	rest, ok := strings.CutPrefix(u, "s3://")
	if !ok {
		return "", "", false
	}
	bucket, key, _ = strings.Cut(rest, "/")
	return bucket, key, true
}

// IsURL reports whether ref names an object of another bucket
// (s3://bucket/key) rather than a key of the store.
func IsURL(ref string) bool { return strings.HasPrefix(ref, "s3://") }

// Resolve returns where source's objects are listed and read, and the
// prefix to list there. A source is a prefix of the store under inputs/,
// or an s3:// URL under an allowed one. Object keys are given back as
// references: keys of the store as they are, others as s3:// URLs (Ref).
func (s *Sources) Resolve(source string) (Bucket, string, error) {
	if strings.Contains("/"+source+"/", "/../") || strings.Contains("/"+source+"/", "/./") {
		return nil, "", fmt.Errorf("%w: %s has . or .. segments", ErrSourceRefused, source)
	}
	if !IsURL(source) {
		if !strings.HasPrefix(source, "inputs/") || s.Store == nil {
			return nil, "", fmt.Errorf("%w: %s is not a prefix under inputs/{model}/ of the result store, nor an s3:// URL the operator allowed (--batch-sources)", ErrSourceRefused, source)
		}
		return s.Store, source, nil
	}
	if !s.allowed(source) || s.S3 == nil {
		return nil, "", fmt.Errorf("%w: %s is not among the sources this server may read (--batch-sources)", ErrSourceRefused, source)
	}
	bucket, prefix, _ := splitS3(source)
	return s.S3.Bucket(bucket), prefix, nil
}

// Ref is the reference of a listed object of source: its key for a
// source in the store, its s3:// URL for one in another bucket.
func Ref(source, key string) string {
	if bucket, _, ok := splitS3(source); ok {
		return "s3://" + bucket + "/" + key
	}
	return key
}

func (s *Sources) allowed(u string) bool {
	bucket, key, ok := splitS3(u)
	if !ok {
		return false
	}
	for _, a := range s.Allowed {
		ab, ak, _ := splitS3(a)
		if ab == bucket && strings.HasPrefix(key, ak) {
			return true
		}
	}
	return false
}

// OpenURL opens the object an s3:// URL names, if it lies under an
// allowed source.
func (s *Sources) OpenURL(ctx context.Context, u string) (io.ReadCloser, error) {
	b, key, err := s.Resolve(u)
	if err != nil {
		return nil, err
	}
	return b.Open(ctx, key)
}
