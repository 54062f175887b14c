// Command gen writes the models the Python client's tests serve beside the
// bundled iris: identities, one input of each V2 datatype passed through
// to an output, shaped [batch, 2].
//
//	go run ./clients/python/tests/gen
package main

import (
	"log"
	"os"
	"path/filepath"
	"runtime"

	"github.com/inferq/inferq/internal/onnxbuild"
)

func main() {
	_, self, _, _ := runtime.Caller(0)
	out := filepath.Join(filepath.Dir(self), "..", "models", "identities", "1", "model.onnx")
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(out, onnxbuild.Identities(), 0o644); err != nil {
		log.Fatal(err)
	}
}
