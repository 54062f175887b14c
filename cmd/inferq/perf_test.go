package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"strings"
	"testing"
)

// inferq perf measures a running server step by step, in JSON requests
// and binary ones, synchronous and as jobs, beside ONNX Runtime alone on
// the same model, and writes a table, CSV or JSON.
func TestPerf(t *testing.T) {
	s := startServe(t, irisRepo(t, "iris"))
	run := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if err := perfCmd(context.Background(), append([]string{"--url", s.url, "--model", "iris", "--duration", "300ms"}, args...), &out, &errOut); err != nil {
			t.Fatalf("perf %v: %v\n%s", args, err, errOut.String())
		}
		return out.String()
	}
	var rep perfReport
	if err := json.Unmarshal([]byte(run("--concurrency", "1,4", "--binary", "--rows", "2", "--onnx", irisPath(t), "--format", "json")), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Steps) != 2 || rep.Direct == nil || *rep.Direct <= 0 || rep.Rows != 2 || !rep.Binary {
		t.Fatalf("report %+v", rep)
	}
	for _, st := range rep.Steps {
		if st.Requests == 0 || st.Errors != 0 || st.PerSecond <= 0 || st.RowsPerSec != 2*st.PerSecond || st.P50ms <= 0 || st.P99ms < st.P50ms || st.OfDirect <= 0 {
			t.Errorf("step %+v", st)
		}
		// The server's own figures, from its /metrics (in this test the
		// server shares the process with the clients).
		if st.ServerCPU == nil || *st.ServerCPU <= 0 || st.ServerRSS == nil || *st.ServerRSS < 1 {
			t.Errorf("step %+v: no server CPU or memory", st)
		}
	}

	rows, err := csv.NewReader(strings.NewReader(run("--concurrency", "2", "--mode", "jobs", "--format", "csv"))).ReadAll()
	if err != nil || len(rows) != 2 || rows[0][0] != "concurrency" || rows[1][0] != "2" || rows[1][2] != "0" || rows[0][9] != "server_cpu_us_per_request" || rows[1][9] == "" {
		t.Fatalf("csv %v %v", rows, err)
	}
	if table := run("--concurrency", "1"); !strings.Contains(table, "requests/s") || !strings.Contains(table, "JSON requests") {
		t.Errorf("table:\n%s", table)
	}

	// Bad flags are errors that say so.
	var errOut bytes.Buffer
	if err := perfCmd(context.Background(), []string{"--url", s.url, "--model", "iris", "--mode", "fast"}, &bytes.Buffer{}, &errOut); err == nil || !strings.Contains(err.Error(), "--mode") {
		t.Errorf("--mode fast: %v", err)
	}
}
