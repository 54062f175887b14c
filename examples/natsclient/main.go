// Command natsclient submits jobs to inferq straight over NATS and prints
// their results as they arrive, with no HTTP in between.
//
//	inferq serve --models testdata/models          # NATS on 127.0.0.1:4222
//	go run ./examples/natsclient --nats nats://127.0.0.1:4222 --model iris -n 5
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/natsclient"
	"github.com/inferq/inferq/tensor"
)

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS server URL")
	model := flag.String("model", "iris", "model to run")
	n := flag.Int("n", 5, "jobs to submit")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *url, *model, *n); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, url, model string, n int) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	c, err := natsclient.New(ctx, js)
	if err != nil {
		return err
	}
	// Take the results position before submitting, so that the follower
	// misses none of these jobs, however fast they finish.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	pos, err := c.Position(ctx)
	if err != nil {
		return err
	}
	results := make(chan natsclient.Result)
	go c.Follow(ctx, model, pos, true, func(r natsclient.Result) error {
		select {
		case results <- r:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	mine := map[string]bool{}
	for i := range n {
		req, err := tensor.DecodeRequest([]byte(fmt.Sprintf(
			`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[%g,3.0,%g,1.0]}]}`, 5+0.3*float64(i), 1+float64(i))), tensor.Limits{})
		if err != nil {
			return err
		}
		rec, err := c.Submit(ctx, model, req, natsclient.Options{})
		if err != nil {
			return err
		}
		mine[rec.ID] = true
		fmt.Println("submitted", rec.ID)
	}
	for len(mine) > 0 {
		select {
		case r := <-results:
			if !mine[r.ID] {
				continue
			}
			delete(mine, r.ID)
			if len(r.Announcement.Response) > 0 {
				fmt.Printf("%s %s: %s\n", r.ID, r.Status, r.Announcement.Response)
			} else {
				fmt.Printf("%s %s: %s\n", r.ID, r.Status, r.Error)
			}
		case <-ctx.Done():
			return fmt.Errorf("%d results did not arrive", len(mine))
		}
	}
	return nil
}
