// Command inferq is a queue-based batch inference server for ONNX models.
//
//	inferq serve   everything in one process: embedded NATS, storage, API, workers
//	inferq api     the HTTP API alone, against external NATS and storage
//	inferq worker  the model workers alone, against external NATS and storage
//
// Every flag can also be set by an INFERQ_* environment variable: --nats-url
// by INFERQ_NATS_URL, and so on. A flag given on the command line wins.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/inferq/inferq/onnx"
)

const usage = `inferq: queue-based batch inference for ONNX models

Usage:
  inferq serve  [flags]   API, workers, embedded NATS and storage in one process
  inferq api    [flags]   the HTTP API, against external NATS (--nats)
  inferq worker [flags]   model workers, against external NATS (--nats)
  inferq scaler [flags]   desired worker replicas per model, for KEDA and Prometheus
  inferq version

Client commands (--url or INFERQ_URL, --token or INFERQ_TOKEN):
  inferq submit --model M [--wait] [FILE]   submit a V2 request as a job
  inferq get [--result] JOB_ID             a job's record or result
  inferq watch MODEL                       print a model's results as they finish
  inferq batch --model M FILE.jsonl        run a batch file, with progress
  inferq dlq list [--model M]              failed jobs, with why
  inferq dlq replay --model M ID...|--all  queue failed jobs again, as new jobs
  inferq monitor baseline --model M --batch ID|--since 1h   take the drift baseline
  inferq monitor show --model M            what the model was asked and answered
  inferq traffic MODEL [2=90 3=10] [--shadow 4]   read or set a model's traffic split
  inferq perf --model M [--binary] [--onnx F]   load a model, step by step: throughput and latency

Run 'inferq <command> -h' for a command's flags. Every flag has an INFERQ_*
environment variable (--max-body -> INFERQ_MAX_BODY).
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "serve":
		err = serveCmd(ctx, args[1:], stderr, modeServe, nil)
	case "api":
		err = serveCmd(ctx, args[1:], stderr, modeAPI, nil)
	case "worker":
		err = serveCmd(ctx, args[1:], stderr, modeWorker, nil)
	case "scaler":
		err = scalerCmd(ctx, args[1:], stderr, nil)
	case "submit":
		err = submitCmd(ctx, args[1:], os.Stdin, stdout, stderr)
	case "get":
		err = getCmd(ctx, args[1:], stdout, stderr)
	case "watch":
		err = watchCmd(ctx, args[1:], stdout, stderr)
	case "batch":
		err = batchCmd(ctx, args[1:], stdout, stderr)
	case "dlq":
		err = dlqCmd(ctx, args[1:], stdout, stderr)
	case "traffic":
		err = trafficCmd(ctx, args[1:], stdout, stderr)
	case "monitor":
		err = monitorCmd(ctx, args[1:], stdout, stderr)
	case "perf":
		err = perfCmd(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "inferq", version())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "inferq: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, errJobFailed) {
		return 1 // the record says why
	}
	if err != nil {
		fmt.Fprintf(stderr, "inferq %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// parseFlags applies INFERQ_* variables, then the command line.
func parseFlags(fs *flag.FlagSet, args []string) error {
	var bad []string
	fs.VisitAll(func(f *flag.Flag) {
		env := "INFERQ_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if err := f.Value.Set(v); err != nil {
				bad = append(bad, fmt.Sprintf("%s=%q: %v", env, v, err))
			}
		}
	})
	if len(bad) > 0 {
		return errors.New(strings.Join(bad, "; "))
	}
	return fs.Parse(args)
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// findORT locates the ONNX Runtime library: ONNXRUNTIME_LIB, then beside
// the binary (build/ of a source tree, lib/ of an install), then the
// system's folders.
func findORT() (string, error) {
	var candidates []string
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			dir := filepath.Dir(exe)
			candidates = append(candidates,
				filepath.Join(dir, "..", "build", "onnxruntime", onnx.LibraryName),
				filepath.Join(dir, "..", "lib", onnx.LibraryName),
				filepath.Join(dir, onnx.LibraryName),
			)
		}
	}
	return onnx.FindLibrary(os.Getenv("ONNXRUNTIME_LIB"), candidates)
}

func version() string {
	return "0.1.0-dev"
}
