package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"mime"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/inferq/inferq/client"
	"github.com/inferq/inferq/record"
)

// clientFlags are the flags every client command takes.
type clientFlags struct {
	url, token string
}

func (f *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "url", "http://localhost:8080", "inferq API URL")
	fs.StringVar(&f.token, "token", "", "API token, sent as a bearer token")
}

func (f *clientFlags) client() (*client.Client, error) { return client.New(f.url, f.token) }

// errJobFailed makes a client command exit 1 after printing the record.
var errJobFailed = errors.New("the job did not succeed")

func printJSON(w io.Writer, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(w, "%s\n", b)
}

// submitCmd: inferq submit --model M [--wait] [FILE]. The request is a
// V2 request in FILE, or on standard input.
func submitCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inferq submit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	model := fs.String("model", "", "model to run the request on (required)")
	version := fs.Int64("version", 0, "model version; 0 for the default")
	wait := fs.Bool("wait", false, "wait for the job and print its result (or its record, if it did not succeed)")
	priority := fs.String("priority", "", "high or normal")
	timeout := fs.Duration("timeout", 0, "expire the job if it has not started within this")
	key := fs.String("idempotency-key", "", "a repeat with the same key answers the same job")
	file := fs.String("file", "", "send this file (a picture, a WAV) as it is, its media type from its name, to a model or pipeline of one BYTES input")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: inferq submit --model M [flags] [FILE]\n       inferq submit --model M --file photo.jpg [flags]\n\nSubmits the V2 request in FILE (or standard input), or a file as it is, as a job and prints its record.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *model == "" || fs.NArg() > 1 || *file != "" && fs.NArg() > 0 {
		fs.Usage()
		return errors.New("--model is required, and at most one FILE, or --file")
	}
	in := stdin
	contentType := ""
	if *file != "" {
		if contentType = fileMediaType(*file); contentType == "" {
			return fmt.Errorf("--file %s: its media type is not known from its name; name it .jpg, .png, .webp, .gif, .bmp or .wav", *file)
		}
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	} else if fs.NArg() == 1 && fs.Arg(0) != "-" {
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	body, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("read the request: %w", err)
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	rec, err := c.Submit(ctx, *model, body, client.JobOptions{Version: *version, Priority: *priority, Timeout: *timeout, IdempotencyKey: *key, ContentType: contentType})
	if err != nil {
		return err
	}
	if !*wait {
		printJSON(stdout, rec)
		return nil
	}
	return printOutcome(ctx, c, rec.ID, stdout)
}

// fileMediaType is a file's media type from its name: the types inferq
// decodes, then what the system knows; "" when neither does.
func fileMediaType(name string) string {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".jpg", ".jpeg":
		return "image/jpeg"
	case ".png":
		return "image/png"
	case ".webp":
		return "image/webp"
	case ".gif":
		return "image/gif"
	case ".bmp":
		return "image/bmp"
	case ".wav":
		return "audio/wav"
	}
	return mime.TypeByExtension(filepath.Ext(name))
}

// printOutcome waits for a job and prints its result, or its record when
// it did not succeed.
func printOutcome(ctx context.Context, c *client.Client, id string, stdout io.Writer) error {
	rec, err := c.Await(ctx, id)
	if err != nil {
		return err
	}
	if rec.Status != record.Succeeded {
		printJSON(stdout, rec)
		return errJobFailed
	}
	res, err := c.Result(ctx, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", res)
	return nil
}

// getCmd: inferq get [--wait D] [--result] ID.
func getCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inferq get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	wait := fs.Duration("wait", 0, "wait up to this long for the job to finish")
	result := fs.Bool("result", false, "print the job's result instead of its record, waiting for it")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: inferq get [flags] JOB_ID\n\nPrints a job's record, or with --result its result.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("one JOB_ID is required")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if *result {
		return printOutcome(ctx, c, fs.Arg(0), stdout)
	}
	rec, err := c.Job(ctx, fs.Arg(0), *wait)
	if err != nil {
		return err
	}
	printJSON(stdout, rec)
	return nil
}

// watchCmd: inferq watch [--from start|ID] MODEL. Prints each finished
// job of the model, one JSON line each, until interrupted.
func watchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inferq watch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	from := fs.String("from", "", `"start" to replay what the server keeps, an event id to resume after it; empty for from now`)
	count := fs.Int("n", 0, "stop after this many results; 0 for never")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: inferq watch [flags] MODEL\n\nPrints each finished job of MODEL as it finishes, a JSON line each (the record, with the response).")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("one MODEL is required")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	seen := 0
	errEnough := errors.New("enough")
	err = c.Watch(ctx, fs.Arg(0), *from, func(ev client.Event) error {
		out.Write(ev.Data)
		out.WriteByte('\n')
		seen++
		if *count > 0 && seen >= *count {
			return errEnough
		}
		return out.Flush()
	})
	if errors.Is(err, errEnough) {
		return nil
	}
	return err
}

// batchCmd: inferq batch --model M [--output OUT] FILE, or --source
// PREFIX instead of FILE. Runs a batch file, or a batch over stored
// objects, shows progress while it runs (or writes the lines as they
// finish, --follow), and writes its output.
func batchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inferq batch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	model := fs.String("model", "", "model or pipeline to run the batch on (required)")
	source := fs.String("source", "", "instead of a FILE: the objects under this prefix, one line each (inputs/{model}/... of the server's store, or s3://bucket/prefix/ the server allows)")
	followLines := fs.Bool("follow", false, "write each output line as soon as it has finished (with its line number), instead of the whole output at the end")
	format := fs.String("format", "jsonl", "output format: jsonl, or parquet (a row per line, a column per output)")
	output := fs.String("output", "", "where to write the output; default standard output")
	errs := fs.String("errors", "", "also write the failed lines alone to this file, each with its input line number (JSON Lines; empty when none failed)")
	quiet := fs.Bool("quiet", false, "no progress bars")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: inferq batch --model M [flags] FILE.jsonl\n       inferq batch --model M --source PREFIX [flags]\n\nRuns a batch file (one V2 request per line, with an optional custom_id), or a batch over stored objects (a line per object, its key the custom_id).")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *model == "" || (*source == "") == (fs.NArg() != 1) || *source != "" && fs.NArg() != 0 {
		fs.Usage()
		return errors.New("--model, and one FILE or --source, are required")
	}
	if *format != "jsonl" && *format != "parquet" {
		return fmt.Errorf("--format %q: jsonl or parquet", *format)
	}
	if *followLines && *format != "jsonl" {
		return errors.New("--follow writes JSON Lines as they come: leave --format out")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	progress := io.Discard
	if !*quiet {
		progress = stderr
	}
	var rec *record.BatchRecord
	if *source != "" {
		if rec, err = c.CreateSourceBatch(ctx, *model, *source); err != nil {
			return err
		}
		fmt.Fprintf(progress, "batch %s: the objects under %s, a line each\n", rec.ID, *source)
	} else if rec, err = uploadBatch(ctx, c, *model, fs.Arg(0), progress); err != nil {
		return err
	}
	interrupted := func() error {
		return fmt.Errorf("interrupted; batch %s goes on, and its output will be at /v1/batches/%s/output", rec.ID, rec.ID)
	}
	write := func(w io.Writer) error { return c.BatchOutput(ctx, rec.ID, w) }
	if *format == "parquet" {
		write = func(w io.Writer) error { return c.BatchParquet(ctx, rec.ID, w) }
	}
	if *followLines {
		write = func(w io.Writer) error { return c.FollowBatch(ctx, rec.ID, w) }
	} else {
		bar := progressbar.NewOptions64(-1, progressbar.OptionSetWriter(progress), progressbar.OptionSetDescription("running"),
			progressbar.OptionShowCount(), progressbar.OptionOnCompletion(func() { fmt.Fprintln(progress) }))
		for !rec.Final() {
			select {
			case <-ctx.Done():
				return interrupted()
			case <-time.After(500 * time.Millisecond):
			}
			if rec, err = c.Batch(ctx, rec.ID); err != nil {
				return err
			}
			if rec.Read() {
				bar.ChangeMax64(rec.Counts.Total)
			}
			bar.Set64(rec.Counts.Done())
		}
		bar.Finish()
	}
	if *output == "" {
		err = write(stdout)
	} else {
		err = writeTo(*output, write)
	}
	if ctx.Err() != nil {
		return interrupted()
	}
	if err != nil {
		return err
	}
	if rec, err = c.Batch(ctx, rec.ID); err != nil {
		return err
	}
	fmt.Fprintf(progress, "batch %s %s: %d succeeded, %d failed, %d cancelled\n", rec.ID, rec.Status, rec.Counts.Succeeded, rec.Counts.Failed, rec.Counts.Cancelled)
	if *errs != "" && rec.Read() {
		if err := writeTo(*errs, func(w io.Writer) error { return c.BatchErrors(ctx, rec.ID, w) }); err != nil {
			return err
		}
	}
	if rec.Status == record.BatchFailed {
		// Every line failed (the output, written, says why), or the
		// batch could not be read to its end.
		return fmt.Errorf("batch %s failed: %s", rec.ID, rec.Error)
	}
	return nil
}

// uploadBatch uploads a batch file to model, showing its progress.
func uploadBatch(ctx context.Context, c *client.Client, model, path string, progress io.Writer) (*record.BatchRecord, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	upload := progressbar.NewOptions64(st.Size(), progressbar.OptionSetWriter(progress), progressbar.OptionShowBytes(true),
		progressbar.OptionSetDescription("uploading"), progressbar.OptionOnCompletion(func() { fmt.Fprintln(progress) }))
	body := progressbar.NewReader(f, upload)
	rec, err := c.CreateBatch(ctx, model, &body)
	if err != nil {
		return nil, err
	}
	upload.Finish()
	fmt.Fprintf(progress, "batch %s: %d lines in %d jobs\n", rec.ID, rec.Counts.Total, rec.Jobs)
	return rec, nil
}

// writeTo creates the file at path and has write fill it.
func writeTo(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
