package main

// Go's soft memory limit (--memory-limit): without one, the Go heap of a
// long-running server grows with its peaks and is returned to the system
// slowly, so that a container's memory limit is met by the OOM killer
// rather than by the garbage collector.

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime/debug"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/dustin/go-humanize"
)

// memoryShare is the part of a container's memory limit that --memory-limit
// auto gives Go. ONNX Runtime's sessions and buffers are not Go memory, so
// a process that runs models leaves them half; the API alone has little
// besides Go.
func memoryShare(m mode) float64 {
	if m == modeAPI {
		return 0.75
	}
	return 0.5
}

// setMemoryLimit applies --memory-limit: "auto" keeps $GOMEMLIMIT when it is
// set and otherwise takes share of the memory limit container reports
// (nothing when there is none), "off" leaves Go's limit as the
// environment set it, and a size (800MiB, 2GiB) sets that. It returns
// what restores the limit it found, for a process that serves more than
// once (tests).
func setMemoryLimit(value string, share float64, container memlimit.Provider, log *slog.Logger) (restore func(), err error) {
	previous := debug.SetMemoryLimit(-1)
	restore = func() { debug.SetMemoryLimit(previous) }
	var limit int64
	switch value {
	case "off":
		return func() {}, nil
	case "auto", "":
		if env := os.Getenv("GOMEMLIMIT"); env != "" {
			log.Info("Go memory limit from GOMEMLIMIT", "limit", env)
			return func() {}, nil
		}
		available, err := container()
		if errors.Is(err, memlimit.ErrNoLimit) || errors.Is(err, memlimit.ErrNoCgroup) {
			return func() {}, nil
		}
		if err != nil {
			// Not fatal: the process runs as it would have without.
			log.Warn("no Go memory limit: the container's memory limit could not be read; set --memory-limit (or GOMEMLIMIT) by hand", "err", err)
			return func() {}, nil
		}
		limit = int64(math.Min(float64(available)*share, math.MaxInt64))
		log.Info("Go memory limit from the container's", "limit", humanize.IBytes(uint64(limit)), "container", humanize.IBytes(available), "share", share)
	default:
		n, err := humanize.ParseBytes(value)
		if err != nil || n == 0 || n > math.MaxInt64 {
			return nil, fmt.Errorf("--memory-limit %q: want auto, off or a size such as 800MiB or 2GiB", value)
		}
		limit = int64(n)
		log.Info("Go memory limit", "limit", humanize.IBytes(n))
	}
	debug.SetMemoryLimit(limit)
	return restore, nil
}
