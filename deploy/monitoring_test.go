package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// promtool is Prometheus's own rule checker, built by `make promtool`
// (make test does) into build/promtool.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "build", "promtool", "promtool"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("promtool is missing at %s: run `make promtool` (make test does; it builds it from the Go module proxy once)", p)
	}
	return p
}

func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command(promtool(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// The alerting rules are valid, and fire as their unit tests say: on a
// stalled queue, dead letters, failing storage, high latency and a full
// queue, and not otherwise.
func TestAlertRules(t *testing.T) {
	runPromtool(t, "check", "rules", "prometheus/alerts.yaml")
	runPromtool(t, "test", "rules", "prometheus/alerts_test.yaml")
}

// DashboardExprs returns the PromQL expressions of the Grafana dashboard,
// with its variables given values, as Grafana sends them.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("grafana/inferq.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/inferq.json: %v", err)
	}
	var out []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, strings.NewReplacer("$__rate_interval", "1m", "$model", ".*").Replace(tg.Expr))
		}
	}
	return out
}

// Every query of the dashboard is valid PromQL: they are checked as
// recording rules by promtool. (That every metric they use is served is
// checked against a running server in cmd/inferq.)
func TestDashboardQueries(t *testing.T) {
	exprs := dashboardExprs(t)
	if len(exprs) < 10 {
		t.Fatalf("%d queries in the dashboard", len(exprs))
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(e) // a JSON string is a YAML string
		fmt.Fprintf(&rules, "      - record: dashboard:query_%d\n        expr: %s\n", i, q)
	}
	file := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(file, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	runPromtool(t, "check", "rules", file)
}
