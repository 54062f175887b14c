package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
)

// Every metric the Grafana dashboard and the alerting rules of deploy/
// use is one a running inferq serves, on the API's /metrics or a
// worker's --metrics, once a job has run (a labelled metric appears with
// its first value; the failure counters that alerts watch start at 0).
func TestDashboardMetricsServed(t *testing.T) {
	root := testenv.Root(t)
	var used []string
	name := regexp.MustCompile(`inferq_[a-z_]+`)
	for _, f := range []string{"deploy/grafana/inferq.json", "deploy/prometheus/alerts.yaml"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range name.FindAllString(string(b), -1) {
			if !slices.Contains(used, n) {
				used = append(used, n)
			}
		}
	}
	if len(used) < 10 {
		t.Fatalf("only %v found in the dashboard and rules", used)
	}

	receiver := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer receiver.Close()
	// iris in two versions, the first a shadow of the second: for the
	// shadow's agreement.
	repo := testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t), "iris/2/model.onnx": "@" + irisPath(t), "iris/config.yaml": "shadow: [\"1\"]\n"})
	s := startServe(t, repo, "--min-replicas", "1", "--max-replicas", "2", "--scale-interval", "100ms", "--webhook-allow", "127.0.0.1", "--stats-interval", "100ms")
	id := acceptedID(t, do(t, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob), "Inferq-Webhook", receiver.URL))
	s.await(t, id, 30*time.Second)
	do(t, "POST", s.url+"/v1/models/iris/jobs", []byte(`{"inputs":[]}`)) // refused: a rejection counted
	// A baseline, for the drift the dashboard and the alerts watch.
	eventually(t, 20*time.Second, "a baseline taken", func() bool {
		return do(t, "POST", s.url+"/v1/models/iris/monitoring/baseline", []byte(`{"since":"1h"}`)).code == 200
	})
	// The shadow's agreement, before /metrics is first read (it reads the
	// monitoring at most once a minute).
	eventually(t, 20*time.Second, "the shadow's agreement", func() bool {
		var mon struct{ Shadow []any }
		do(t, "GET", s.url+"/v1/models/iris/monitoring", nil).json(t, &mon)
		return len(mon.Shadow) > 0
	})
	var served map[string]float64
	eventually(t, 20*time.Second, "the webhook is delivered and the scaler has decided", func() bool {
		served = s.metrics(t)
		return served["inferq_webhook_deliveries_total,outcome=delivered"] == 1
	})
	have := func(n string) bool {
		for k := range served {
			base, _, _ := strings.Cut(k, ",")
			base, _, _ = strings.Cut(base, "{")
			if base == n || base == strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum") {
				return true
			}
		}
		return false
	}
	for _, n := range used {
		if !have(n) {
			t.Errorf("%s is used by the dashboard or the alerts, but not served", n)
		}
	}
}
