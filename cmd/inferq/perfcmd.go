package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/tensor"
)

const perfUsage = `usage: inferq perf --model M [--concurrency 1,4,16,64] [--duration 10s] [--mode infer|jobs]
                   [--binary] [--rows N] [--dims D1,D2...] [--input REQUEST.json] [--onnx MODEL.onnx]
                   [--format table|csv|json]

Measures a running inferq on one model, as Triton's perf_analyzer does:
for each concurrency, that many clients send requests back to back for
--duration, and it reports requests per second and latency percentiles.
--mode infer calls POST /v2/models/M/infer (synchronous); jobs submits
async jobs and waits for each to finish. Requests are generated from the
model's metadata (--rows rows, dynamic dimensions after the first from
--dims) or read from --input (a V2 JSON request), sent as JSON or, with
--binary, as V2 binary tensors both ways (binary_data_output). With --onnx, ONNX Runtime runs the same
request in this process at several batch sizes, and its best rows per
second is reported beside each step as the ratio to read. Each step also
reports the server's CPU per request and its resident memory, from its
/metrics (process_cpu_seconds_total, process_resident_memory_bytes): the
whole of ` + "`inferq serve`" + `; with separate API and worker processes, the API's
alone.
`

// perfStep is one concurrency's result.
type perfStep struct {
	Concurrency int     `json:"concurrency"`
	Requests    int64   `json:"requests"`
	Errors      int64   `json:"errors"`
	PerSecond   float64 `json:"requests_per_second"`
	RowsPerSec  float64 `json:"rows_per_second"`
	P50ms       float64 `json:"p50_ms"`
	P90ms       float64 `json:"p90_ms"`
	P99ms       float64 `json:"p99_ms"`
	// OfDirect is RowsPerSec as a share of ONNX Runtime's own best rate
	// in process, with --onnx.
	OfDirect float64 `json:"of_onnxruntime,omitempty"`
	// ServerCPU is the server process's CPU time over the step per
	// request, in microseconds, and ServerRSS its resident memory at the
	// end of the step, in MiB, from its /metrics; nil when it has none.
	ServerCPU *float64 `json:"server_cpu_us_per_request,omitempty"`
	ServerRSS *float64 `json:"server_rss_mib,omitempty"`
}

type perfReport struct {
	Model  string     `json:"model"`
	Mode   string     `json:"mode"`
	Binary bool       `json:"binary"`
	Rows   int        `json:"rows"`
	Direct *float64   `json:"onnxruntime_rows_per_second,omitempty"`
	Batch  int        `json:"onnxruntime_best_batch,omitempty"`
	Steps  []perfStep `json:"steps"`
}

// perfCmd: inferq perf.
func perfCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inferq perf", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	model := fs.String("model", "", "the model (required)")
	conc := fs.String("concurrency", "1,4,16,64", "comma-separated client counts, one step each")
	dur := fs.Duration("duration", 10*time.Second, "how long each step runs")
	mode := fs.String("mode", "infer", "infer: POST /v2/models/M/infer; jobs: async jobs, each waited for")
	bin := fs.Bool("binary", false, "send V2 binary tensors instead of JSON, and ask for binary outputs (binary_data_output)")
	rows := fs.Int("rows", 1, "rows per request, for generated inputs")
	dims := fs.String("dims", "", "comma-separated sizes of the dynamic dimensions after the first, in input order")
	input := fs.String("input", "", "a V2 JSON request to send instead of generated inputs")
	onnxPath := fs.String("onnx", "", "the model's ONNX file: measure ONNX Runtime alone on it too, in this process")
	format := fs.String("format", "table", "table, csv or json")
	fs.Usage = func() { fmt.Fprint(stderr, perfUsage+"\n"); fs.PrintDefaults() }
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *model == "" || fs.NArg() > 0 {
		return errors.New("--model is required, and nothing else")
	}
	if *mode != "infer" && *mode != "jobs" {
		return fmt.Errorf("--mode %q: want infer or jobs", *mode)
	}
	if *format != "table" && *format != "csv" && *format != "json" {
		return fmt.Errorf("--format %q: want table, csv or json", *format)
	}
	var steps []int
	for _, c := range splitList(*conc) {
		n, err := strconv.Atoi(c)
		if err != nil || n < 1 || n > 4096 {
			return fmt.Errorf("--concurrency %q: want whole numbers from 1 to 4096", *conc)
		}
		steps = append(steps, n)
	}
	base := strings.TrimRight(cf.url, "/")
	hc := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 4096}}
	call := func(req *http.Request) (*http.Response, error) {
		if cf.token != "" {
			req.Header.Set("Authorization", "Bearer "+cf.token)
		}
		return hc.Do(req)
	}

	req, err := perfRequest(ctx, call, base, *model, *input, *rows, *dims)
	if err != nil {
		return err
	}
	body, hdrLen := []byte(nil), 0
	if *bin {
		// Binary both ways: the answers' outputs too.
		if len(req.Parameters) == 0 {
			req.Parameters = json.RawMessage(`{"binary_data_output":true}`)
		}
		if body, hdrLen, err = req.MarshalBinary(); err != nil {
			return err
		}
	} else {
		body = req.AppendJSON(nil)
	}
	reqRows := 1
	if len(req.Inputs) > 0 && len(req.Inputs[0].Shape) > 0 {
		reqRows = int(req.Inputs[0].Shape[0])
	}
	rep := perfReport{Model: *model, Mode: *mode, Binary: *bin, Rows: reqRows}
	if *onnxPath != "" {
		rate, batch, err := perfDirect(*onnxPath, req)
		if err != nil {
			return fmt.Errorf("--onnx: %w", err)
		}
		rep.Direct, rep.Batch = &rate, batch
	}
	m := url.PathEscape(*model)
	one := func() error {
		path := "/v2/models/" + m + "/infer"
		if *mode == "jobs" {
			path = "/v1/models/" + m + "/jobs"
		}
		r, _ := http.NewRequestWithContext(ctx, "POST", base+path, bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		if *bin {
			r.Header.Set("Content-Type", "application/octet-stream")
			r.Header.Set("Inference-Header-Content-Length", strconv.Itoa(hdrLen))
		}
		res, err := call(r)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if *mode == "infer" {
			if res.StatusCode != 200 {
				return fmt.Errorf("%s: %s", res.Status, b)
			}
			return nil
		}
		if res.StatusCode != http.StatusAccepted {
			return fmt.Errorf("%s: %s", res.Status, b)
		}
		var rec struct{ ID, Status string }
		json.Unmarshal(b, &rec)
		for {
			g, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/jobs/"+rec.ID+"?wait=60s", nil)
			res, err := call(g)
			if err != nil {
				return err
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			json.Unmarshal(b, &rec)
			switch rec.Status {
			case "succeeded":
				return nil
			case "failed", "cancelled", "expired":
				return fmt.Errorf("job %s %s", rec.ID, rec.Status)
			}
		}
	}
	// A step's closing reading opens the next.
	cpu0, _, before := serverProcess(ctx, call, base)
	for _, c := range steps {
		st := runPerfStep(ctx, c, *dur, one)
		cpu1, rss, after := serverProcess(ctx, call, base)
		if before == nil && after == nil && st.Requests > 0 {
			perRequest, mib := (cpu1-cpu0)*1e6/float64(st.Requests), rss/(1<<20)
			st.ServerCPU, st.ServerRSS = &perRequest, &mib
		}
		cpu0, before = cpu1, after
		st.RowsPerSec = st.PerSecond * float64(reqRows)
		if rep.Direct != nil && *rep.Direct > 0 {
			st.OfDirect = st.RowsPerSec / *rep.Direct
		}
		rep.Steps = append(rep.Steps, st)
		if ctx.Err() != nil {
			break
		}
	}
	return writePerf(stdout, *format, rep)
}

// serverProcess reads the server process's CPU seconds and resident bytes
// from its /metrics.
func serverProcess(ctx context.Context, call func(*http.Request) (*http.Response, error), base string) (cpu, rss float64, err error) {
	r, _ := http.NewRequestWithContext(ctx, "GET", base+"/metrics", nil)
	res, err := call(r)
	if err != nil {
		return 0, 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("GET /metrics: %s", res.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		return 0, 0, fmt.Errorf("GET /metrics: %w", err)
	}
	c, m := fams["process_cpu_seconds_total"], fams["process_resident_memory_bytes"]
	if c == nil || m == nil || len(c.Metric) == 0 || len(m.Metric) == 0 {
		return 0, 0, errors.New("the server's /metrics has no process figures")
	}
	return c.Metric[0].GetCounter().GetValue(), m.Metric[0].GetGauge().GetValue(), nil
}

// runPerfStep runs c clients of one for d and measures them.
func runPerfStep(ctx context.Context, c int, d time.Duration, one func() error) perfStep {
	var wg sync.WaitGroup
	var n, errs atomic.Int64
	lats := make([][]time.Duration, c)
	start := time.Now()
	for i := range c {
		wg.Go(func() {
			for time.Since(start) < d && ctx.Err() == nil {
				t0 := time.Now()
				if err := one(); err != nil {
					errs.Add(1)
					continue
				}
				lats[i] = append(lats[i], time.Since(t0))
				n.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lats...)
	slices.Sort(all)
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
	}
	return perfStep{Concurrency: c, Requests: n.Load(), Errors: errs.Load(), PerSecond: float64(n.Load()) / elapsed.Seconds(),
		P50ms: pct(0.5), P90ms: pct(0.9), P99ms: pct(0.99)}
}

// perfRequest is the request to send: read from file, or made from the
// model's metadata with random values.
func perfRequest(ctx context.Context, call func(*http.Request) (*http.Response, error), base, model, file string, rows int, dims string) (*tensor.Request, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		return tensor.DecodeRequest(b, tensor.Limits{})
	}
	r, _ := http.NewRequestWithContext(ctx, "GET", base+"/v2/models/"+url.PathEscape(model), nil)
	res, err := call(r)
	if err != nil {
		return nil, fmt.Errorf("read the model's metadata: %w", err)
	}
	defer res.Body.Close()
	var meta struct {
		Inputs []struct {
			Name, Datatype string
			Shape          []int64
		}
		Error string
	}
	if err := json.NewDecoder(res.Body).Decode(&meta); err != nil || res.StatusCode != 200 {
		return nil, fmt.Errorf("read the model's metadata: %s %s", res.Status, meta.Error)
	}
	var sizes []int64
	for _, d := range splitList(dims) {
		n, err := strconv.ParseInt(d, 10, 64)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("--dims %q: want positive sizes", dims)
		}
		sizes = append(sizes, n)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	req := &tensor.Request{}
	k := 0
	for _, in := range meta.Inputs {
		dt, err := tensor.ParseDatatype(in.Datatype)
		if err != nil {
			return nil, fmt.Errorf("input %s: %w", in.Name, err)
		}
		shape := slices.Clone(in.Shape)
		for i, d := range shape {
			switch {
			case i == 0 && d < 0:
				shape[i] = int64(rows)
			case d < 0:
				if k >= len(sizes) {
					return nil, fmt.Errorf("input %s has dynamic dimensions after the first: give their sizes with --dims", in.Name)
				}
				shape[i] = sizes[k]
				k++
			}
		}
		t := tensor.Tensor{Name: in.Name, Datatype: dt, Shape: shape}
		for range tensor.NumElements(shape) {
			switch dt {
			case tensor.FP32:
				t.Data = binary.LittleEndian.AppendUint32(t.Data, math.Float32bits(rng.Float32()))
			case tensor.FP64:
				t.Data = binary.LittleEndian.AppendUint64(t.Data, math.Float64bits(rng.Float64()))
			case tensor.Bytes:
				t.Data = tensor.AppendBytesElement(t.Data, []byte("x"))
			default: // integers, booleans and FP16: zeros are valid
				t.Data = append(t.Data, make([]byte, dt.Size())...)
			}
		}
		req.Inputs = append(req.Inputs, t)
	}
	return req, nil
}

// perfDirect runs ONNX Runtime alone on req's inputs, stacked to several
// batch sizes, and returns the best rows per second and its batch size.
func perfDirect(path string, req *tensor.Request) (float64, int, error) {
	lib, err := findORT()
	if err != nil {
		return 0, 0, err
	}
	rt, err := onnx.Open(lib)
	if err != nil {
		return 0, 0, err
	}
	defer rt.Close()
	sig, err := rt.Inspect(path)
	if err != nil {
		return 0, 0, err
	}
	sess, err := rt.NewSession(path, sig, onnx.SessionOptions{Spinning: true})
	if err != nil {
		return 0, 0, err
	}
	defer sess.Close()
	best, bestBatch := 0.0, 0
	for _, batch := range []int{1, 8, 32, 64} {
		in := make([]tensor.Tensor, 0, len(sig.Inputs))
		for _, io := range sig.Inputs {
			idx := slices.IndexFunc(req.Inputs, func(t tensor.Tensor) bool { return t.Name == io.Name })
			if idx < 0 {
				return 0, 0, fmt.Errorf("the request has no input %s", io.Name)
			}
			t := req.Inputs[idx]
			s := tensor.Tensor{Name: t.Name, Datatype: t.Datatype, Shape: slices.Clone(t.Shape)}
			if len(s.Shape) > 0 && len(io.Shape) > 0 && io.Shape[0] < 0 {
				s.Shape[0] *= int64(batch)
				s.Data = bytes.Repeat(t.Data, batch)
			} else {
				s.Data = t.Data
			}
			in = append(in, s)
		}
		rows := batch
		if len(in) > 0 && len(in[0].Shape) > 0 {
			rows = int(in[0].Shape[0])
		}
		if _, err := sess.Run(in); err != nil {
			if batch == 1 {
				return 0, 0, err
			}
			break // the model takes no larger batch
		}
		// A second at least, and three runs at least: a slow model's
		// rate read from one or two runs is mostly the first run's
		// warm-up at a new shape.
		runs, start := 0, time.Now()
		for runs < 3 || time.Since(start) < time.Second {
			if _, err := sess.Run(in); err != nil {
				return 0, 0, err
			}
			runs++
		}
		took := time.Since(start)
		if r := float64(runs*rows) / took.Seconds(); r > best {
			best, bestBatch = r, batch
		}
		if took/time.Duration(runs) > time.Second {
			break // a larger batch would take long, for no better rate on a CPU
		}
	}
	return best, bestBatch, nil
}

func writePerf(w io.Writer, format string, rep perfReport) error {
	switch format {
	case "json":
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "csv":
		cw := csv.NewWriter(w)
		cw.Write([]string{"concurrency", "requests", "errors", "requests_per_second", "rows_per_second", "p50_ms", "p90_ms", "p99_ms", "of_onnxruntime",
			"server_cpu_us_per_request", "server_rss_mib"})
		for _, s := range rep.Steps {
			cw.Write([]string{strconv.Itoa(s.Concurrency), strconv.FormatInt(s.Requests, 10), strconv.FormatInt(s.Errors, 10),
				fmt.Sprintf("%.1f", s.PerSecond), fmt.Sprintf("%.1f", s.RowsPerSec), fmt.Sprintf("%.2f", s.P50ms),
				fmt.Sprintf("%.2f", s.P90ms), fmt.Sprintf("%.2f", s.P99ms), fmt.Sprintf("%.3f", s.OfDirect),
				optional(s.ServerCPU, "%.0f"), optional(s.ServerRSS, "%.0f")})
		}
		cw.Flush()
		return cw.Error()
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	enc := "JSON"
	if rep.Binary {
		enc = "binary"
	}
	fmt.Fprintf(w, "model %s, %s, %s requests of %d row(s)\n", rep.Model, rep.Mode, enc, rep.Rows)
	if rep.Direct != nil {
		fmt.Fprintf(w, "ONNX Runtime alone, in this process: %.0f rows/s at batch %d\n", *rep.Direct, rep.Batch)
	}
	fmt.Fprintln(tw, "concurrency\trequests/s\trows/s\tp50 ms\tp90 ms\tp99 ms\terrors\tof ONNX Runtime\tserver CPU µs/request\tserver RSS MiB\t")
	for _, s := range rep.Steps {
		of := "–"
		if rep.Direct != nil {
			of = fmt.Sprintf("%.2f", s.OfDirect)
		}
		fmt.Fprintf(tw, "%d\t%.1f\t%.1f\t%.2f\t%.2f\t%.2f\t%d\t%s\t%s\t%s\t\n", s.Concurrency, s.PerSecond, s.RowsPerSec, s.P50ms, s.P90ms, s.P99ms, s.Errors, of,
			cmp.Or(optional(s.ServerCPU, "%.0f"), "–"), cmp.Or(optional(s.ServerRSS, "%.0f"), "–"))
	}
	return tw.Flush()
}

// optional formats v, or nothing when it is nil.
func optional(v *float64, format string) string {
	if v == nil {
		return ""
	}
	return fmt.Sprintf(format, *v)
}
