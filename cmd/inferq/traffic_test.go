package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// disagreeing is a version of iris that answers another class for many
// flowers: a linear layer that favours the petal's width.
var disagreeing = []float32{
	0.2, 0.0, -0.1,
	-0.3, 0.1, 0.0,
	0.0, 0.2, 0.1,
	-1.0, 0.5, 1.5,
}

// irisVersions is a repository of iris in three versions: 1 a model that
// disagrees with iris, 2 a copy of iris, 3 iris (the default).
func irisVersions(t *testing.T, extra map[string]string) string {
	t.Helper()
	other := filepath.Join(t.TempDir(), "other.onnx")
	writeFile(t, other, onnxbuild.Classifier(disagreeing))
	files := map[string]string{"iris/1/model.onnx": "@" + other, "iris/2/model.onnx": "@" + irisPath(t), "iris/3/model.onnx": "@" + irisPath(t)}
	for k, v := range extra {
		files[k] = v
	}
	return testenv.ModelRepo(t, files)
}

// flower is the i-th of a spread of iris inputs.
func flower(i int) []tensor.Tensor {
	f := float32(i%97) / 97
	return []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 4}, Data: f32(4.5+3*f, 2+2*f, 1+5*f, 0.1+2.3*f)}}
}

// submitFlowers submits n unpinned iris jobs, 16 at a time, job i's inputs
// flower(i), and returns the records they end with.
func submitFlowers(t *testing.T, urls []string, n int) []*record.Record {
	t.Helper()
	recs := make([]*record.Record, n)
	var wg sync.WaitGroup
	for c := range 16 {
		wg.Go(func() {
			for i := c; i < n; i += 16 {
				s := &server{url: urls[i%len(urls)]}
				recs[i] = s.await(t, s.submit(t, "/v1/models/iris/jobs", requestJSON(flower(i))), time.Minute)
			}
		})
	}
	wg.Wait()
	return recs
}

// A 90/10 split set through one API process reaches a second within 5 s;
// 10,000 unpinned jobs land on the versions within 2 % of their shares,
// each answered by the version its record names. A rollback is a PUT of
// the old split; a version taken out of the repository while it has a
// share leaves the split, and no job fails. Bad splits are 400s.
func TestTrafficSplit(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 jobs through two API processes; skipped with -short")
	}
	repo := irisVersions(t, nil)
	objects := t.TempDir()
	ns := testenv.JetStream(t)
	a := startServe(t, repo, "--nats", ns.ClientURL(), "--storage", objects, "--model-poll", "200ms")
	b := startAPI(t, "--nats", ns.ClientURL(), "--models", repo, "--storage", objects, "--model-poll", "200ms")

	var got struct {
		Traffic        map[string]int
		Shadow         []string
		Source         string
		DefaultVersion string `json:"default_version"`
		Versions       []string
	}
	do(t, "GET", b.url+"/v1/models/iris/traffic", nil).json(t, &got)
	if got.Source != "" || got.DefaultVersion != "3" || len(got.Versions) != 3 {
		t.Fatalf("before any split: %+v", got)
	}
	for _, bad := range []struct{ body, want string }{
		{`{"traffic":{"9":10}}`, "no version 9"},
		{`{"traffic":{"2":50,"1":50},"shadow":["1"]}`, "a shadow or answers"},
		{`{"traffic":{"2":0}}`, "sum to 0"},
		{`{"trafic":{"2":1}}`, "unknown field"},
	} {
		r := do(t, "PUT", a.url+"/v1/models/iris/traffic", []byte(bad.body))
		if r.code != http.StatusBadRequest || !strings.Contains(r.errorMessage(t), bad.want) {
			t.Errorf("PUT %s: %d %s, want 400 saying %q", bad.body, r.code, r.body, bad.want)
		}
	}

	set := time.Now()
	if r := do(t, "PUT", a.url+"/v1/models/iris/traffic", []byte(`{"traffic":{"2":90,"3":10}}`)); r.code != http.StatusOK {
		t.Fatalf("PUT: %d %s", r.code, r.body)
	}
	if !testenv.Poll(5*time.Second, func() bool {
		do(t, "GET", b.url+"/v1/models/iris/traffic", nil).json(t, &got)
		return got.Source == "api" && got.Traffic["2"] == 90
	}) {
		t.Fatalf("the second API process did not follow the split within 5 s: %+v", got)
	}
	t.Logf("the second API process followed the split after %v", time.Since(set).Round(time.Millisecond))
	// An API process started after the change (as after a restart) has
	// it from the start.
	late := startAPI(t, "--nats", ns.ClientURL(), "--models", repo, "--storage", objects)
	if !testenv.Poll(5*time.Second, func() bool {
		do(t, "GET", late.url+"/v1/models/iris/traffic", nil).json(t, &got)
		return got.Source == "api" && got.Traffic["2"] == 90
	}) {
		t.Fatalf("an API process started after the change: %+v", got)
	}

	const n = 10_000
	recs := submitFlowers(t, []string{a.url, b.url}, n)
	count := map[string]int{}
	for i, rec := range recs {
		if rec.Status != record.Succeeded {
			t.Fatalf("job %d: %+v", i, rec)
		}
		count[rec.ModelVersion]++
	}
	t.Logf("10,000 jobs at 90/10: %v", count)
	if math.Abs(float64(count["2"])/n-0.9) > 0.02 || math.Abs(float64(count["3"])/n-0.1) > 0.02 || count["1"] != 0 {
		t.Errorf("versions answered %v, want 90/10 within 2 %%", count)
	}
	for _, i := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9} {
		if res := a.result(t, recs[i].ID); res.ModelVersion != recs[i].ModelVersion {
			t.Errorf("job %d: record says version %s, its result %s", i, recs[i].ModelVersion, res.ModelVersion)
		}
	}

	// Rollback: everything to 3 again.
	if r := do(t, "PUT", b.url+"/v1/models/iris/traffic", []byte(`{"traffic":{"3":100}}`)); r.code != http.StatusOK {
		t.Fatalf("PUT: %d %s", r.code, r.body)
	}
	testenv.Poll(5*time.Second, func() bool {
		do(t, "GET", a.url+"/v1/models/iris/traffic", nil).json(t, &got)
		return got.Traffic["3"] == 100
	})
	for i, rec := range submitFlowers(t, []string{a.url, b.url}, 200) {
		if rec.Status != record.Succeeded || rec.ModelVersion != "3" {
			t.Fatalf("after the rollback, job %d: %+v", i, rec)
		}
	}

	// Version 2 has half the traffic and is taken out of the repository:
	// its share goes to 3, and no job fails.
	if r := do(t, "PUT", a.url+"/v1/models/iris/traffic", []byte(`{"traffic":{"2":50,"3":50}}`)); r.code != http.StatusOK {
		t.Fatalf("PUT: %d %s", r.code, r.body)
	}
	if err := os.RemoveAll(filepath.Join(repo, "iris", "2")); err != nil {
		t.Fatal(err)
	}
	testenv.Poll(10*time.Second, func() bool {
		do(t, "GET", a.url+"/v1/models/iris/traffic", nil).json(t, &got)
		return len(got.Versions) == 2
	})
	for i, rec := range submitFlowers(t, []string{a.url}, 200) {
		if rec.Status != record.Succeeded || rec.ModelVersion != "3" {
			t.Fatalf("version 2 removed, job %d: %+v", i, rec)
		}
	}
}

// Every unpinned job also runs on each shadow version, on its own queue:
// a copy of iris agrees with it on every label, a different model on
// fewer (the share both checked against the two models run directly), a
// version that fails every run fails no job and shows in its own
// metrics; no shadow output reaches the job's record or result.
func TestShadowVersions(t *testing.T) {
	if testing.Short() {
		t.Skip("runs shadow versions; skipped with -short")
	}
	fives := filepath.Join(t.TempDir(), "fives.onnx")
	writeFile(t, fives, onnxbuild.FivesSum()) // takes x, fails on a width of 4
	repo := irisVersions(t, map[string]string{"iris/4/model.onnx": "@" + fives,
		"iris/config.yaml": "traffic: {\"3\": 100}\nshadow: [\"1\", \"2\", \"4\"]\n"})
	s := startServe(t, repo, "--stats-interval", "300ms")
	var got struct {
		Source string
		Shadow []string
	}
	do(t, "GET", s.url+"/v1/models/iris/traffic", nil).json(t, &got)
	if got.Source != "config" || len(got.Shadow) != 3 {
		t.Fatalf("traffic from config.yaml: %+v", got)
	}

	const n = 300
	recs := submitFlowers(t, []string{s.url}, n)
	for i, rec := range recs {
		if rec.Status != record.Succeeded || rec.ModelVersion != "3" {
			t.Fatalf("job %d: %+v", i, rec)
		}
	}
	// What the shadows should say, from the models run directly.
	other := openDirect(t, filepath.Join(repo, "iris", "1", "model.onnx"))
	iris := openDirect(t, irisPath(t))
	agree := 0
	for i := range n {
		if label(t, other.run(t, flower(i))) == label(t, iris.run(t, flower(i))) {
			agree++
		}
	}
	want := float64(agree) / n
	if want == 1 {
		t.Fatal("the disagreeing model agrees on every flower: the test cannot tell")
	}

	type summary struct {
		Jobs           int64
		LabelAgreement *float64 `json:"label_agreement"`
		MeanAbsDiff    *float64 `json:"mean_abs_diff"`
	}
	var mon struct {
		Shadow []struct {
			Version, Against string
			Windows          map[string]summary
		}
	}
	byVersion := map[string]summary{}
	if !testenv.Poll(30*time.Second, func() bool {
		do(t, "GET", s.url+"/v1/models/iris/monitoring", nil).json(t, &mon)
		for _, sh := range mon.Shadow {
			if sh.Against == "3" {
				byVersion[sh.Version] = sh.Windows["5m"]
			}
		}
		return byVersion["1"].Jobs == n && byVersion["2"].Jobs == n
	}) {
		t.Fatalf("shadow agreement: %+v", mon.Shadow)
	}
	if a := byVersion["2"].LabelAgreement; a == nil || *a != 1 {
		t.Errorf("a copy of iris agrees on %v of the labels, want 1", a)
	}
	if d := byVersion["2"].MeanAbsDiff; d != nil {
		t.Errorf("iris's outputs are class-like (probabilities, label), compared by label; got a mean difference %v", *d)
	}
	if a := byVersion["1"].LabelAgreement; a == nil || math.Abs(*a-want) > 1e-9 {
		t.Errorf("the other model agrees on %v of the labels, want %v", a, want)
	}
	if _, ok := byVersion["4"]; ok {
		t.Errorf("the failing version has an agreement: %+v", byVersion["4"])
	}
	m := s.metrics(t)
	if f := m["inferq_shadow_runs_total,model=iris,outcome=failed,version=4"]; f != n {
		t.Errorf("the failing shadow's failures: %v, want %d", f, n)
	}
	if f := m["inferq_shadow_runs_total,model=iris,outcome=succeeded,version=2"]; f != n {
		t.Errorf("the copy's shadow runs: %v, want %d", f, n)
	}
	if got := m["inferq_jobs_finished_total,model=iris,status=succeeded"]; got != n {
		t.Errorf("jobs finished: %v, want %d (shadow runs are no jobs)", got, n)
	}
	// The agreement on /metrics, for alerts.
	page := string(do(t, "GET", s.url+"/metrics", nil).body)
	if !strings.Contains(page, `inferq_shadow_agreement{against="3",measure="labels",model="iris",version="2"} 1`) {
		t.Errorf("no agreement of version 2 on /metrics")
	}
}

// label is the class an iris-like model answered for one row.
func label(t *testing.T, outs []tensor.Tensor) int64 {
	t.Helper()
	for _, o := range outs {
		if o.Name == "label" && len(o.Data) == 8 {
			return int64(binary.LittleEndian.Uint64(o.Data))
		}
	}
	t.Fatalf("no label among %v", outs)
	return 0
}

// A new version dropped into the repository while 3,000 jobs wait: the
// worker picks it up mid-queue, no job is lost or fails, and each job's
// answer is the one of the version its record names (checked against
// the two models run directly).
func TestRollingUpdateUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a worker process; skipped with -short")
	}
	ns := testenv.JetStream(t)
	other := filepath.Join(t.TempDir(), "other.onnx")
	writeFile(t, other, onnxbuild.Classifier(disagreeing))
	repo := testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + other})
	objects := t.TempDir()
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", objects, "--model-poll", "100ms", "--log-level", "warn"}
	s := startAPI(t, common...)
	const n = 3000
	ids := make([]string, n)
	var wg sync.WaitGroup
	for c := range 16 {
		wg.Go(func() {
			for i := c; i < n; i += 16 {
				ids[i] = s.submit(t, "/v1/models/iris/jobs", requestJSON(flower(i)))
			}
		})
	}
	wg.Wait()
	// One job at a time, so that the queue lasts while the new version
	// comes.
	startWorkerProcess(t, append(common, "--max-batch-size", "1", "--instances", "1")...)
	time.Sleep(300 * time.Millisecond)
	staged := filepath.Join(repo, ".iris-2")
	if err := os.MkdirAll(staged, 0o755); err != nil {
		t.Fatal(err)
	}
	irisFile, err := os.ReadFile(irisPath(t))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(staged, "model.onnx"), irisFile)
	if err := os.Rename(staged, filepath.Join(repo, "iris", "2")); err != nil {
		t.Fatal(err)
	}

	direct := map[string]*direct{"1": openDirect(t, other), "2": openDirect(t, irisPath(t))}
	count := map[string]int{}
	for i, id := range ids {
		rec := s.await(t, id, 2*time.Minute)
		if rec.Status != record.Succeeded {
			t.Fatalf("job %d: %+v", i, rec)
		}
		count[rec.ModelVersion]++
		if i%10 == 0 {
			res := s.result(t, id)
			d := direct[rec.ModelVersion]
			if d == nil || res.ModelVersion != rec.ModelVersion {
				t.Fatalf("job %d: record version %q, result version %q", i, rec.ModelVersion, res.ModelVersion)
			}
			assertClose(t, fmt.Sprintf("job %d (version %s)", i, rec.ModelVersion), res.Outputs, d.run(t, flower(i)))
		}
	}
	t.Logf("3,000 jobs, version 2 dropped in mid-queue: answered by %v", count)
	if count["1"] == 0 || count["2"] == 0 {
		t.Errorf("answered by %v: the new version did not come mid-queue", count)
	}
}

// Shadows on machines of their own: one worker process runs the model
// without its shadow (--shadows without), another the shadow alone
// (--shadows only), started after the jobs finished: their runs wait on
// the shadow's queue meanwhile (inferq_shadow_queue_messages), and every
// job answered by the first is compared by the second.
func TestShadowWorkersApart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes; skipped with -short")
	}
	ns := testenv.JetStream(t)
	repo := irisVersions(t, map[string]string{"iris/config.yaml": "traffic: {\"3\": 100}\nshadow: [\"2\"]\n"})
	objects := t.TempDir()
	common := []string{"--nats", ns.ClientURL(), "--models", repo, "--storage", objects, "--log-level", "warn"}
	s := startAPI(t, common...)
	startWorkerProcess(t, append(common, "--shadows", "without", "--stats-interval", "300ms")...)
	const n = 100
	for i, rec := range submitFlowers(t, []string{s.url}, n) {
		if rec.Status != record.Succeeded || rec.ModelVersion != "3" {
			t.Fatalf("job %d: %+v", i, rec)
		}
	}
	// No shadow worker yet: the runs wait on the shadow's queue, counted
	// on /metrics, and run once one starts.
	const waiting = "inferq_shadow_queue_messages,model=iris,version=2"
	var got float64
	if !testenv.Poll(10*time.Second, func() bool { got = s.metrics(t)[waiting]; return got >= 1 }) || got > n {
		t.Fatalf("%s = %v before any shadow worker ran; want the messages of %d runs (1 to %d)", waiting, got, n, n)
	}
	startWorkerProcess(t, append(common, "--shadows", "only", "--stats-interval", "300ms")...)
	var mon struct {
		Shadow []struct {
			Version, Against string
			Windows          map[string]struct {
				Jobs           int64
				LabelAgreement *float64 `json:"label_agreement"`
			}
		}
	}
	if !testenv.Poll(30*time.Second, func() bool {
		do(t, "GET", s.url+"/v1/models/iris/monitoring", nil).json(t, &mon)
		return len(mon.Shadow) == 1 && mon.Shadow[0].Windows["5m"].Jobs == n
	}) {
		t.Fatalf("shadow agreement: %+v", mon.Shadow)
	}
	if a := mon.Shadow[0].Windows["5m"].LabelAgreement; mon.Shadow[0].Version != "2" || a == nil || *a != 1 {
		t.Errorf("shadow %+v", mon.Shadow[0])
	}
	if !testenv.Poll(10*time.Second, func() bool { return s.metrics(t)[waiting] == 0 }) {
		t.Errorf("%s = %v after the shadow's worker ran them all; want 0", waiting, s.metrics(t)[waiting])
	}
}
