package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
)

const monitorUsage = `usage: inferq monitor baseline --model M (--batch ID | --since 1h) [--version V]
       inferq monitor show     --model M

baseline takes the model version's drift baseline from the statistics of a
batch file's jobs, or of the last span of time, and keeps it beside the
model's results; from then on GET /v1/models/{model}/monitoring and
inferq_drift_psi compare each window with it. show prints what the model
was asked and answered over the last 5 minutes, hour and day, as JSON.
`

// monitorCmd: inferq monitor baseline|show.
func monitorCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "baseline" && args[0] != "show") {
		fmt.Fprint(stderr, monitorUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return flag.ErrHelp
		}
		return errors.New("want baseline or show")
	}
	sub := args[0]
	fs := flag.NewFlagSet("inferq monitor "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	model := fs.String("model", "", "the model (required)")
	batch := fs.String("batch", "", "baseline: the batch file whose jobs are the baseline")
	since := fs.String("since", "", "baseline: the span of time whose jobs are the baseline, such as 1h (at most 24h)")
	version := fs.String("version", "", "baseline: the model version (default: the default version)")
	fs.Usage = func() {
		fmt.Fprint(stderr, monitorUsage+"\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *model == "" || fs.NArg() > 0 {
		return errors.New("--model is required, and nothing else")
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	var out []byte
	if sub == "baseline" {
		if (*batch == "") == (*since == "") {
			return errors.New("give one of --batch and --since")
		}
		out, err = c.SetBaseline(ctx, *model, *batch, *since, *version)
	} else {
		out, err = c.Monitoring(ctx, *model)
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}
