package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/inferq/inferq/consumer"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/storage"
)

// openStore opens the object store the flags name: S3 (or MinIO) when
// --s3-endpoint is set, else a folder. With S3 and the job layout, results
// can be presigned for clients.
func openStore(ctx context.Context, f *serveFlags, log *slog.Logger) (objectStore, func(context.Context, string) (string, error), error) {
	switch f.resultLayout {
	case consumer.LayoutBatch, consumer.LayoutJob:
	default:
		return nil, nil, fmt.Errorf("--result-layout %q: want batch or job", f.resultLayout)
	}
	if f.s3.Endpoint == "" {
		dir := f.storage
		if dir == "" {
			dir = filepath.Join(f.data, "objects")
		}
		store, err := storage.NewDir(dir)
		return store, nil, err
	}
	s3, err := storage.NewS3(ctx, f.s3)
	if err != nil {
		return nil, nil, err
	}
	log.Info("results in S3", "store", f.s3.String(), "layout", f.resultLayout)
	presign := func(ctx context.Context, key string) (string, error) { return s3.URL(ctx, key, f.resultURLExpiry) }
	return s3, presign, nil
}

// openSources is what batches over stored objects may read: the store's
// inputs folders, and the S3 sources --batch-sources allows (through the
// store's endpoint and credentials).
func openSources(store objectStore, allowed string) (*storage.Sources, error) {
	list, err := storage.ParseSources(allowed)
	if err != nil {
		return nil, err
	}
	src := &storage.Sources{Allowed: list}
	src.Store, _ = store.(storage.Bucket)
	src.S3, _ = store.(*storage.S3)
	if len(list) > 0 && src.S3 == nil {
		return nil, errors.New("--batch-sources names S3 buckets, read with the store's endpoint and credentials: set --s3-endpoint")
	}
	return src, nil
}

// objectStore is what inferq keeps in object storage: results, batch
// indexes and large payloads.
type objectStore interface {
	Put(ctx context.Context, key string, r io.Reader) error
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, prefix string) ([]string, error)
	Check(ctx context.Context) error
}

// expireInStore sets a lifecycle rule per model with result_retention, in
// stores that have them (S3: whole days, rounded up). The workers' sweeps
// still run: they work everywhere, and to the hour.
func expireInStore(ctx context.Context, store objectStore, repo *model.Repository, log *slog.Logger) {
	lc, ok := store.(interface {
		Expire(ctx context.Context, prefix string, days int) error
	})
	if !ok {
		return
	}
	for _, fam := range repo.Families() {
		m := fam.Default()
		if m == nil || m.Config.ResultRetention <= 0 {
			continue
		}
		days := int((m.Config.ResultRetention + 24*time.Hour - 1) / (24 * time.Hour))
		for _, prefix := range []string{jobs.ResultPrefix(fam.Name), consumer.CapturePrefix(fam.Name)} {
			if err := lc.Expire(ctx, prefix, days); err != nil {
				log.Warn("could not set the bucket's lifecycle rule; the workers' sweep still expires results", "model", fam.Name, "prefix", prefix, "err", err)
			}
		}
	}
}
