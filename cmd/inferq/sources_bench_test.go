package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/storage"
	"github.com/inferq/inferq/tensor"
)

// benchObjects is how many objects a batch benchmark lists: n, or
// INFERQ_BENCH_OBJECTS.
func benchObjects(b *testing.B, n int) int {
	if v := os.Getenv("INFERQ_BENCH_OBJECTS"); v != "" {
		m, err := strconv.Atoi(v)
		if err != nil || m <= 0 {
			b.Fatalf("INFERQ_BENCH_OBJECTS=%q: a positive count", v)
		}
		return m
	}
	return n
}

// BenchmarkSourceBatch: rows/s of a batch over 100,000 small pictures in
// MinIO (about 40x16 PNGs) through a pipeline that decodes, resizes and
// normalises each and runs PaddleOCR's text direction classifier, from
// the POST to the batch's end, against an in-process Go loop that lists
// the same objects from the same MinIO, reads them (16 reads in flight),
// runs the same operations and the same model in batches of 32, on the
// same cores, side by side in one run.
func BenchmarkSourceBatch(b *testing.B) {
	n := benchObjects(b, 100_000)
	m := testenv.StartMinIO(b)
	photos, err := storage.NewS3(context.Background(), storage.S3Options{Endpoint: m.Endpoint, Bucket: "photos", AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true})
	if err != nil {
		b.Fatal(err)
	}
	files := map[string][]byte{}
	for i := range n {
		files[fmt.Sprintf("bench/%03d/%06d.png", i%1000, i)] = stripes(b, i, 40, 16)
	}
	putObjects(b, photos, files)
	clear(files)

	cls := testenv.ThirdParty(b, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx")
	ref := openDirect(b, cls)
	in, out := ref.sig.Inputs[0].Name, ref.sig.Outputs[0].Name

	// The loop.
	rt := testenv.Runtime(b)
	sess, err := rt.NewSession(cls, ref.sig, onnx.SessionOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	ops := directionOps(b)
	start := time.Now()
	keys := make(chan string, 1024)
	bodies := make(chan []byte, 64)
	go func() {
		defer close(keys)
		after := ""
		for {
			page, err := photos.ListPage(context.Background(), "bench/", after, 1000)
			if err != nil {
				b.Error(err)
				return
			}
			for _, o := range page {
				keys <- o.Key
			}
			if len(page) < 1000 {
				return
			}
			after = page[len(page)-1].Key
		}
	}()
	var readers sync.WaitGroup
	for range 16 {
		readers.Go(func() {
			for k := range keys {
				rc, err := photos.Get(context.Background(), k)
				if err != nil {
					b.Error(err)
					continue
				}
				body, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					b.Error(err)
				}
				bodies <- body
			}
		})
	}
	go func() { readers.Wait(); close(bodies) }()
	var pending [][]tensor.Tensor
	flush := func() {
		cuts := make([]int, len(pending))
		for i := range cuts {
			cuts[i] = 1
		}
		x, err := batching.Stack(pending, nil)
		if err != nil {
			b.Fatal(err)
		}
		y, err := sess.Run(x)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := batching.Split(y, cuts); err != nil {
			b.Fatal(err)
		}
		pending = pending[:0]
	}
	done := 0
	for body := range bodies {
		x := runOps(b, ops, body, in)
		if pending = append(pending, []tensor.Tensor{x}); len(pending) == 32 {
			flush()
		}
		done++
	}
	if len(pending) > 0 {
		flush()
	}
	if done != n {
		b.Fatalf("the loop read %d of %d objects", done, n)
	}
	loopRate := float64(n) / time.Since(start).Seconds()
	sess.Close()

	// inferq.
	s, _ := benchServer(b, testenv.ModelRepo(b, map[string]string{
		"ocrcls/1/model.onnx":     "@" + cls,
		"ocrcls/config.yaml":      "max_batch_size: 32\n",
		"direction/pipeline.yaml": directionPipeline(in, out),
	}), append(s3Flags(m, "results"), "--batch-sources", "s3://photos/bench/")...)
	start = time.Now()
	r := do(b, "POST", s.url+"/v1/models/direction/batches?source=s3://photos/bench/", nil)
	if r.code != http.StatusAccepted {
		b.Fatalf("POST: %d %s", r.code, r.body)
	}
	var rec record.BatchRecord
	r.json(b, &rec)
	first := firstFollowedLine(b, s, rec.ID)
	firstLine := first.Sub(start)
	for !rec.Final() {
		time.Sleep(100 * time.Millisecond)
		do(b, "GET", s.url+"/v1/batches/"+rec.ID, nil).json(b, &rec)
	}
	rate := float64(n) / rec.FinishedAt.Sub(start).Seconds()
	if rec.Counts.Succeeded != int64(n) {
		b.Fatalf("batch %+v", rec)
	}
	b.ReportMetric(rate, "inferq_rows/s")
	b.ReportMetric(loopRate, "loop_rows/s")
	b.ReportMetric(rate/loopRate, "inferq/loop")
	b.ReportMetric(firstLine.Seconds(), "s_to_first_line")
}

// firstFollowedLine follows batch id's output until its first line, and
// returns when it came.
func firstFollowedLine(b *testing.B, s *server, id string) time.Time {
	b.Helper()
	res, err := http.Get(s.url + "/v1/batches/" + id + "/output?follow=1")
	if err != nil {
		b.Fatal(err)
	}
	defer res.Body.Close()
	line, err := bufio.NewReader(res.Body).ReadBytes('\n')
	if err != nil || !strings.Contains(string(line), `"line":`) {
		b.Fatalf("first followed line: %q %v", line, err)
	}
	return time.Now()
}

// BenchmarkSourceBatchMemory: the memory of `inferq api` and `inferq
// worker`, each a process of its own against one NATS server (in this
// process), through a batch over 1,000,000 objects in the store (WAV
// clips of 32 samples, a pipeline that decodes them and sums them with a
// tiny model): their resident sets read from /proc every second,
// reported at each tenth of the lines done and at their peak, with this
// process's (NATS's, mostly), and the time from the POST to the first
// followed line.
func BenchmarkSourceBatchMemory(b *testing.B) {
	n := benchObjects(b, 1_000_000)
	objects := b.TempDir()
	pcm := make([]byte, 64)
	for i := range 32 {
		binary.LittleEndian.PutUint16(pcm[2*i:], uint16(100*i))
	}
	clip := wavBytes(16000, pcm)
	for d := 0; d*1000 < n; d++ {
		dir := filepath.Join(objects, "inputs", "loudness", "clips", fmt.Sprintf("%04d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for i := d * 1000; i < min(n, (d+1)*1000); i++ {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%07d.wav", i)), clip, 0o644); err != nil {
				b.Fatal(err)
			}
		}
	}
	repo := loudnessRepo(b, map[string]string{"rowsum/config.yaml": "max_batch_size: 64\n"})
	ns := testenv.JetStream(b)
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", objects, "--log-level", "warn"}
	api := startProcess(b, append([]string{"api"}, common...)...)
	worker := startWorkerProcess(b, common...)
	s := &server{url: api.url}
	rss := func(pid int) int64 {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0
		}
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				return kb << 10
			}
		}
		return 0
	}
	pids := map[string]int{"api": api.cmd.Process.Pid, "worker": worker, "nats+bench": os.Getpid()}
	peak := map[string]int64{}
	time.Sleep(2 * time.Second) // the worker up
	start := time.Now()
	r := do(b, "POST", s.url+"/v1/models/loudness/batches?source=inputs/loudness/clips/", nil)
	if r.code != http.StatusAccepted {
		b.Fatalf("POST: %d %s", r.code, r.body)
	}
	var rec record.BatchRecord
	r.json(b, &rec)
	firstLine := firstFollowedLine(b, s, rec.ID).Sub(start)
	next := int64(1)
	for !rec.Final() {
		time.Sleep(time.Second)
		do(b, "GET", s.url+"/v1/batches/"+rec.ID, nil).json(b, &rec)
		now := map[string]int64{}
		for k, pid := range pids {
			now[k] = rss(pid)
			peak[k] = max(peak[k], now[k])
		}
		if done := rec.Counts.Done(); done*10 >= next*int64(n) {
			b.Logf("%3d%% of %d lines done at %4.0f s: api %d MiB, worker %d MiB, nats+bench %d MiB resident", 100*done/int64(n), n, time.Since(start).Seconds(), now["api"]>>20, now["worker"]>>20, now["nats+bench"]>>20)
			next = done*10/int64(n) + 1
		}
	}
	if rec.Counts.Succeeded != int64(n) {
		b.Fatalf("batch %+v", rec)
	}
	for k, v := range peak {
		b.ReportMetric(float64(v>>20), "MiB_peak_"+k)
	}
	b.ReportMetric(float64(n)/rec.FinishedAt.Sub(start).Seconds(), "rows/s")
	b.ReportMetric(firstLine.Seconds(), "s_to_first_line")
}
