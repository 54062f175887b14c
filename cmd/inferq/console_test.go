package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
)

// chromium is Debian's headless browser, which `make test` installs where
// missing (make chromium).
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("INFERQ_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p != "" {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	t.Fatal("no chromium: run `make chromium` (make test does: apt-get install chromium), or set INFERQ_CHROMIUM")
	return ""
}

// The console, in a real headless browser: an operator signs in with a
// token, sees the models and their figures move as jobs run, opens a
// job with its result, replays a failed job from the dead letters; a
// token scoped to one model sees nothing of another. The page carries a
// strict Content-Security-Policy and no inline script. Screenshots go to
// build/test-output/console.
func TestConsole(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a browser; skipped with -short")
	}
	const ops, team = "0ps0ps0ps0ps0ps0ps0ps0ps0ps0ps00", "teamteamteamteamteamteamteamteam"
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, []byte(ops+"\n"+team+" iris\n"))
	lookup := filepath.Join(t.TempDir(), "lookup.onnx")
	writeFile(t, lookup, onnxbuild.LookupRows(10))
	s := startServe(t, testenv.ModelRepo(t, map[string]string{
		"iris/1/model.onnx": "@" + irisPath(t), "iris/2/model.onnx": "@" + irisPath(t), "lookup/1/model.onnx": "@" + lookup, "lookup/config.yaml": "max_attempts: 1\n",
		"species/pipeline.yaml": "steps:\n  - {name: classify, model: iris, inputs: {x: $x}}\n  - {name: top, op: topk, with: {k: 1}, inputs: {x: classify.probabilities}}\noutputs: {p: top.values}\n",
	}), "--tokens-file", tokens)
	out := filepath.Join(testenv.Root(t), "build", "test-output", "console")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}

	page := do(t, "GET", s.url+"/", nil)
	if page.code != 200 || !strings.Contains(page.header.Get("Content-Security-Policy"), "script-src 'self'") ||
		regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`).Match(page.body) || strings.Contains(string(page.body), " on") && regexp.MustCompile(`\son[a-z]+=`).Match(page.body) {
		t.Fatalf("GET /: %d, CSP %q, body:\n%s", page.code, page.header.Get("Content-Security-Policy"), page.body)
	}

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 1000))...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 2*time.Minute)
	defer cancelTimeout()
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			html, _ := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("main")))
			t.Fatalf("%s: %v\npage: %.2000s", what, err, html)
		}
	}
	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: PNG
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		writeFile(t, filepath.Join(out, name+".png"), png)
	}
	text := func(sel string) string {
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			return ""
		}
		return s
	}
	// goTo moves to a view of the page: a change of the hash, which is
	// no navigation (the document stays, and no load event comes).
	goTo := func(hash string) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[any](fmt.Sprintf("location.hash = %q", hash))); err != nil {
			t.Fatalf("go to %s: %v", hash, err)
		}
	}
	signIn := func(token string) {
		t.Helper()
		run("sign in",
			chromedp.WaitVisible(chromedp.ID("token")),
			chromedp.SendKeys(chromedp.ID("token"), token),
			chromedp.Click(chromedp.CSS(`form.signin button[type="submit"]`)),
			chromedp.WaitVisible(chromedp.CSS(`[data-model="iris"]`)))
	}

	// The operator signs in and sees every model.
	run("open", chromedp.Navigate(s.url+"/"), chromedp.WaitVisible(chromedp.ID("token")))
	signIn(ops)
	run("the lookup model", chromedp.WaitVisible(chromedp.CSS(`[data-model="lookup"]`)))
	run("the pipeline", chromedp.WaitVisible(chromedp.CSS(`[data-steps="species"]`)))
	if got := text(`[data-steps="species"]`); got != "pipeline: classify (model iris) → top (topk)" {
		t.Errorf("the pipeline's card says %q", got)
	}

	// The page is watched: the sampler follows the results from its first
	// sample on, which the page shows.
	eventually(t, 30*time.Second, "the first sample reaches the page", func() bool {
		return text(`[data-live="iris"] [data-stat="pending"]`) == "0"
	})
	// Jobs run: the figures move, pushed to the page.
	var ids []string
	for range 30 {
		ids = append(ids, acceptedID(t, as(t, ops, "POST", s.url+"/v1/models/iris/jobs", []byte(irisJob))))
	}
	eventually(t, 30*time.Second, "the page counts the 30 jobs finished", func() bool {
		return text(`[data-live="iris"] [data-stat="finished"]`) == "30"
	})
	shot("overview")

	// A job's page, with its result.
	goTo("#/job/" + ids[0])
	run("a job", chromedp.WaitVisible(chromedp.Search("//h2[text()='Result']")))
	if got := text("main"); !strings.Contains(got, "probabilities") || !strings.Contains(got, "succeeded") {
		t.Errorf("job page: %.500s", got)
	}
	shot("job")

	// A failed job, replayed from the dead letters.
	poison := acceptedID(t, as(t, ops, "POST", s.url+"/v1/models/lookup/jobs", []byte(`{"inputs":[{"name":"idx","shape":[1],"datatype":"INT64","data":[42]}]}`)))
	var rec record.Record
	as(t, ops, "GET", s.url+"/v1/jobs/"+poison+"?wait=30s", nil).json(t, &rec)
	if rec.Status != record.Failed {
		t.Fatalf("poison job: %+v", rec)
	}
	goTo("#/dead-letters/lookup")
	run("dead letters", chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`[data-replay="%s"]`, poison))))
	shot("dead-letters")
	run("replay", chromedp.Click(chromedp.CSS(fmt.Sprintf(`[data-replay="%s"]`, poison))),
		chromedp.WaitVisible(chromedp.Search("//p[contains(., 'Replayed as')]")))
	replayed := strings.TrimSpace(strings.TrimPrefix(text(`[role="status"]`), "Replayed as"))
	var again record.Record
	as(t, ops, "GET", s.url+"/v1/jobs/"+replayed, nil).json(t, &again)
	if again.ReplayOf != poison {
		t.Errorf("replayed job %q: %+v, want replay_of %s", replayed, again, poison)
	}

	// A batch's page: its lines as they finish, followed.
	var lines strings.Builder
	for i := range 5 {
		fmt.Fprintf(&lines, `{"custom_id":"row-%d","inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`+"\n", i)
	}
	var batch record.BatchRecord
	as(t, ops, "POST", s.url+"/v1/models/iris/batches", []byte(lines.String())).json(t, &batch)
	goTo("#/batch/" + batch.ID)
	run("a batch's lines", chromedp.WaitVisible(chromedp.CSS(`[data-batch-lines="5"]`)))
	if got := text("main"); !strings.Contains(got, `"row-4"`) || !strings.Contains(got, "probabilities") {
		t.Errorf("batch page: %.800s", got)
	}
	shot("batch")

	// A model's traffic: the split changed from the page, after a
	// confirmation.
	goTo("#/traffic/iris")
	run("the traffic page", chromedp.WaitVisible(chromedp.CSS(`[data-share="1"]`)))
	run("set shares", chromedp.SetValue(chromedp.CSS(`[data-share="1"]`), "10"), chromedp.SetValue(chromedp.CSS(`[data-share="2"]`), "90"),
		chromedp.Click(chromedp.CSS(`[data-apply]`)), chromedp.WaitVisible(chromedp.CSS(`[data-confirm]`)))
	if got := text(".confirm"); !strings.Contains(got, "version 1: 10 %, version 2: 90 %") {
		t.Errorf("the confirmation says %q", got)
	}
	shot("traffic")
	run("confirm", chromedp.Click(chromedp.CSS(`[data-confirm]`)), chromedp.WaitVisible(chromedp.Search("//p[@data-traffic-status and contains(., 'Applied')]")))
	var split struct{ Traffic map[string]int }
	as(t, ops, "GET", s.url+"/v1/models/iris/traffic", nil).json(t, &split)
	if split.Traffic["1"] != 10 || split.Traffic["2"] != 90 {
		t.Errorf("after the console's change, the split is %v", split.Traffic)
	}

	// The recent jobs of a model, by status.
	goTo("#/jobs/iris/succeeded")
	run("recent jobs", chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf(`a[href="#/job/%s"]`, ids[0]))))

	// A token of iris alone sees nothing of lookup.
	goTo("#/")
	run("sign out", chromedp.WaitVisible(chromedp.ID("signout")), chromedp.Click(chromedp.ID("signout")), chromedp.WaitVisible(chromedp.ID("token")))
	signIn(team)
	lookupCards, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('[data-model="lookup"]').length`))
	if err != nil || lookupCards != 0 {
		t.Error("the iris token sees the lookup model")
	}
	goTo("#/dead-letters/lookup")
	run("another model's dead letters", chromedp.WaitVisible(chromedp.CSS(`[role="alert"]`)))
	if got := text(`[role="alert"]`); !strings.Contains(got, "may not use model lookup") {
		t.Errorf("the iris token on lookup's dead letters: %q", got)
	}
	shot("scoped-token")
}
