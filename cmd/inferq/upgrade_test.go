package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// storedQueue is what an earlier release left in NATS and its object
// folder, as testdata/upgrade/dump writes it.
type storedQueue struct {
	Streams []struct {
		Config    jetstream.StreamConfig     `json:"config"`
		Consumers []jetstream.ConsumerConfig `json:"consumers"`
		Messages  []struct {
			Seq     uint64      `json:"seq"`
			Subject string      `json:"subject"`
			Header  nats.Header `json:"header"`
			Data    []byte      `json:"data"`
		} `json:"messages"`
		LastSeq uint64 `json:"last_seq"`
	} `json:"streams"`
	Objects map[string][]byte `json:"objects"`
}

// queuedJobs is what testdata/upgrade/gen.sh submitted to that release.
type queuedJobs struct {
	Jobs []struct {
		ID       string
		X        []float32
		Priority string
	}
	Cancelled   string
	Batch       queuedBatch
	Unstackable queuedBatch
}

// queuedBatch is a batch file of lines of one input, x, of a fixed width.
type queuedBatch struct {
	ID    string
	Lines [][]float32
}

// A queue written by an earlier release (testdata/upgrade: 74a6907, the
// release before the job records and batch-file envelopes changed) is run
// by this one: its streams, consumers and messages are loaded as that
// release stored them into a NATS server, and `inferq serve` started on
// it. Every job it accepted runs once and answers what ONNX Runtime gives,
// the one it cancelled stays cancelled and never runs, and its batch file,
// whose lines it packed into one request the way it did then, finishes
// with every line in order; so does the one it laid end to end, of a
// model whose rows cannot share a run.
func TestQueueOfAnEarlierRelease(t *testing.T) {
	for _, release := range []string{"74a6907"} {
		t.Run(release, func(t *testing.T) {
			var q storedQueue
			var want queuedJobs
			readJSON(t, filepath.Join(testenv.Root(t), "testdata/upgrade", release+"-queue.json"), &q)
			readJSON(t, filepath.Join(testenv.Root(t), "testdata/upgrade", release+"-jobs.json"), &want)

			ns := testenv.JetStream(t)
			js, err := jetstream.New(testenv.Connect(t, ns))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for _, st := range q.Streams {
				restoreStream(ctx, t, js, st.Config, st.Consumers, st.LastSeq, func(yield func(uint64, *nats.Msg) bool) {
					for _, m := range st.Messages {
						if !yield(m.Seq, &nats.Msg{Subject: m.Subject, Header: m.Header, Data: m.Data}) {
							return
						}
					}
				})
			}
			data := t.TempDir()
			for key, b := range q.Objects {
				writeFile(t, filepath.Join(data, "objects", filepath.FromSlash(key)), b)
			}

			total := filepath.Join(t.TempDir(), "total.onnx")
			writeFile(t, total, onnxbuild.Total())
			s := startServe(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t), "total/1/model.onnx": "@" + total}),
				"--data", data, "--nats", ns.ClientURL())
			d := openDirect(t, irisPath(t))
			// rows is x as the input of a request, rows of width wide.
			rows := func(x []float32, wide int) []tensor.Tensor {
				data := make([]byte, 0, 4*len(x))
				for _, v := range x {
					data = binary.LittleEndian.AppendUint32(data, math.Float32bits(v))
				}
				return []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{int64(len(x) / wide), int64(wide)}, Data: data}}
			}
			row := func(x []float32) []tensor.Tensor { return rows(x, 4) }
			for _, j := range want.Jobs {
				rec := s.await(t, j.ID, time.Minute)
				if rec.Status != record.Succeeded || rec.Attempts != 1 || string(rec.Priority) != j.Priority && j.Priority != "" {
					t.Fatalf("job %s queued by %s: %+v", j.ID, release, rec)
				}
				assertClose(t, "job "+j.ID, s.result(t, j.ID).Outputs, d.run(t, row(j.X)))
			}
			if rec := s.await(t, want.Cancelled, time.Minute); rec.Status != record.Cancelled || rec.Attempts != 0 {
				t.Errorf("job cancelled under %s: %+v", release, rec)
			}

			// A batch file's lines stacked into one request (iris), and laid
			// end to end (total: its rows cannot share a run).
			for _, c := range []struct {
				batch queuedBatch
				d     *direct
				wide  int
			}{{want.Batch, d, 4}, {want.Unstackable, openDirect(t, total), 3}} {
				b := awaitBatch(t, s, c.batch.ID, time.Minute)
				n := int64(len(c.batch.Lines))
				if b.Status != record.BatchSucceeded || b.Counts.Total != n || b.Counts.Succeeded != n {
					t.Fatalf("batch file queued by %s: %+v", release, b)
				}
				lines := eachOutputLine(t, s, b.ID, func(i int, o batchOut, raw []byte) {
					if string(o.CustomID) != fmt.Sprintf(`"line-%d"`, i) {
						t.Fatalf("%s output line %d: %s", b.Model, i, raw)
					}
					resp, err := tensor.DecodeResponse(o.Response)
					if err != nil {
						t.Fatalf("%s output line %d: %v: %s", b.Model, i, err, raw)
					}
					assertClose(t, fmt.Sprintf("%s line %d", b.Model, i), resp.Outputs, c.d.run(t, rows(c.batch.Lines[i], c.wide)))
				})
				if lines != len(c.batch.Lines) {
					t.Fatalf("%s: %d output lines, want %d", b.Model, lines, len(c.batch.Lines))
				}
			}

			// Each job that ran is announced once.
			announced := map[string]int{}
			results, err := js.Stream(ctx, jobs.ResultStream)
			if err != nil {
				t.Fatal(err)
			}
			last := results.CachedInfo().State.LastSeq
			for seq := uint64(1); seq <= last; seq++ {
				m, err := results.GetMsg(ctx, seq)
				if err != nil {
					t.Fatalf("announcement %d: %v", seq, err)
				}
				announced[m.Header.Get(jobs.HeaderJobID)]++
			}
			for _, j := range want.Jobs {
				if announced[j.ID] != 1 {
					t.Errorf("job %s announced %d times", j.ID, announced[j.ID])
				}
			}
		})
	}
}

// restoreStream creates a stream and its consumers with the configuration
// an earlier release gave them, and stores its messages so that each gets
// the sequence it had there (a record's revision is its sequence, and a
// request carries the revision of its record): a number that was taken by
// a message since removed is taken again by a placeholder, deleted at once.
func restoreStream(ctx context.Context, t *testing.T, js jetstream.JetStream, cfg jetstream.StreamConfig, consumers []jetstream.ConsumerConfig, lastSeq uint64, messages func(yield func(uint64, *nats.Msg) bool)) {
	t.Helper()
	for k := range cfg.Metadata {
		if strings.HasPrefix(k, "_nats.") { // set by the server that stored it
			delete(cfg.Metadata, k)
		}
	}
	loading := cfg
	loading.DenyDelete = false // to delete the placeholders; restored below
	st, err := js.CreateStream(ctx, loading)
	if err != nil {
		t.Fatalf("create stream %s: %v", cfg.Name, err)
	}
	next := uint64(1)
	store := func(m *nats.Msg) uint64 {
		t.Helper()
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatalf("%s: store %s: %v", cfg.Name, m.Subject, err)
		}
		return ack.Sequence
	}
	fill := func(upTo uint64) {
		t.Helper()
		for ; next < upTo; next++ {
			placeholder := strings.TrimSuffix(cfg.Subjects[0], ">") + "upgrade-placeholder"
			seq := store(&nats.Msg{Subject: placeholder})
			if err := st.DeleteMsg(ctx, seq); err != nil {
				t.Fatal(err)
			}
		}
	}
	for seq, m := range messages {
		fill(seq)
		for k := range m.Header {
			if strings.HasPrefix(k, "Nats-Expected-") { // a condition of the first store, met then
				m.Header.Del(k)
			}
		}
		if got := store(m); got != seq {
			t.Fatalf("%s: message %d stored as %d", cfg.Name, seq, got)
		}
		next = seq + 1
	}
	fill(lastSeq + 1)
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("update stream %s: %v", cfg.Name, err)
	}
	for _, c := range consumers {
		if _, err := st.CreateConsumer(ctx, c); err != nil {
			t.Fatalf("%s: create consumer %s: %v", cfg.Name, c.Durable, err)
		}
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
