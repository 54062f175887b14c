package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/lifecycle"
)

// S3Options configure an S3 store. Endpoint and Bucket are required.
type S3Options struct {
	// Endpoint is host:port of the S3 API, such as s3.amazonaws.com or
	// localhost:9000.
	Endpoint string
	Bucket   string
	Region   string
	// AccessKey and SecretKey authenticate; empty uses the environment's
	// AWS credentials (variables, files, instance roles).
	AccessKey, SecretKey string
	// Secure selects https.
	Secure bool
	// CreateBucket creates the bucket when it is missing.
	CreateBucket bool
	// Timeout bounds each call, retries included. Default 30s.
	Timeout time.Duration
	// MaxRetries is how often a failed call is retried, with exponential
	// backoff and jitter. Default 5.
	MaxRetries int
}

// String describes the store without its credentials, for logs.
func (o S3Options) String() string {
	scheme := "http"
	if o.Secure {
		scheme = "https"
	}
	return fmt.Sprintf("s3 %s://%s/%s", scheme, o.Endpoint, o.Bucket)
}

// S3 stores objects in an S3-compatible bucket (AWS S3, MinIO, ...). It is
// safe for concurrent use.
type S3 struct {
	c       *minio.Client
	bucket  string
	timeout time.Duration
	// anyKey: keys are not held to CheckKey (a bucket of the operator's,
	// read only).
	anyKey bool
}

// NewS3 connects to the bucket, creating it when opts allow and it is
// missing.
func NewS3(ctx context.Context, opts S3Options) (*S3, error) {
	if opts.Endpoint == "" || opts.Bucket == "" {
		return nil, errors.New("s3: --s3-endpoint and --s3-bucket are required")
	}
	if strings.Contains(opts.Endpoint, "://") {
		return nil, fmt.Errorf("s3: endpoint %q: give host:port, and --s3-secure for https", opts.Endpoint)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.MaxRetries <= 0 {
		opts.MaxRetries = 5
	}
	creds := credentials.NewStaticV4(opts.AccessKey, opts.SecretKey, "")
	if opts.AccessKey == "" {
		creds = credentials.NewChainCredentials([]credentials.Provider{&credentials.EnvAWS{}, &credentials.FileAWSCredentials{}, &credentials.IAM{}})
	}
	c, err := minio.New(opts.Endpoint, &minio.Options{
		Creds: creds, Secure: opts.Secure, Region: opts.Region, MaxRetries: opts.MaxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", opts, err)
	}
	s := &S3{c: c, bucket: opts.Bucket, timeout: opts.Timeout}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	ok, err := c.BucketExists(ctx, opts.Bucket)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", opts, err)
	}
	if !ok {
		if !opts.CreateBucket {
			return nil, fmt.Errorf("%s: the bucket does not exist (create it, or allow inferq to)", opts)
		}
		if err := c.MakeBucket(ctx, opts.Bucket, minio.MakeBucketOptions{Region: opts.Region}); err != nil && !createdMeanwhile(err) {
			return nil, fmt.Errorf("%s: create the bucket: %w", opts, err)
		}
	}
	return s, nil
}

// createdMeanwhile reports whether a bucket creation failed because the
// bucket came to exist since it was looked for: processes started at once
// (as Kubernetes starts the API and the workers) race to create it, and
// the losers were told "you already own it".
func createdMeanwhile(err error) bool {
	switch minio.ToErrorResponse(err).Code {
	case "BucketAlreadyOwnedByYou", "BucketAlreadyExists":
		return true
	}
	return false
}

func (s *S3) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

func notFound(err error) bool {
	return minio.ToErrorResponse(err).StatusCode == http.StatusNotFound
}

// Put writes the object at key, replacing any object there. S3 makes the
// write atomic: readers see the old object or the new one.
func (s *S3) Put(ctx context.Context, key string, r io.Reader) error {
	if err := CheckKey(key); err != nil {
		return err
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	size := int64(-1)
	if b, ok := r.(*bytes.Reader); ok {
		size = int64(b.Len())
	}
	if _, err := s.c.PutObject(ctx, s.bucket, key, r, size, minio.PutObjectOptions{ContentType: contentType(key)}); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

func contentType(key string) string {
	switch {
	case strings.HasSuffix(key, ".json"):
		return "application/json"
	case strings.HasSuffix(key, ".jsonl"):
		return "application/jsonl"
	}
	return "application/octet-stream"
}

// Get opens the object at key; the caller closes it.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return s.get(ctx, key, minio.GetObjectOptions{})
}

// GetRange opens length bytes of the object at key from offset.
func (s *S3) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if offset < 0 || length < 0 {
		return nil, fmt.Errorf("get %s: bad range %d+%d", key, offset, length)
	}
	if length == 0 {
		return io.NopCloser(bytes.NewReader(nil)), nil
	}
	var opts minio.GetObjectOptions
	if err := opts.SetRange(offset, offset+length-1); err != nil {
		return nil, err
	}
	rc, err := s.get(ctx, key, opts)
	if err != nil {
		return nil, err
	}
	// S3 answers a range past the end with what there is; a short read is
	// an error here, as it is for files.
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	if int64(len(b)) != length {
		return nil, fmt.Errorf("get %s: range %d+%d is past the end of the object", key, offset, length)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func (s *S3) get(ctx context.Context, key string, opts minio.GetObjectOptions) (io.ReadCloser, error) {
	if err := CheckKey(key); err != nil && !s.anyKey {
		return nil, err
	}
	ctx, cancel := s.call(ctx)
	obj, err := s.c.GetObject(ctx, s.bucket, key, opts)
	if err == nil {
		_, err = obj.Stat() // GetObject is lazy: find out now whether it exists
	}
	if err != nil {
		cancel()
		if notFound(err) {
			return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
		}
		if minio.ToErrorResponse(err).Code == "InvalidRange" {
			return nil, fmt.Errorf("get %s: the range is past the end of the object", key)
		}
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{obj, closerFunc(func() error { defer cancel(); return obj.Close() })}, nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// Delete removes the object at key; a missing object is not an error.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := CheckKey(key); err != nil {
		return err
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	if err := s.c.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{}); err != nil && !notFound(err) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// List returns the keys of the objects directly under the folder prefix
// (which ends in "/"), sorted.
func (s *S3) List(ctx context.Context, prefix string) ([]string, error) {
	if !strings.HasSuffix(prefix, "/") {
		return nil, fmt.Errorf("list %q: a prefix is a folder and ends in /", prefix)
	}
	ctx, cancel := s.call(ctx)
	defer cancel()
	var keys []string
	for o := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix}) {
		if o.Err != nil {
			return nil, fmt.Errorf("list %s: %w", prefix, o.Err)
		}
		if !strings.HasSuffix(o.Key, "/") {
			keys = append(keys, o.Key)
		}
	}
	return keys, nil
}

// Check reports whether the bucket can be reached, for readiness.
func (s *S3) Check(ctx context.Context) error {
	ctx, cancel := s.call(ctx)
	defer cancel()
	if _, err := s.c.BucketExists(ctx, s.bucket); err != nil {
		return fmt.Errorf("s3 bucket %s: %w", s.bucket, err)
	}
	return nil
}

// URL returns a presigned GET URL of the object at key, valid for expiry.
func (s *S3) URL(ctx context.Context, key string, expiry time.Duration) (string, error) {
	u, err := s.c.PresignedGetObject(ctx, s.bucket, key, expiry, url.Values{})
	if err != nil {
		return "", fmt.Errorf("presign %s: %w", key, err)
	}
	return u.String(), nil
}

// Expire makes the bucket delete objects under prefix days after they
// were written, with a lifecycle rule (S3 counts in whole days). Other
// rules of the bucket are kept.
func (s *S3) Expire(ctx context.Context, prefix string, days int) error {
	ctx, cancel := s.call(ctx)
	defer cancel()
	cfg, err := s.c.GetBucketLifecycle(ctx, s.bucket)
	if err != nil {
		if e := minio.ToErrorResponse(err); e.Code != "NoSuchLifecycleConfiguration" {
			return fmt.Errorf("lifecycle of %s: %w", s.bucket, err)
		}
		cfg = lifecycle.NewConfiguration()
	}
	id := "inferq-expire-" + strings.ReplaceAll(strings.TrimSuffix(prefix, "/"), "/", "-")
	rules := cfg.Rules[:0]
	for _, r := range cfg.Rules {
		if r.ID != id {
			rules = append(rules, r)
		}
	}
	cfg.Rules = append(rules, lifecycle.Rule{
		ID: id, Status: "Enabled",
		RuleFilter: lifecycle.Filter{Prefix: prefix},
		Expiration: lifecycle.Expiration{Days: lifecycle.ExpirationDays(days)},
	})
	if err := s.c.SetBucketLifecycle(ctx, s.bucket, cfg); err != nil {
		return fmt.Errorf("lifecycle of %s: %w", s.bucket, err)
	}
	return nil
}
