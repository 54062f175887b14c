package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/inferq/inferq/record"
)

// Headers of a shadow run's message.
const (
	// HeaderShadowOf is the version that answered the job: the shadow's
	// outputs are compared with its.
	HeaderShadowOf = "Inferq-Shadow-Of"
	// HeaderAnswerLength is the length of the answer (the V2 JSON
	// response of the answering version) laid after the request in the
	// message's data.
	HeaderAnswerLength = "Inferq-Answer-Length"
	// HeaderShadowPack, on a message of several shadow runs, lists each
	// run's headers and length (JSON); their data are laid end to end
	// in the message's.
	HeaderShadowPack = "Inferq-Shadow-Pack"
)

// ShadowSubject is the queue of model's shadow version v, in the shadow
// stream: its own, so that its workers and batching are its own, and a
// slow or failing shadow never holds the model's jobs back.
func ShadowSubject(model string, v int64) string {
	return shadowPrefix + Token(model) + "." + strconv.FormatInt(v, 10)
}

// oldShadowSubject is where releases before 2026-12-08 queued shadow
// runs, in the request stream.
func oldShadowSubject(model string, v int64) string {
	return requestPrefix + Token(model) + ".shadow." + strconv.FormatInt(v, 10)
}

// ShadowConsumerName is the durable consumer the workers of model's
// shadow version v share.
func ShadowConsumerName(model string, v int64) string {
	return ConsumerName(model, record.Normal) + "-shadow-" + strconv.FormatInt(v, 10)
}

// A ShadowRun is a job that succeeded, to run again on each of its
// shadow versions (Job.Shadows): Answering is the version that answered
// it, Answer its answer (a V2 JSON response).
type ShadowRun struct {
	Job       *Job
	Answering string
	Answer    []byte
}

// QueuedShadows is a message of Runs shadow runs on its way to
// JetStream; Ack says whether it was stored.
type QueuedShadows struct {
	Ack  jetstream.PubAckFuture
	Runs int
}

// PublishShadows queues the shadow runs of jobs that succeeded together
// (a worker's finished batch): per shadow version, their requests and
// answers packed into as few messages as fit maxShadowPack bytes
// (HeaderShadowPack), on that version's queue, without waiting for
// JetStream's acknowledgement: a shadow never delays a job, and a
// message per batch rather than per job keeps what the model's own path
// pays for its shadows small. It returns the messages on their way and
// how many runs could not be queued, with why.
func (q *Queue) PublishShadows(runs []ShadowRun) (queued []QueuedShadows, dropped int, err error) {
	limit := maxShadowPack
	if q.maxInMessage > 0 {
		limit = min(limit, q.maxInMessage)
	}
	type pack struct {
		runs  []*nats.Msg
		bytes int
	}
	packs := map[int64]*pack{}
	var errs []error
	flush := func(v int64, p *pack) {
		if len(p.runs) == 0 {
			return
		}
		f, perr := q.publishPack(v, p.runs)
		if perr != nil {
			errs = append(errs, perr)
			dropped += len(p.runs)
		} else {
			queued = append(queued, QueuedShadows{Ack: f, Runs: len(p.runs)})
		}
		p.runs, p.bytes = nil, 0
	}
	var order []int64 // versions in the order first met, for a stable publishing order
	for _, r := range runs {
		if len(r.Job.Shadows) == 0 {
			continue
		}
		base := *r.Job
		base.Shadows, base.Routed = nil, false
		for _, v := range r.Job.Shadows {
			sj := base
			sj.Version = v
			msg, eerr := EncodeJob(&sj)
			if eerr != nil {
				errs = append(errs, eerr)
				dropped++
				continue
			}
			msg.Subject = ShadowSubject(r.Job.Model, v)
			msg.Header.Set(HeaderShadowOf, r.Answering)
			msg.Header.Set(HeaderAnswerLength, strconv.Itoa(len(r.Answer)))
			msg.Data = append(msg.Data[:len(msg.Data):len(msg.Data)], r.Answer...)
			p := packs[v]
			if p == nil {
				p = &pack{}
				packs[v] = p
				order = append(order, v)
			}
			if p.bytes+len(msg.Data) > limit {
				flush(v, p)
			}
			p.runs = append(p.runs, msg)
			p.bytes += len(msg.Data) + packedHeaderBytes
		}
	}
	for _, v := range order {
		flush(v, packs[v])
	}
	return queued, dropped, errors.Join(errs...)
}

// maxShadowPack bounds the data of a message of shadow runs (its runs'
// headers come on top), well below NATS's default largest message of
// 1 MiB; smaller where the queue stores smaller messages apart.
const maxShadowPack = 512 << 10

// packedHeaderBytes is about what a run's headers add to a pack.
const packedHeaderBytes = 256

// packedRun is a run of a shadow pack as HeaderShadowPack lists it: its
// message's headers, and the length of its data.
type packedRun struct {
	Header nats.Header `json:"h"`
	Length int         `json:"n"`
}

// publishPack publishes the shadow runs msgs of version v: one alone as
// it is, several as a pack.
func (q *Queue) publishPack(v int64, msgs []*nats.Msg) (jetstream.PubAckFuture, error) {
	first := msgs[0]
	id := first.Header.Get(HeaderJobID)
	msgID := fmt.Sprintf("%s.shadow.%d", id, v)
	msg := first
	if len(msgs) > 1 {
		list := make([]packedRun, len(msgs))
		size := 0
		for i, m := range msgs {
			list[i] = packedRun{Header: m.Header, Length: len(m.Data)}
			size += len(m.Data)
		}
		h, err := json.Marshal(list)
		if err != nil {
			return nil, fmt.Errorf("pack %d shadow runs of version %d: %w", len(msgs), v, err)
		}
		msg = nats.NewMsg(first.Subject)
		msg.Header.Set(HeaderShadowPack, string(h))
		msg.Header.Set(HeaderModel, first.Header.Get(HeaderModel))
		msg.Data = make([]byte, 0, size)
		for _, m := range msgs {
			msg.Data = append(msg.Data, m.Data...)
		}
		msgID = fmt.Sprintf("%s.shadow.%d.%d", id, v, len(msgs))
	}
	f, err := q.js.PublishMsgAsync(msg, jetstream.WithMsgID(msgID), jetstream.WithExpectStream(ShadowStream))
	if err != nil {
		return nil, fmt.Errorf("queue %d shadow runs on version %d (the first job %s): %w", len(msgs), v, id, err)
	}
	return f, nil
}

// UnpackShadows returns the runs of a shadow pack, each as its headers
// and data (as a message of one run has them); ok is false for a message
// that is no pack.
func UnpackShadows(header nats.Header, data []byte) (headers []nats.Header, datas [][]byte, ok bool, err error) {
	v := header.Get(HeaderShadowPack)
	if v == "" {
		return nil, nil, false, nil
	}
	var list []packedRun
	if err := json.Unmarshal([]byte(v), &list); err != nil {
		return nil, nil, true, fmt.Errorf("a shadow pack's %s header is not a list of runs: %w", HeaderShadowPack, err)
	}
	at := 0
	for i, r := range list {
		if r.Length < 0 || r.Length > len(data)-at || r.Header == nil {
			return nil, nil, true, fmt.Errorf("run %d of a shadow pack does not fit its %d bytes", i, len(data))
		}
		headers = append(headers, r.Header)
		datas = append(datas, data[at:at+r.Length:at+r.Length])
		at += r.Length
	}
	if at != len(data) {
		return nil, nil, true, fmt.Errorf("a shadow pack's runs take %d of its %d bytes", at, len(data))
	}
	return headers, datas, true, nil
}

// splitAnswer takes a shadow message's answer off its data.
func splitAnswer(header nats.Header, data []byte) ([]byte, []byte, error) {
	v := header.Get(HeaderAnswerLength)
	if v == "" {
		return data, nil, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > len(data) {
		return nil, nil, fmt.Errorf("%s %q does not fit a message of %d bytes", HeaderAnswerLength, v, len(data))
	}
	return data[:len(data)-n], data[len(data)-n:], nil
}

// ShadowConsumer creates, or finds, the durable consumer of model's
// shadow version v.
func (q *Queue) ShadowConsumer(ctx context.Context, model string, v int64, opts ConsumerOptions) (jetstream.Consumer, error) {
	if opts.AckWait <= 0 {
		opts.AckWait = 60 * time.Second
	}
	if opts.MaxAckPending <= 0 {
		opts.MaxAckPending = 1024
	}
	q.retireOldShadows(ctx, model, v)
	c, err := q.js.CreateOrUpdateConsumer(ctx, ShadowStream, jetstream.ConsumerConfig{
		Durable:       ShadowConsumerName(model, v),
		Description:   fmt.Sprintf("inferq shadow runs of %s version %d", model, v),
		FilterSubject: ShadowSubject(model, v),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       opts.AckWait,
		MaxAckPending: opts.MaxAckPending,
		MaxDeliver:    3,
	})
	if err != nil {
		return nil, fmt.Errorf("shadow version %d of %s: pull jobs: %w", v, model, err)
	}
	return c, nil
}

// retireOldShadows removes what a release before 2026-12-08 left of
// model's shadow version v in the request stream: its consumer, whose
// name a model's own could take there (model "m-shadow-2"'s is
// inferq-m-shadow-2), and the runs on its subject, which no consumer
// takes any more. Shadow runs are best effort: those are dropped.
func (q *Queue) retireOldShadows(ctx context.Context, model string, v int64) {
	s, err := q.js.Stream(ctx, RequestStream)
	if err != nil {
		return
	}
	c, err := s.Consumer(ctx, ShadowConsumerName(model, v))
	if err != nil || c.CachedInfo().Config.FilterSubject != oldShadowSubject(model, v) {
		return // none, or a model's own
	}
	_ = s.DeleteConsumer(ctx, ShadowConsumerName(model, v))
	_ = s.Purge(ctx, jetstream.WithPurgeSubject(oldShadowSubject(model, v)))
}

// ShadowBacklogs is, by model and shadow version, the number of
// messages (each the runs of a finished batch) waiting or in flight on
// the shadow's queue: 0 for a shadow with a consumer and nothing queued.
func (q *Queue) ShadowBacklogs(ctx context.Context) (map[string]map[int64]uint64, error) {
	s, err := q.js.Stream(ctx, ShadowStream)
	if err != nil {
		return nil, fmt.Errorf("shadow backlog: %w", err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(shadowPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("shadow backlog: %w", err)
	}
	out := map[string]map[int64]uint64{}
	add := func(subject string, n uint64) {
		token, version, ok := strings.Cut(strings.TrimPrefix(subject, shadowPrefix), ".")
		v, err := strconv.ParseInt(version, 10, 64)
		if !ok || err != nil || !strings.HasPrefix(subject, shadowPrefix) {
			return
		}
		model := modelOfToken(token)
		if out[model] == nil {
			out[model] = map[int64]uint64{}
		}
		out[model][v] += n
	}
	for subject, n := range info.State.Subjects {
		add(subject, n)
	}
	consumers := s.ListConsumers(ctx)
	for c := range consumers.Info() {
		add(c.Config.FilterSubject, 0)
	}
	if err := consumers.Err(); err != nil {
		return nil, fmt.Errorf("shadow backlog: %w", err)
	}
	return out, nil
}
