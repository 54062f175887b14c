package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/inferq/inferq/internal/testenv"
)

// store is what every backend provides; the contract below runs against
// each of them.
type store interface {
	Put(ctx context.Context, key string, r io.Reader) error
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, prefix string) ([]string, error)
}

func testContract(t *testing.T, s store) {
	ctx := context.Background()
	read := func(key string) (string, error) {
		rc, err := s.Get(ctx, key)
		if err != nil {
			return "", err
		}
		defer rc.Close()
		b, err := io.ReadAll(rc)
		return string(b), err
	}
	if _, err := read("results/missing.json"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing object: %v, want ErrNotFound", err)
	}
	if err := s.Put(ctx, "results/a.json", strings.NewReader("first")); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "results/a.json", strings.NewReader("second")); err != nil {
		t.Fatal(err)
	}
	if got, err := read("results/a.json"); err != nil || got != "second" {
		t.Fatalf("read back %q, %v; want the overwrite", got, err)
	}
	// Keys that name no object are errors that waiting does not change:
	// a folder ("results", which holds a.json), a key under an object, and
	// a key no object can have. A worker fails a job naming one rather
	// than wait for it (a folder read as a passing fault jammed a queue).
	for _, key := range []string{"results", "results/a.json/b", "results/../x"} {
		_, err := read(key)
		if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Get(%q) = %v, want ErrNotFound or ErrInvalidKey", key, err)
		}
	}
	ranges := []struct {
		off, n int64
		want   string
	}{{0, 6, "second"}, {1, 3, "eco"}, {5, 1, "d"}, {6, 0, ""}}
	for _, r := range ranges {
		rc, err := s.GetRange(ctx, "results/a.json", r.off, r.n)
		if err != nil {
			t.Fatalf("range %d+%d: %v", r.off, r.n, err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || string(b) != r.want {
			t.Errorf("range %d+%d = %q, %v; want %q", r.off, r.n, b, err, r.want)
		}
	}
	if rc, err := s.GetRange(ctx, "results/a.json", 4, 10); err == nil {
		rc.Close()
		t.Error("a range past the end was served")
	}
	if _, err := s.GetRange(ctx, "results/missing.json", 0, 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("range of a missing object: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "results/a.json"); err != nil {
		t.Fatal(err)
	}
	if _, err := read("results/a.json"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted object: %v", err)
	}
	if err := s.Delete(ctx, "results/a.json"); err != nil {
		t.Fatalf("deleting twice: %v", err)
	}
	for _, k := range []string{"results/m/b.jsonl", "results/m/a.jsonl", "results/n/c.jsonl", "results/top.json"} {
		if err := s.Put(ctx, k, strings.NewReader(k)); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.List(ctx, "results/m/"); err != nil || strings.Join(got, ",") != "results/m/a.jsonl,results/m/b.jsonl" {
		t.Fatalf("list results/m/ = %v, %v", got, err)
	}
	if got, err := s.List(ctx, "results/none/"); err != nil || len(got) != 0 {
		t.Fatalf("list of an empty folder = %v, %v", got, err)
	}
	for _, bad := range []string{"", "../etc/passwd", "a/../b", "/abs", "a//b", ".hidden", "a b", "results/%2e%2e"} {
		if err := s.Put(ctx, bad, strings.NewReader("x")); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
}

func TestDirContract(t *testing.T) {
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	testContract(t, d)
}

func TestS3Contract(t *testing.T) {
	m := testenv.StartMinIO(t)
	s, err := NewS3(context.Background(), S3Options{Endpoint: m.Endpoint, Bucket: "contract", AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	testContract(t, s)
	if err := s.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Expire(context.Background(), "results/m/", 2); err != nil {
		t.Fatalf("lifecycle rule: %v", err)
	}
	m.Stop()
	if err := s.Check(context.Background()); err == nil {
		t.Fatal("a stopped MinIO checks healthy")
	}
}

func TestS3RefusesMissingBucket(t *testing.T) {
	m := testenv.StartMinIO(t)
	_, err := NewS3(context.Background(), S3Options{Endpoint: m.Endpoint, Bucket: "absent", AccessKey: m.AccessKey, SecretKey: m.SecretKey})
	if err == nil || !strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), m.SecretKey) {
		t.Fatalf("got %v; want a missing-bucket error that does not show the secret", err)
	}
}

// Processes started at once against a fresh MinIO (as Kubernetes starts
// the API and the workers) race to create the bucket; every one comes up.
// The losers used to exit: "Your previous request to create the named
// bucket succeeded and you already own it."
func TestS3BucketCreationRace(t *testing.T) {
	m := testenv.StartMinIO(t)
	for round := range 5 {
		bucket := fmt.Sprintf("race-%d", round)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				_, err := NewS3(context.Background(), S3Options{Endpoint: m.Endpoint, Bucket: bucket, AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true})
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}
