// Command dump writes what an inferq release has stored, its JetStream
// streams (configuration, consumers, every message with its sequence) and
// its object folder, as one JSON document, so that a test can load it into
// a fresh NATS server and run a later release on it (see
// cmd/inferq/upgrade_test.go and testdata/upgrade/README.md).
//
//	go run ./testdata/upgrade/dump -nats nats://TOKEN@127.0.0.1:14222 -objects DATA/objects > queue.json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// queue is the document written; upgrade_test.go reads the same fields.
type queue struct {
	Streams []stream          `json:"streams"`
	Objects map[string][]byte `json:"objects"`
}

type stream struct {
	Config    jetstream.StreamConfig     `json:"config"`
	Consumers []jetstream.ConsumerConfig `json:"consumers"`
	Messages  []message                  `json:"messages"`
	// LastSeq is the stream's last sequence: messages removed at its end
	// (a key's older revision) still took their numbers.
	LastSeq uint64 `json:"last_seq"`
}

type message struct {
	Seq     uint64      `json:"seq"`
	Subject string      `json:"subject"`
	Header  nats.Header `json:"header,omitempty"`
	Data    []byte      `json:"data"`
}

func main() {
	url := flag.String("nats", nats.DefaultURL, "NATS server the release used")
	objects := flag.String("objects", "", "the release's object folder (DATA/objects)")
	flag.Parse()
	if err := run(*url, *objects); err != nil {
		fmt.Fprintln(os.Stderr, "dump:", err)
		os.Exit(1)
	}
}

func run(url, objects string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nc, err := nats.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	var q queue
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return err
		}
		info := s.CachedInfo()
		st := stream{Config: info.Config, LastSeq: info.State.LastSeq}
		cons := s.ListConsumers(ctx)
		for ci := range cons.Info() {
			st.Consumers = append(st.Consumers, ci.Config)
		}
		if err := cons.Err(); err != nil {
			return err
		}
		for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
			m, err := s.GetMsg(ctx, seq)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue
			}
			if err != nil {
				return fmt.Errorf("%s message %d: %w", name, seq, err)
			}
			st.Messages = append(st.Messages, message{Seq: m.Sequence, Subject: m.Subject, Header: m.Header, Data: m.Data})
		}
		q.Streams = append(q.Streams, st)
	}
	if err := names.Err(); err != nil {
		return err
	}
	if objects != "" {
		q.Objects = map[string][]byte{}
		err := filepath.WalkDir(objects, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(objects, path)
			q.Objects[filepath.ToSlash(rel)] = b
			return nil
		})
		if err != nil {
			return err
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	return enc.Encode(q)
}
