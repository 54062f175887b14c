package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/minio/minio-go/v7"
)

// Object is a stored object as a listing names it.
type Object struct {
	Key  string
	Size int64
}

// ListPage returns at most max objects whose keys begin with prefix and
// sort after after, in key order, through every folder below the prefix:
// one page of a listing that can be resumed from its last key. Fewer than
// max means the listing has ended.
func (d *Dir) ListPage(ctx context.Context, prefix, after string, max int) ([]Object, error) {
	// The walk starts at the folder holding the prefix, and skips the
	// folders that hold only keys at or before after.
	dir := prefix[:strings.LastIndex(prefix, "/")+1]
	root := d.root
	if dir != "" {
		p, err := d.path(strings.TrimSuffix(dir, "/"))
		if err != nil {
			return nil, err
		}
		root = p
	}
	var out []Object
	errFull := errors.New("page full")
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, _ := filepath.Rel(d.root, p)
		key := filepath.ToSlash(rel)
		if strings.HasPrefix(e.Name(), ".") && p != root {
			if e.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if e.IsDir() {
			if p == root {
				return nil
			}
			// A folder whose every key is at or before after, or none
			// of whose keys can begin with prefix, is skipped.
			folder := key + "/"
			if !strings.HasPrefix(folder, prefix) && !strings.HasPrefix(prefix, folder) {
				return fs.SkipDir
			}
			if after != "" && folder < after && !strings.HasPrefix(after, folder) {
				return fs.SkipDir
			}
			return nil
		}
		if !e.Type().IsRegular() || !strings.HasPrefix(key, prefix) || key <= after {
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return nil // gone meanwhile
		}
		out = append(out, Object{Key: key, Size: info.Size()})
		if len(out) == max {
			return errFull
		}
		return nil
	})
	if err != nil && !errors.Is(err, errFull) {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	return out, nil
}

// ListPage returns at most max objects whose keys begin with prefix and
// sort after after, in key order, at any depth below the prefix. Fewer
// than max means the listing has ended.
func (s *S3) ListPage(ctx context.Context, prefix, after string, max int) ([]Object, error) {
	ctx, cancel := s.call(ctx)
	defer cancel() // stops the listing's goroutine once the page is full
	var out []Object
	opts := minio.ListObjectsOptions{Prefix: prefix, StartAfter: after, Recursive: true, MaxKeys: min(max, 1000)}
	for o := range s.c.ListObjects(ctx, s.bucket, opts) {
		if o.Err != nil {
			if notFound(o.Err) {
				return nil, fmt.Errorf("list %s: %w", prefix, ErrNotFound)
			}
			return nil, fmt.Errorf("list %s: %w", prefix, o.Err)
		}
		if strings.HasSuffix(o.Key, "/") {
			continue
		}
		out = append(out, Object{Key: o.Key, Size: o.Size})
		if len(out) == max {
			break
		}
	}
	return out, nil
}

// Bucket returns a store of another bucket, through the same endpoint and
// credentials, for reading: its keys are taken as they are (an operator's
// bucket need not follow CheckKey's rules).
func (s *S3) Bucket(name string) *S3 {
	return &S3{c: s.c, bucket: name, timeout: s.timeout, anyKey: true}
}

// Name is the store's bucket.
func (s *S3) Name() string { return s.bucket }

// Open opens the object at key of a bucket given by Bucket; the caller
// closes it.
func (s *S3) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	return s.get(ctx, key, minio.GetObjectOptions{})
}
