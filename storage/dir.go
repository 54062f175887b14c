// Package storage keeps job results and large payloads in object storage:
// a folder on disk (the embedded default) or an S3-compatible bucket.
// Stores are addressed by keys such as "results/01JD3X....json".
package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
)

// ErrNotFound is returned for a key that holds no object (a missing
// one, or in a folder store, a folder).
var ErrNotFound = errors.New("object not found")

// ErrInvalidKey is returned for a key that cannot name an object. Like
// ErrNotFound, waiting does not change it.
var ErrInvalidKey = errors.New("invalid object key")

var segmentRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// CheckKey reports whether key is a valid object key: '/'-separated
// segments of letters, digits, '.', '_' and '-', none starting with '.'.
// Keys become file paths, so nothing else is let through.
func CheckKey(key string) error {
	if key == "" || len(key) > 512 {
		return fmt.Errorf("%w %q: must be 1 to 512 characters", ErrInvalidKey, key)
	}
	for _, seg := range strings.Split(key, "/") {
		if !segmentRE.MatchString(seg) {
			return fmt.Errorf("%w %q: segment %q is not letters, digits, '.', '_' and '-'", ErrInvalidKey, key, seg)
		}
	}
	return nil
}

// Dir stores objects as files under a folder. Writes are atomic: a reader
// sees the old object or the new one, never a part. It is safe for
// concurrent use.
type Dir struct {
	root string
	dirs sync.Map // folders known to exist
}

// NewDir returns a store rooted at root, creating it if needed.
func NewDir(root string) (*Dir, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("create storage folder: %w", err)
	}
	return &Dir{root: root}, nil
}

func (d *Dir) path(key string) (string, error) {
	if err := CheckKey(key); err != nil {
		return "", err
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

// Put writes the object at key, replacing any object there.
func (d *Dir) Put(ctx context.Context, key string, r io.Reader) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if _, ok := d.dirs.Load(dir); !ok {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
		d.dirs.Store(dir, true)
	}
	f, err := os.CreateTemp(dir, ".put-*")
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// Get opens the object at key; the caller closes it.
func (d *Dir) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	p, err := d.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	// A folder opens like a file but reads as an error for ever; as S3
	// would, the store has no object there.
	if st, err := f.Stat(); err != nil || st.IsDir() {
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("get %s: %w", key, err)
		}
		return nil, fmt.Errorf("get %s: a folder: %w", key, ErrNotFound)
	}
	return f, nil
}

// GetRange opens length bytes of the object at key from offset; the
// caller closes it.
func (d *Dir) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if offset < 0 || length < 0 {
		return nil, fmt.Errorf("get %s: bad range %d+%d", key, offset, length)
	}
	rc, err := d.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	f := rc.(*os.File)
	st, err := f.Stat()
	if err == nil && offset+length > st.Size() {
		err = fmt.Errorf("range %d+%d is past the end of the object (%d bytes)", offset, length, st.Size())
	}
	if err == nil {
		_, err = f.Seek(offset, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(f, length), f}, nil
}

// Delete removes the object at key; a missing object is not an error.
func (d *Dir) Delete(ctx context.Context, key string) error {
	p, err := d.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// List returns the keys of the objects directly under the folder prefix
// (which ends in "/"), sorted. A missing folder lists nothing.
func (d *Dir) List(ctx context.Context, prefix string) ([]string, error) {
	if !strings.HasSuffix(prefix, "/") {
		return nil, fmt.Errorf("list %q: a prefix is a folder and ends in /", prefix)
	}
	p, err := d.path(strings.TrimSuffix(prefix, "/"))
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	var keys []string
	for _, e := range entries {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			keys = append(keys, prefix+e.Name())
		}
	}
	return keys, nil
}

// Check reports whether the store can be written, for readiness.
func (d *Dir) Check(ctx context.Context) error {
	st, err := os.Stat(d.root)
	if err != nil {
		return fmt.Errorf("storage folder: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("storage folder %s is not a folder", d.root)
	}
	return nil
}
