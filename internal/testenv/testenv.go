// Package testenv starts the real components inferq's tests run against:
// ONNX Runtime from the project's install, and an embedded NATS JetStream
// server on a free port.
package testenv

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/inferq/inferq/internal/embednats"
	"github.com/inferq/inferq/onnx"
)

// Root returns the module's root directory.
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testenv: no go.mod above the working directory")
		}
		dir = parent
	}
}

// ORTLibrary returns the ONNX Runtime library: ONNXRUNTIME_LIB, else the
// one `make build` installs. A test without it fails with the reason, since
// every test of a model needs the real runtime.
func ORTLibrary(t testing.TB) string {
	t.Helper()
	lib, err := onnx.FindLibrary(os.Getenv("ONNXRUNTIME_LIB"),
		[]string{filepath.Join(Root(t), "build", "onnxruntime", onnx.LibraryName)})
	if err != nil {
		t.Fatalf("%v\n(run `make onnxruntime` or `make test`)", err)
	}
	return lib
}

// Runtime opens ONNX Runtime for the test and closes it after.
func Runtime(t testing.TB) *onnx.Runtime {
	t.Helper()
	rt, err := onnx.Open(ORTLibrary(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close() })
	return rt
}

// JetStream starts an embedded NATS server with JetStream in a temporary
// folder, on a free loopback port, stopped when the test ends.
func JetStream(t testing.TB) *embednats.Server {
	t.Helper()
	return JetStreamAt(t, t.TempDir())
}

// JetStreamAt starts an embedded server storing under dir, so that a test
// can restart it on the same data.
func JetStreamAt(t testing.TB, dir string) *embednats.Server {
	t.Helper()
	s, err := embednats.Start(embednats.Options{StoreDir: dir, Port: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// RestartableJetStream returns a function that starts an embedded NATS
// server, on the same loopback port and store each time, so that a test
// can stop it (Shutdown) and start it again, and clients reconnect.
func RestartableJetStream(t testing.TB) func() *embednats.Server {
	store, port := t.TempDir(), FreePort(t)
	return func() *embednats.Server {
		t.Helper()
		ns, err := embednats.Start(embednats.Options{StoreDir: store, Host: "127.0.0.1", Port: port})
		if err != nil {
			t.Fatal(err)
		}
		return ns
	}
}

// FreePort returns a loopback TCP port that is free now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreePorts returns n distinct loopback ports free when it returns: each
// is held until all are picked, so that none is handed out twice (FreePort
// called n times may give a port it gave before, once closed).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// Connect opens a client connection to s, with opts, closed when the
// test ends.
func Connect(t testing.TB, s *embednats.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// ThirdParty returns the path of a model file under testdata/thirdparty
// (committed) or build/thirdparty (fetched by `make testmodels`).
func ThirdParty(t testing.TB, rel string) string {
	t.Helper()
	root := Root(t)
	for _, dir := range []string{"testdata/thirdparty", "build/thirdparty"} {
		p := filepath.Join(root, dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("third-party model %s is missing: run `make testmodels` (make test does)", rel)
	return ""
}

// LocaleDir returns the folder where `make testmodels` compiled the
// en_US.UTF-8 locale, for LOCPATH, or "" where it could not (no localedef,
// or no locale sources on the machine).
func LocaleDir(t testing.TB) string {
	dir := filepath.Join(Root(t), "build", "locale")
	if _, err := os.Stat(filepath.Join(dir, "en_US.UTF-8", "LC_CTYPE")); err != nil {
		return ""
	}
	return dir
}

// ModelRepo lays out a model repository in a temporary folder: files maps
// "{model}/{version}/model.onnx" (or "{model}/config.yaml") to the content
// to write, or to an existing file's path prefixed with "@" to link.
func ModelRepo(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for rel, content := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		if len(content) > 0 && content[0] == '@' {
			err = os.Symlink(content[1:], p)
		} else {
			err = os.WriteFile(p, []byte(content), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Eventually polls cond every 20ms until it holds, failing the test with
// what once within has passed.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Poll(within, cond) {
		t.Fatalf("not within %v: %s", within, what)
	}
}

// Poll polls cond every 20ms until it holds or within has passed, and
// reports whether it held: Eventually for callers that fail their own way
// (with a process's log, say) or go on either way.
func Poll(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
