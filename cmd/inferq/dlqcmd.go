package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/inferq/inferq/client"
	"github.com/inferq/inferq/record"
)

const dlqUsage = `usage: inferq dlq list   [--model M] [--json]
       inferq dlq replay --model M (--all | JOB_ID...)

Every job that ends failed is kept, with why, in the model's dead letters
for 14 days. list prints them, oldest first (every model's, without
--model; those the token may use); replay queues their requests
again, each as a new job whose record names the failed one in replay_of,
and prints "FAILED_ID NEW_ID" per job.
`

// dlqCmd: inferq dlq list|replay.
func dlqCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "replay") {
		fmt.Fprint(stderr, dlqUsage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return flag.ErrHelp
		}
		return errors.New("want list or replay")
	}
	sub := args[0]
	fs := flag.NewFlagSet("inferq dlq "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	model := fs.String("model", "", "the model whose dead letters to use (required for replay)")
	asJSON := fs.Bool("json", false, "list: print each dead letter as a JSON line")
	all := fs.Bool("all", false, "replay: every dead letter of the model")
	fs.Usage = func() {
		fmt.Fprint(stderr, dlqUsage+"\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	if sub == "list" {
		if fs.NArg() > 0 {
			return errors.New("list takes no arguments")
		}
		models := []string{*model}
		if *model == "" {
			if models, err = c.Models(ctx); err != nil {
				return err
			}
		}
		return listDeadLetters(ctx, c, models, *asJSON, stdout)
	}
	if *model == "" {
		fs.Usage()
		return errors.New("replay needs --model")
	}
	ids := fs.Args()
	switch {
	case *all && len(ids) > 0:
		return errors.New("give --all or job ids, not both")
	case *all:
		if err := eachDeadLetter(ctx, c, *model, func(d record.DeadLetter) { ids = append(ids, d.JobID) }); err != nil {
			return err
		}
	case len(ids) == 0:
		fs.Usage()
		return errors.New("give the job ids to replay, or --all")
	}
	var failed int
	for _, id := range ids {
		rec, err := c.Replay(ctx, *model, id)
		if err != nil {
			fmt.Fprintf(stderr, "inferq dlq replay: %s: %v\n", id, err)
			failed++
			continue
		}
		fmt.Fprintf(stdout, "%s %s\n", id, rec.ID)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d not replayed", failed, len(ids))
	}
	return nil
}

func listDeadLetters(ctx context.Context, c *client.Client, models []string, asJSON bool, stdout io.Writer) error {
	if asJSON {
		for _, m := range models {
			if err := eachDeadLetter(ctx, c, m, func(d record.DeadLetter) { printJSON(stdout, d) }); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODEL\tJOB_ID\tFAILED_AT\tATTEMPTS\tERROR")
	var err error
	for _, m := range models {
		err = eachDeadLetter(ctx, c, m, func(d record.DeadLetter) {
			msg := d.Error
			if len(msg) > 100 {
				msg = msg[:100] + "…"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", d.Model, d.JobID, d.FailedAt.Format(time.RFC3339), d.Attempts, strings.ReplaceAll(msg, "\t", " "))
		})
		if err != nil {
			break
		}
	}
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	return err
}

// eachDeadLetter calls fn with every dead letter of model, page by page.
func eachDeadLetter(ctx context.Context, c *client.Client, model string, fn func(record.DeadLetter)) error {
	var after uint64
	for {
		page, err := c.DeadLetters(ctx, model, after, 1000)
		if err != nil {
			return err
		}
		for _, d := range page {
			fn(d)
			after = d.Seq
		}
		if len(page) < 1000 {
			return nil
		}
	}
}
