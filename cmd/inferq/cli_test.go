package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
	"github.com/inferq/inferq/tensor"
)

// The client commands, run as a user runs them: the built binary, against
// a server, configured through INFERQ_URL.
func TestCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	inferqBinary(t)
	s := startServe(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)}))
	d := openDirect(t, irisPath(t))
	cli := func(stdin string, args ...string) (string, string, int) {
		t.Helper()
		return runCLI(t, s.url, stdin, args...)
	}
	req := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[6.3,3.3,6.0,2.5]}]}`
	want := d.run(t, []tensor.Tensor{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 4}, Data: f32(6.3, 3.3, 6.0, 2.5)}})

	// submit --wait prints the result.
	out, errOut, code := cli(req, "submit", "--model", "iris", "--wait")
	if code != 0 {
		t.Fatalf("submit --wait: %d %s %s", code, out, errOut)
	}
	resp, err := tensor.DecodeResponse([]byte(out))
	if err != nil {
		t.Fatalf("submit --wait printed %q: %v", out, err)
	}
	assertClose(t, "submit --wait", resp.Outputs, want)

	// submit prints the record; get reads it back.
	out, _, code = cli(req, "submit", "--model", "iris", "--priority", "high")
	var rec record.Record
	if code != 0 || json.Unmarshal([]byte(out), &rec) != nil || rec.Priority != record.High {
		t.Fatalf("submit: %d %s", code, out)
	}
	out, _, code = cli("", "get", "--wait", "10s", rec.ID)
	if code != 0 || json.Unmarshal([]byte(out), &rec) != nil || rec.Status != record.Succeeded {
		t.Fatalf("get: %d %s", code, out)
	}
	if out, _, code = cli("", "get", "--result", rec.ID); code != 0 || !strings.Contains(out, `"model_name":"iris"`) {
		t.Fatalf("get --result: %d %s", code, out)
	}

	// Errors: a bad request and a missing flag say why and exit non-zero.
	if _, errOut, code = cli(`{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, "submit", "--model", "iris"); code != 1 || !strings.Contains(errOut, "dimension 1 must be 4") {
		t.Fatalf("bad request: %d %s", code, errOut)
	}
	if _, errOut, code = cli(req, "submit"); code != 1 || !strings.Contains(errOut, "--model is required") {
		t.Fatalf("no model: %d %s", code, errOut)
	}

	// watch replays the results from the start.
	out, errOut, code = cli("", "watch", "--from", "start", "-n", "2", "iris")
	if code != 0 || strings.Count(out, "\n") != 2 || !strings.Contains(out, `"status":"succeeded"`) {
		t.Fatalf("watch: %d %s %s", code, out, errOut)
	}

	// batch uploads a file and writes the output in order.
	dir := t.TempDir()
	in, output, errsFile := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl"), filepath.Join(dir, "errors.jsonl")
	var file strings.Builder
	for i := range 50 {
		fmt.Fprintf(&file, `{"custom_id":"c%d",%s`+"\n", i, req[1:])
	}
	file.WriteString(`{"custom_id":"bad","inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}` + "\n")
	writeFile(t, in, []byte(file.String()))
	if _, errOut, code = cli("", "batch", "--model", "iris", "--output", output, "--errors", errsFile, in); code != 0 || !strings.Contains(errOut, "50 succeeded, 1 failed") {
		t.Fatalf("batch: %d %s", code, errOut)
	}
	if b, err := os.ReadFile(errsFile); err != nil || !strings.HasPrefix(string(b), `{"custom_id":"bad","line":51,"error":"line 51: `) || strings.Count(string(b), "\n") != 1 {
		t.Fatalf("--errors file: %s %v", b, err)
	}
	f, err := os.Open(output)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	i := 0
	for ; sc.Scan() && i < 50; i++ {
		var o batchOut
		if err := json.Unmarshal(sc.Bytes(), &o); err != nil || string(o.CustomID) != fmt.Sprintf(`"c%d"`, i) || len(o.Response) == 0 {
			t.Fatalf("output line %d: %s", i, sc.Bytes())
		}
	}
	if i != 50 || !strings.Contains(sc.Text(), `"error"`) || sc.Scan() {
		t.Fatalf("%d output lines, then %q: want 50 responses and the bad line's error", i, sc.Text())
	}
}
