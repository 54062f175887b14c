package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/storage"
	"github.com/inferq/inferq/tensor"
)

// A batch over 20,000 objects, with every process killed (SIGKILL)
// three times while it runs (inferq with its embedded NATS, each time;
// MinIO too, once), and started again on the same data: the first kill
// comes while the prefix is still being listed. The batch finishes with
// each object in the output exactly once, answered right, and the model
// begun at most 1.05 times per line (the runs a kill cut short, counted
// by the records' attempts: every run is marked before it begins).
func TestSourceBatchSurvivesKills(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts real processes over 20,000 objects; skipped with -short")
	}
	m := testenv.StartMinIO(t)
	clips, err := storage.NewS3(context.Background(), storage.S3Options{Endpoint: m.Endpoint, Bucket: "clips", AccessKey: m.AccessKey, SecretKey: m.SecretKey, CreateBucket: true})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20_000
	// Clip i: 32 samples of (i%1000)*16 at 16 kHz, summing to
	// 32*(i%1000)*16/32768.
	files := map[string][]byte{}
	want := map[string]float64{}
	for i := range n {
		pcm := make([]byte, 0, 64)
		for range 32 {
			pcm = binary.LittleEndian.AppendUint16(pcm, uint16((i%1000)*16))
		}
		key := fmt.Sprintf("kill/%05d.wav", i)
		files["2026/"+key] = wavBytes(16000, pcm)
		want["2026/"+key] = 32 * float64((i%1000)*16) / 32768
	}
	putObjects(t, clips, files)

	repo := loudnessRepo(t, nil)
	data := t.TempDir()
	args := append([]string{"serve", "--models", repo, "--data", data, "--log-level", "warn", "--running-after", "0", "--ack-wait", "5s",
		"--batch-sources", "s3://clips/2026/"}, s3Flags(m, "results")...)
	p := startProcess(t, args...)
	s := &server{url: p.url}
	r := do(t, "POST", s.url+"/v1/models/loudness/batches?source=s3://clips/2026/", nil)
	if r.code != http.StatusAccepted {
		t.Fatalf("POST: %d %s", r.code, r.body)
	}
	var b record.BatchRecord
	r.json(t, &b)

	batch := func() record.BatchRecord {
		var rec record.BatchRecord
		testenv.Poll(30*time.Second, func() bool {
			res := tryDo("GET", s.url+"/v1/batches/"+b.ID)
			return res.code == http.StatusOK && json.Unmarshal(res.body, &rec) == nil
		})
		return rec
	}
	for i, at := range []int64{2000, 8000, 14000} {
		var seen record.BatchRecord
		if !testenv.Poll(5*time.Minute, func() bool { seen = batch(); return seen.Counts.Done() >= at }) {
			t.Fatalf("the batch did not reach %d lines done: %+v", at, seen)
		}
		if i == 0 && seen.Read() {
			t.Logf("the listing had ended before the first kill (%+v): the takeover of a feed is not exercised", seen.Counts)
		}
		p.cmd.Process.Kill()
		p.cmd.Wait()
		if i == 1 {
			m.Stop()
			m.Start()
		}
		t.Logf("kill %d at %d lines done of %d listed", i+1, seen.Counts.Done(), seen.Counts.Total)
		p = startProcess(t, args...)
		s.url = p.url
	}
	var end record.BatchRecord
	if !testenv.Poll(5*time.Minute, func() bool { end = batch(); return end.Final() }) {
		t.Fatalf("the batch did not finish: %+v", end)
	}
	if end.Status != record.BatchSucceeded || end.Counts != (record.BatchCounts{Total: n, Succeeded: n}) {
		t.Fatalf("batch %+v", end)
	}

	// The output: each object once, in key order, answered right.
	res, err := http.Get(s.url + "/v1/batches/" + b.ID + "/output")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(nil, 1<<20)
	var ids []string
	seen := map[string]bool{}
	for sc.Scan() {
		var l followedLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		resp, err := tensor.DecodeResponse(l.Response)
		if l.Error != "" || err != nil || seen[l.CustomID] {
			t.Fatalf("line %s: error %q (%v), seen before %v", l.CustomID, l.Error, err, seen[l.CustomID])
		}
		seen[l.CustomID] = true
		got := float64(math.Float32frombits(binary.LittleEndian.Uint32(resp.Outputs[0].Data)))
		if w, ok := want[l.CustomID]; !ok || math.Abs(got-w) > 1e-3 {
			t.Fatalf("line %s: total %v, want %v", l.CustomID, got, w)
		}
		ids = append(ids, resp.ID)
	}
	if len(seen) != n {
		t.Fatalf("output has %d objects, want %d", len(seen), n)
	}

	// Runs begun: the attempts of every job.
	var attempts atomic.Int64
	var wg sync.WaitGroup
	slots := make(chan struct{}, 16)
	for _, id := range ids {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			var rec record.Record
			do(t, "GET", s.url+"/v1/jobs/"+id, nil).json(t, &rec)
			attempts.Add(int64(rec.Attempts))
		})
	}
	wg.Wait()
	ratio := float64(attempts.Load()) / n
	t.Logf("model runs begun: %d for %d lines (%.4f a line)", attempts.Load(), n, ratio)
	if ratio > 1.05 {
		t.Errorf("the model was begun %.3f times a line, over 1.05", ratio)
	}
}

// tryDo is a GET that may fail (a process being restarted): status 0
// then.
func tryDo(method, url string) response {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return response{}
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return response{}
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return response{code: res.StatusCode, body: b}
}
