// Package onnx runs ONNX models with ONNX Runtime: it finds and loads the
// shared library, reads a model's inputs and outputs, and runs sessions on
// tensor.Tensor values.
package onnx

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// LibraryName is the file name of the ONNX Runtime shared library on Linux.
const LibraryName = "libonnxruntime.so.1"

// ErrLibraryNotFound is returned when no ONNX Runtime library is found.
var ErrLibraryNotFound = errors.New("ONNX Runtime shared library not found")

// FindLibrary returns the ONNX Runtime library to load: explicit when set
// (the value of ONNXRUNTIME_LIB), else the first of candidates that exists,
// else the first found in the system's library folders. When none is found
// the error lists every place looked and how to get the library.
func FindLibrary(explicit string, candidates []string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("%w at ONNXRUNTIME_LIB=%s: %v", ErrLibraryNotFound, explicit, err)
		}
		return explicit, nil
	}
	looked := []string{"ONNXRUNTIME_LIB (not set)"}
	var system []string
	for _, dir := range filepath.SplitList(os.Getenv("LD_LIBRARY_PATH")) {
		if dir != "" {
			system = append(system, dir)
		}
	}
	system = append(system, "/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib", "/opt/onnxruntime/lib")
	for _, dir := range system {
		for _, name := range []string{LibraryName, "libonnxruntime.so"} {
			candidates = append(candidates, filepath.Join(dir, name))
		}
	}
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
		looked = append(looked, c)
	}
	return "", fmt.Errorf("%w. Looked in:\n  %s\nTo get it: run `make build` in the inferq source tree (it installs ONNX Runtime 1.30.0 into build/onnxruntime), "+
		"or download onnxruntime-linux-x64-1.30.0.tgz from https://github.com/microsoft/onnxruntime/releases and set "+
		"ONNXRUNTIME_LIB to the path of its lib/libonnxruntime.so.1.30.0", ErrLibraryNotFound, strings.Join(looked, "\n  "))
}

// ONNX Runtime keeps one environment per process. The onnxruntime_go
// binding holds it in package state, so Open counts its users here and only
// the last Close tears it down.
var env struct {
	sync.Mutex
	users int
	path  string
}

// Runtime is a handle on the process's ONNX Runtime environment. It is safe
// for concurrent use.
type Runtime struct {
	once sync.Once
}

// Open loads the library at path (see FindLibrary) and returns a handle on
// the process's ONNX Runtime environment. Every Runtime must be closed.
// Opening a second library path in one process is an error.
func Open(path string) (*Runtime, error) {
	env.Lock()
	defer env.Unlock()
	if env.users > 0 {
		if path != env.path {
			return nil, fmt.Errorf("ONNX Runtime is already loaded from %s; cannot also load %s", env.path, path)
		}
		env.users++
		return &Runtime{}, nil
	}
	ort.SetSharedLibraryPath(path)
	// ONNX Runtime's own log goes to stderr, unstructured; every error it
	// logs is also returned to inferq, which logs it with its context.
	if err := ort.InitializeEnvironment(ort.WithLogLevelFatal()); err != nil {
		return nil, fmt.Errorf("load ONNX Runtime from %s: %w", path, err)
	}
	_ = ort.DisableTelemetry()
	env.users = 1
	env.path = path
	return &Runtime{}, nil
}

// Version is the loaded library's version, such as "1.30.0".
func (r *Runtime) Version() string { return ort.GetVersion() }

// Close releases this handle; the environment is destroyed with the last.
// Sessions must be closed first.
func (r *Runtime) Close() error {
	var err error
	r.once.Do(func() {
		env.Lock()
		defer env.Unlock()
		env.users--
		if env.users == 0 {
			err = ort.DestroyEnvironment()
		}
	})
	return err
}
