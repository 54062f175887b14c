package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/monitor"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// flowers draws n rows of iris measurements around a species' mean.
func flowers(rng *rand.Rand, mean [4]float32, n int) tensor.Tensor {
	t := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{int64(n), 4}}
	for range n {
		for _, m := range mean {
			t.Data = binary.LittleEndian.AppendUint32(t.Data, math.Float32bits(m+float32(rng.NormFloat64())*0.15))
		}
	}
	return t
}

var (
	setosa    = [4]float32{5.0, 3.4, 1.5, 0.25}
	virginica = [4]float32{6.6, 3.0, 5.6, 2.1}
)

type monitoringReply struct {
	Versions []struct {
		Version  string
		Windows  map[string]monitor.Snapshot
		Baseline *monitor.Snapshot
		Drift    map[string][]monitor.Drift
	}
}

func monitoringOf(t *testing.T, s *server, model string) monitoringReply {
	t.Helper()
	var m monitoringReply
	r := do(t, "GET", s.url+"/v1/models/"+model+"/monitoring", nil)
	if r.code != 200 {
		t.Fatalf("monitoring of %s: %d %s", model, r.code, r.body)
	}
	r.json(t, &m)
	return m
}

// rowsSeen is the rows a model's last day of statistics counts.
func rowsSeen(t *testing.T, s *server, model string) int64 {
	m := monitoringOf(t, s, model)
	if len(m.Versions) == 0 {
		return 0
	}
	return m.Versions[0].Windows["24h"].Rows
}

// What models are asked and answer, measured by the workers: class counts
// that match the results, no drift for a second sample of the baseline's
// distribution and drift for a shifted one (baselines taken from a batch
// file and from a span of time), captured jobs that match their results
// at about the sampled share, and a model with string and sequence-of-map
// outputs whose statistics fail none of its jobs.
func TestPredictionMonitoring(t *testing.T) {
	data := t.TempDir()
	forest := testenv.ThirdParty(t, "onnxruntime_go/sklearn_randomforest.onnx")
	s := startServe(t, testenv.ModelRepo(t, map[string]string{
		"same/1/model.onnx": "@" + irisPath(t), "same/config.yaml": "capture:\n  rate: 0.5\n",
		"shifted/1/model.onnx": "@" + irisPath(t),
		"forest/1/model.onnx":  "@" + forest,
	}), "--data", data, "--stats-interval", "200ms")
	rng := rand.New(rand.NewPCG(22, 1))
	submitRows := func(model string, mean [4]float32, jobs int) []string {
		ids := make([]string, jobs)
		for i := range ids {
			ids[i] = s.submit(t, "/v1/models/"+model+"/jobs", requestJSON([]tensor.Tensor{flowers(rng, mean, 4)}))
		}
		for _, id := range ids {
			if rec := s.await(t, id, time.Minute); rec.Status != "succeeded" {
				t.Fatalf("job %s: %+v", id, rec)
			}
		}
		return ids
	}

	// same: the baseline is a batch file of setosas; then more setosas.
	var file bytes.Buffer
	for range 100 {
		file.Write(requestJSON([]tensor.Tensor{flowers(rng, setosa, 4)}))
		file.WriteByte('\n')
	}
	batch := postBatch(t, s, "same", &file)
	if b := awaitBatch(t, s, batch.ID, time.Minute); b.Status != record.BatchSucceeded {
		t.Fatalf("batch: %+v", b)
	}
	eventually(t, 30*time.Second, "the batch's statistics make a baseline", func() bool {
		return do(t, "POST", s.url+"/v1/models/same/monitoring/baseline", []byte(`{"batch":"`+batch.ID+`"}`)).code == 200
	})
	sameIDs := submitRows("same", setosa, 200)

	// shifted: setosas, their span the baseline (by the command line),
	// then as many virginicas.
	submitRows("shifted", setosa, 100)
	eventually(t, 30*time.Second, "shifted's statistics published", func() bool { return rowsSeen(t, s, "shifted") == 400 })
	if out, errOut, code := runCLI(t, s.url, "", "monitor", "baseline", "--model", "shifted", "--since", "1h"); code != 0 || !strings.Contains(out, `"jobs":100`) {
		t.Fatalf("inferq monitor baseline: exit %d, %s %s", code, out, errOut)
	}
	submitRows("shifted", virginica, 100)

	eventually(t, 30*time.Second, "every job's statistics published", func() bool {
		return rowsSeen(t, s, "same") == 4*(100+200) && rowsSeen(t, s, "shifted") == 4*200
	})
	for _, c := range []struct {
		model   string
		drifted bool
	}{{"same", false}, {"shifted", true}} {
		v := monitoringOf(t, s, c.model).Versions[0]
		if v.Baseline == nil || len(v.Drift["5m"]) != 3 { // x; probabilities and label
			t.Fatalf("%s: baseline %v, drift %+v", c.model, v.Baseline != nil, v.Drift)
		}
		for _, d := range v.Drift["5m"] {
			if d.Drifted != c.drifted {
				t.Errorf("%s: %s %s drifted=%v (psi %v, class psi %v), want %v", c.model, d.Kind, d.Tensor, d.Drifted, ptr(d.PSI), ptr(d.ClassPSI), c.drifted)
			}
		}
	}

	// The class counts are the labels the results hold.
	want := map[string]int64{}
	for _, id := range sameIDs {
		for _, o := range s.result(t, id).Outputs {
			if o.Name == "label" {
				for r := 0; r < len(o.Data); r += 8 {
					want[strconv.FormatInt(int64(binary.LittleEndian.Uint64(o.Data[r:])), 10)]++
				}
			}
		}
	}
	var got map[string]int64
	for _, v := range monitoringOf(t, s, "same").Versions {
		base := v.Baseline.Outputs["label"].Classes
		got = map[string]int64{}
		for c, n := range v.Windows["24h"].Outputs["label"].Classes {
			got[c] = n - base[c] // the batch's rows are in the window too
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("label counts %v, the results say %v", got, want)
	}
	m := s.metrics(t)
	if m["inferq_monitor_class_total,class=0,model=same,output=label,version=1"] == 0 {
		t.Errorf("no class counts on /metrics")
	}
	eventually(t, 90*time.Second, "inferq_drift_psi shows the drift", func() bool {
		return s.metrics(t)["inferq_drift_psi,kind=output,measure=classes,model=shifted,tensor=label,version=1"] > monitor.Threshold
	})

	// Capture: about half of same's 200 jobs (batch jobs are not
	// captured), each line its job's request and result.
	captured := 0
	files, _ := filepath.Glob(filepath.Join(data, "objects", "capture", "same", "1", "*", "*.jsonl"))
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var line struct {
				JobID    string `json:"job_id"`
				Version  string
				Request  json.RawMessage
				Response json.RawMessage
			}
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				t.Fatalf("captured line: %v", err)
			}
			captured++
			resp, err := tensor.DecodeResponse(line.Response)
			if err != nil || resp.ID != line.JobID || line.Version != "1" {
				t.Fatalf("captured line of %s: %s (%v)", line.JobID, line.Response, err)
			}
			assertClose(t, "captured "+line.JobID, resp.Outputs, s.result(t, line.JobID).Outputs)
			if req, err := tensor.DecodeRequest(line.Request, tensor.Limits{}); err != nil || len(req.Inputs) != 1 || req.Inputs[0].Name != "x" {
				t.Fatalf("captured request of %s: %s (%v)", line.JobID, line.Request, err)
			}
		}
		fh.Close()
	}
	if captured < 65 || captured > 135 {
		t.Errorf("%d of 200 jobs captured at rate 0.5", captured)
	}

	// A model answering a label and a sequence of maps: its statistics
	// count the maps, and its jobs succeed.
	ref := openDirect(t, forest)
	for i := range 10 {
		id := s.submit(t, "/v1/models/forest/jobs", requestJSON(randomInputs(rng, ref.sig.Inputs, 1+i%3)))
		if rec := s.await(t, id, time.Minute); rec.Status != "succeeded" {
			t.Fatalf("forest job %d: %+v", i, rec)
		}
	}
	eventually(t, 30*time.Second, "the forest's statistics", func() bool { return rowsSeen(t, s, "forest") == 19 }) // 1+2+3+1+2+3+1+2+3+1
	w := monitoringOf(t, s, "forest").Versions[0].Windows["24h"]
	for name, st := range w.Outputs {
		if st.Values == 0 && len(st.Classes) == 0 {
			t.Errorf("forest output %s: %+v", name, st)
		}
	}
}

func ptr(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}
