package jobs

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestDefinite: which of JetStream's refusals end a submission, and which
// leave its outcome unknown (tried again, the job's record left queued).
func TestDefinite(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"no quorum", &jetstream.APIError{Code: 503, Description: "JetStream system temporarily unavailable"}, false},
		{"the same message id still in process", fmt.Errorf("publish: %w", &jetstream.APIError{Code: 409, ErrorCode: 10158, Description: "duplicate message id is in process"}), false},
		{"wrong last sequence", &jetstream.APIError{Code: 400, ErrorCode: 10071, Description: "wrong last sequence"}, true},
		{"a timeout", errors.New("nats: timeout"), false},
	} {
		if got := definite(c.err); got != c.want {
			t.Errorf("%s: definite %v, want %v", c.name, got, c.want)
		}
	}
}
