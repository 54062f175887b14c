package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/inferq/inferq/traffic"
)

const trafficUsage = `usage: inferq traffic MODEL                           show the model's traffic split
       inferq traffic MODEL 2=90 3=10 [--shadow 4]     set it: shares of unpinned jobs by version
       inferq traffic MODEL --shadow 4                 every version stays as is, 4 a shadow
       inferq traffic MODEL --reset                    back to config.yaml's split (or none)

Every API process follows a change within seconds; it outlives restarts.
A rollback is the old split set again.
`

// trafficCmd reads or sets a model's traffic split.
func trafficCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inferq traffic", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf clientFlags
	cf.register(fs)
	shadow := fs.String("shadow", "", "shadow versions, comma-separated: every unpinned job also runs on them, off the answer's path")
	reset := fs.Bool("reset", false, "remove the split set at run time: config.yaml's applies again")
	fs.Usage = func() {
		fmt.Fprint(stderr, trafficUsage+"\n")
		fs.PrintDefaults()
	}
	// Flags may come after the model and the shares.
	var pos []string
	for rest := args; ; {
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) == 0 {
		fs.Usage()
		return errors.New("name the model")
	}
	model, shares := pos[0], pos[1:]
	c, err := cf.client()
	if err != nil {
		return err
	}
	var out []byte
	switch {
	case *reset:
		if len(shares) > 0 || *shadow != "" {
			return errors.New("--reset takes nothing else")
		}
		out, err = c.ResetTraffic(ctx, model)
	case len(shares) == 0 && *shadow == "":
		out, err = c.Traffic(ctx, model)
	default:
		split := traffic.Split{}
		for _, s := range shares {
			v, share, ok := strings.Cut(s, "=")
			n, perr := strconv.Atoi(share)
			if !ok || perr != nil {
				return fmt.Errorf("%q: give VERSION=SHARE, such as 2=90", s)
			}
			if split.Traffic == nil {
				split.Traffic = map[string]int{}
			}
			split.Traffic[v] = n
		}
		if *shadow != "" {
			split.Shadow = strings.Split(*shadow, ",")
		}
		out, err = c.SetTraffic(ctx, model, split)
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}
