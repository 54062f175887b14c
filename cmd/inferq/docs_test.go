package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/inferq/inferq/internal/testenv"
)

var shBlock = regexp.MustCompile("(?s)```sh\n(.*?)```")

// The guides' shell examples run as written, against a server serving the
// bundled model, with the inferq binary on PATH; each "# expect: TEXT"
// line of a block must appear in what the block prints.
func TestGuidesRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the guides' examples need %s on PATH", tool)
		}
	}
	bin := inferqBinary(t)
	root := testenv.Root(t)
	s := startServe(t, filepath.Join(root, "testdata", "models"))
	guides, err := filepath.Glob(filepath.Join(root, "docs", "guides", "*.md"))
	if err != nil || len(guides) == 0 {
		t.Fatalf("no guides: %v", err)
	}
	for _, g := range guides {
		t.Run(filepath.Base(g), func(t *testing.T) {
			b, err := os.ReadFile(g)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			for i, m := range shBlock.FindAllSubmatch(b, -1) {
				block := string(m[1])
				cmd := exec.Command("bash", "-eu", "-c", block)
				cmd.Dir = dir
				cmd.Env = append(os.Environ(), "INFERQ_URL="+s.url, "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("block %d failed: %v\n%s\n--- output:\n%s", i+1, err, block, out)
				}
				for _, line := range strings.Split(block, "\n") {
					if want, ok := strings.CutPrefix(strings.TrimSpace(line), "# expect: "); ok && !strings.Contains(string(out), want) {
						t.Errorf("block %d printed no %q:\n%s\n--- output:\n%s", i+1, want, block, out)
					}
				}
			}
		})
	}
}
