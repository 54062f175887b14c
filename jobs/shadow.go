package jobs

import (
	"context"
	"fmt"
	"strconv"
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
)

// ShadowSubject is the queue of model's shadow version v: its own, so
// that its workers and batching are its own, and a slow or failing
// shadow never holds the model's jobs back.
func ShadowSubject(model string, v int64) string {
	return requestPrefix + Token(model) + ".shadow." + strconv.FormatInt(v, 10)
}

// ShadowConsumerName is the durable consumer the workers of model's
// shadow version v share.
func ShadowConsumerName(model string, v int64) string {
	return ConsumerName(model, record.Normal) + "-shadow-" + strconv.FormatInt(v, 10)
}

// PublishShadows queues the shadow runs of a job that succeeded: a
// message per version of job.Shadows on that version's queue, carrying
// the job's request and the answer (answering is the version that gave
// it), without waiting for JetStream's acknowledgement: a shadow never
// delays the job. A run published twice within the duplicate window is
// kept once. It returns the futures, for the caller to count failures.
func (q *Queue) PublishShadows(job *Job, answering string, answer []byte) ([]jetstream.PubAckFuture, error) {
	if len(job.Shadows) == 0 {
		return nil, nil
	}
	base := *job
	base.Shadows, base.Routed = nil, false
	var futures []jetstream.PubAckFuture
	for _, v := range job.Shadows {
		sj := base
		sj.Version = v
		msg, err := EncodeJob(&sj)
		if err != nil {
			return futures, err
		}
		msg.Subject = ShadowSubject(job.Model, v)
		msg.Header.Set(HeaderShadowOf, answering)
		msg.Header.Set(HeaderAnswerLength, strconv.Itoa(len(answer)))
		msg.Data = append(msg.Data[:len(msg.Data):len(msg.Data)], answer...)
		f, err := q.js.PublishMsgAsync(msg, jetstream.WithMsgID(fmt.Sprintf("%s.shadow.%d", job.ID, v)), jetstream.WithExpectStream(RequestStream))
		if err != nil {
			return futures, fmt.Errorf("queue the shadow run of job %s on version %d: %w", job.ID, v, err)
		}
		futures = append(futures, f)
	}
	return futures, nil
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
	c, err := q.js.CreateOrUpdateConsumer(ctx, RequestStream, jetstream.ConsumerConfig{
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
