package testenv

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// MinIO is a real MinIO server started for a test on a free loopback port
// with a temporary data folder. Stop and Start simulate an outage.
type MinIO struct {
	Endpoint             string // host:port
	AccessKey, SecretKey string

	t    testing.TB
	bin  string
	dir  string
	port int
	cmd  *exec.Cmd
}

// MinIOBinary returns the MinIO server binary: MINIO_BIN, else the one
// `make minio` builds into build/minio.
func MinIOBinary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("MINIO_BIN")
	if bin == "" {
		bin = filepath.Join(Root(t), "build", "minio", "minio")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("MinIO server not found at %s: run `make minio` (make test does; it builds MinIO from the Go module proxy once) or set MINIO_BIN", bin)
	}
	return bin
}

// StartMinIO starts MinIO and stops it when the test ends.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	m := &MinIO{
		Endpoint: fmt.Sprintf("127.0.0.1:%d", port), AccessKey: "inferq-test", SecretKey: "inferq-test-secret",
		t: t, bin: MinIOBinary(t), dir: t.TempDir(), port: port,
	}
	m.Start()
	t.Cleanup(m.Stop)
	return m
}

// Start starts the server (again) on the same port and data, and waits
// until it answers.
func (m *MinIO) Start() {
	m.t.Helper()
	cmd := exec.Command(m.bin, "server", m.dir, "--address", m.Endpoint, "--console-address", "127.0.0.1:0", "--quiet")
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+m.AccessKey, "MINIO_ROOT_PASSWORD="+m.SecretKey, "MINIO_BROWSER=off")
	log, err := os.Create(filepath.Join(m.t.TempDir(), "minio.log"))
	if err != nil {
		m.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		m.t.Fatalf("start MinIO: %v", err)
	}
	m.cmd = cmd
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		// Ready, and past initialising its object layer: an unsigned
		// request is refused (403) rather than put off (503 "Server not
		// initialized yet"), which health/ready alone does not promise.
		if status(m.Endpoint, "/minio/health/ready") == http.StatusOK && status(m.Endpoint, "/") == http.StatusForbidden {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, _ := os.ReadFile(log.Name())
	m.t.Fatalf("MinIO did not become ready within 60s:\n%s", out)
}

// Stop stops the server, if it runs.
func (m *MinIO) Stop() {
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Kill()
	m.cmd.Wait()
	m.cmd = nil
}

// status is the status code of a GET of path, 0 when there is none.
func status(endpoint, path string) int {
	res, err := http.Get("http://" + endpoint + path)
	if err != nil {
		return 0
	}
	res.Body.Close()
	return res.StatusCode
}
