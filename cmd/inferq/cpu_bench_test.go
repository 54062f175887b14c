package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
)

// BenchmarkServerCPU: the server's own CPU per single-row job, measured as
// an operator would: `inferq serve` in a process of its own (embedded
// NATS, file storage), the bundled iris classifier, 20,000 JSON jobs
// submitted by 256 concurrent clients in this process, and the server's
// user and system time read from /proc before the first submit and after
// the last job finished. Side by side: max batch 32 and max batch 1, the
// end-to-end batching gain.
func BenchmarkServerCPU(b *testing.B) {
	iris := filepath.Join(testenv.Root(b), "testdata", "models", "iris", "1", "model.onnx")
	body := []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`)
	n := 20_000
	if v, err := strconv.Atoi(os.Getenv("INFERQ_BENCH_JOBS")); err == nil && v > 0 {
		n = v
	}
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = body
	}
	rate := map[int]float64{}
	for _, size := range []int{32, 1} {
		repo := testenv.ModelRepo(b, map[string]string{
			"iris/1/model.onnx": "@" + iris,
			"iris/config.yaml":  fmt.Sprintf("max_batch_size: %d\n", size) + os.Getenv("INFERQ_BENCH_CONFIG"),
		})
		args := []string{"serve", "--models", repo, "--data", b.TempDir(), "--log-level", "error"}
		profiles := os.Getenv("INFERQ_BENCH_PROFILE")
		pprofAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(b))
		if profiles != "" {
			args = append(args, "--pprof", pprofAddr)
		}
		p := startProcess(b, args...)
		s := &server{url: p.url}
		for range b.N {
			before := processCPU(b, p.cmd.Process.Pid)
			m := s.metricsB(b)
			done, batches := m["inferq_jobs_finished_total,model=iris,status=succeeded"], m["inferq_batch_size,model=iris,stat=count"]
			start := time.Now()
			profiled := make(chan struct{})
			go func() {
				defer close(profiled)
				if profiles != "" {
					saveProfile(b, pprofAddr, filepath.Join(profiles, fmt.Sprintf("cpu-batch%d.pprof", size)), max(3, n/3000))
				}
			}()
			submitAll(b, s.url, "iris", bodies, nil, 256)
			for s.metricsB(b)["inferq_jobs_finished_total,model=iris,status=succeeded"] < done+float64(n) {
				if time.Since(start) > 5*time.Minute {
					b.Fatalf("jobs did not finish in 5 minutes")
				}
				time.Sleep(20 * time.Millisecond)
			}
			elapsed := time.Since(start)
			<-profiled
			cpu := processCPU(b, p.cmd.Process.Pid) - before
			rate[size] = float64(n) / elapsed.Seconds()
			// Rows a batch: how much the batcher had to share out.
			perBatch := float64(n) / (s.metricsB(b)["inferq_batch_size,model=iris,stat=count"] - batches)
			b.Logf("max batch %d: %d jobs in %v, %.0f jobs/s, server CPU %.0f µs/job, %.1f jobs a batch", size, n, elapsed.Round(time.Millisecond), rate[size], float64(cpu.Microseconds())/float64(n), perBatch)
			b.ReportMetric(float64(cpu.Microseconds())/float64(n), fmt.Sprintf("cpu_us/job_batch%d", size))
		}
		b.ReportMetric(rate[size], fmt.Sprintf("jobs/s_batch%d", size))
	}
	b.ReportMetric(rate[32]/rate[1], "gain")
}

// processCPU is the user and system time a process has used, from
// /proc/PID/stat.
func processCPU(tb testing.TB, pid int) time.Duration {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// The command name may hold spaces; the fields after it are fixed.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / hz
}

// saveProfile saves a CPU profile of the server whose --pprof listens on
// addr, taken over the next seconds, into file.
func saveProfile(tb testing.TB, addr, file string, seconds int) {
	res, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, seconds))
	if err != nil {
		tb.Error(err)
		return
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err == nil {
		err = os.WriteFile(file, b, 0o644)
	}
	if err != nil {
		tb.Error(err)
	}
}
