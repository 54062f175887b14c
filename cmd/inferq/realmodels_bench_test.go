package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
)

// BenchmarkRealModels: PaddleOCR's three models end to end against ONNX
// Runtime alone on the same machine, as `inferq perf` measures them (it
// runs here, in the benchmark's process, as the load client): `inferq
// serve` in a process of its own, one row a request, V2 binary requests
// and outputs, synchronous infer (and async jobs for the classifier); ONNX
// Runtime alone at its best batch size in this process. Reported as
// ratios, <model>_<mode>_of_ort, with the server's CPU per request beside
// them (<model>_<mode>_server_cpu_us/req). INFERQ_BENCH_DURATION sets each step's
// length (default 8s).
func BenchmarkRealModels(b *testing.B) {
	step := 8 * time.Second
	if d, err := time.ParseDuration(os.Getenv("INFERQ_BENCH_DURATION")); err == nil && d > 0 {
		step = d
	}
	models := []struct {
		name, file, config, dims string
		clients                  int
		modes                    []string
	}{
		{"cls", "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", "max_batch_size: 32\ninstances: 2\n", "48,192", 32, []string{"infer", "jobs"}},
		{"det", "ppocr/ch_PP-OCRv4_det_infer.onnx", "max_batch_size: 8\ninstances: 1\n", "640,640", 8, []string{"infer"}},
		{"rec", "ppocr/ch_PP-OCRv4_rec_infer.onnx", "max_batch_size: 32\ninstances: 2\n", "320", 32, []string{"infer"}},
	}
	files := map[string]string{}
	for _, m := range models {
		files[m.name+"/1/model.onnx"] = "@" + testenv.ThirdParty(b, m.file)
		files[m.name+"/config.yaml"] = m.config
	}
	p := startProcess(b, "serve", "--models", testenv.ModelRepo(b, files), "--data", b.TempDir(), "--log-level", "error")
	for range b.N {
		for _, m := range models {
			var direct *float64
			for _, mode := range m.modes {
				args := []string{"--url", p.url, "--model", m.name, "--mode", mode, "--binary", "--dims", m.dims,
					"--concurrency", fmt.Sprint(m.clients), "--duration", step.String(), "--format", "json"}
				if direct == nil {
					args = append(args, "--onnx", testenv.ThirdParty(b, m.file))
				}
				var out, errOut bytes.Buffer
				if err := perfCmd(context.Background(), args, &out, &errOut); err != nil {
					b.Fatalf("perf %s %s: %v\n%s", m.name, mode, err, errOut.String())
				}
				var rep perfReport
				if err := json.Unmarshal(out.Bytes(), &rep); err != nil || len(rep.Steps) != 1 {
					b.Fatalf("perf %s %s: %v: %s", m.name, mode, err, out.String())
				}
				if direct == nil {
					direct = rep.Direct
				}
				st := rep.Steps[0]
				if st.Errors > 0 || direct == nil || *direct <= 0 {
					b.Fatalf("perf %s %s: %+v, ONNX Runtime alone %v", m.name, mode, st, direct)
				}
				ratio := st.RowsPerSec / *direct
				b.Logf("%s %s: %.1f requests/s (p50 %.0f ms, p99 %.0f ms), ONNX Runtime alone %.1f rows/s: %.2f",
					m.name, mode, st.PerSecond, st.P50ms, st.P99ms, *direct, ratio)
				b.ReportMetric(ratio, fmt.Sprintf("%s_%s_of_ort", m.name, mode))
				if st.ServerCPU != nil {
					b.ReportMetric(*st.ServerCPU, fmt.Sprintf("%s_%s_server_cpu_us/req", m.name, mode))
				}
			}
		}
	}
}
