package consumer

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// recorded is a message that remembers how it was settled.
type recorded struct {
	jetstream.Msg
	calls []string
	fail  bool
}

func (m *recorded) Headers() nats.Header { return nats.Header{} }
func (m *recorded) result(call string) error {
	m.calls = append(m.calls, call)
	if m.fail {
		return errors.New("NATS is away")
	}
	return nil
}
func (m *recorded) Ack() error                         { return m.result("ack") }
func (m *recorded) Nak() error                         { return m.result("nak") }
func (m *recorded) NakWithDelay(d time.Duration) error { return m.result("nak " + d.String()) }
func (m *recorded) Term() error                        { return m.result("term") }

// TestSettle: each settlement makes its one JetStream call, a failed call
// included (the message then comes back after its ack wait), and is
// counted by how.
func TestSettle(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	w := &Worker{opts: Options{Metrics: m}, name: "iris", log: slog.New(slog.DiscardHandler)}
	for _, c := range []struct {
		how   settlement
		delay time.Duration
		fail  bool
		want  string
	}{
		{done, 0, false, "ack"},
		{handBack, 0, false, "nak"},
		{handBack, 2 * time.Second, false, "nak 2s"},
		{drop, 0, false, "term"},
		{done, 0, true, "ack"},
	} {
		msg := &recorded{fail: c.fail}
		w.settle(msg, c.how, c.delay)
		if len(msg.calls) != 1 || msg.calls[0] != c.want {
			t.Errorf("settle %s (delay %v): calls %v, want [%s]", c.how, c.delay, msg.calls, c.want)
		}
	}
	want := `
# HELP inferq_job_messages_settled_total Job messages a worker settled, by model and how: ack (the job is final, or needs nothing more), hand_back (returned to the queue to run again: a retry, storage away, shutdown) and drop (terminated: it has no record).
# TYPE inferq_job_messages_settled_total counter
inferq_job_messages_settled_total{how="ack",model="iris"} 2
inferq_job_messages_settled_total{how="drop",model="iris"} 1
inferq_job_messages_settled_total{how="hand_back",model="iris"} 2
`
	if err := testutil.CollectAndCompare(m.settled, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
