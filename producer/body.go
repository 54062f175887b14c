package producer

import (
	"io"
	"net/http"
	"time"
)

// bodyStalled is the answer to a request whose body stopped arriving.
func (s *Server) bodyStalled() error {
	return errorf(http.StatusRequestTimeout, "the request body stopped arriving: nothing came for %s", s.opts.BodyTimeout)
}

// idleBody is a request body whose every read must bring data within
// timeout: a client that sends headers, then nothing (or a trickle with
// long pauses), is cut off instead of holding a handler for ever. Large
// uploads that keep moving are not bounded, as a whole-request
// ReadTimeout would bound them. Once the body has been read, the deadline
// is lifted, so that a handler waiting afterwards (a synchronous infer)
// keeps noticing a client that leaves.
type idleBody struct {
	io.ReadCloser
	rc      *http.ResponseController
	timeout time.Duration
	done    bool
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}
	_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	// After any other error the deadline stays, passed: the server's
	// reading of the rest of the body, before it answers, then fails at
	// once too, and the connection is closed.
	return n, err
}
