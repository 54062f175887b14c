package client

import (
	"os/exec"
	"strings"
	"testing"
)

// TestClientNeedsNoServer: a program that only calls the HTTP API does
// not build NATS or Prometheus in with this package.
func TestClientNeedsNoServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list is not available here: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/nats-io/", "github.com/prometheus/", "github.com/inferq/inferq/jobs"} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("package client depends on %s", dep)
			}
		}
	}
}
