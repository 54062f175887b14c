package producer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/inferq/inferq/flow"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/lease"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/pipeline"
	"github.com/inferq/inferq/tensor"
)

// fileType is the media type of a body that is a file (image/*,
// audio/*), or "" for any other (a V2 request).
func fileType(contentType string) string {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || !strings.HasPrefix(mt, "image/") && !strings.HasPrefix(mt, "audio/") {
		return ""
	}
	return mt
}

// fileRequest is the request of a job whose body is a file of media type
// mt: the one element of m's one BYTES input. A picture is checked by its
// header (a known format, and at most MaxImagePixels), a WAV file whole:
// a file that is not what its type says is a 400 saying why.
func (s *Server) fileRequest(m *model.Model, mt string, body []byte) (*tensor.Request, error) {
	what := "model"
	if m.Pipeline != nil {
		what = "pipeline"
	}
	if len(m.Inputs) != 1 || m.Inputs[0].Datatype != tensor.Bytes {
		hint := ""
		if m.Pipeline != nil && len(m.Inputs) == 0 {
			hint = "; declare it in its pipeline.yaml (inputs: [{name: file, datatype: BYTES, shape: [1]}])"
		}
		return nil, errorf(http.StatusUnsupportedMediaType, "a %s body goes to a model or pipeline with exactly one BYTES input; %s %s takes %s%s", mt, what, m.Name, describeInputs(m), hint)
	}
	switch {
	case strings.HasPrefix(mt, "image/"):
		if _, err := pipeline.CheckImage(body, s.opts.MaxImagePixels); err != nil {
			return nil, errorf(http.StatusBadRequest, "the %s body: %v", mt, err)
		}
	case mt == "audio/wav" || mt == "audio/x-wav" || mt == "audio/wave" || mt == "audio/vnd.wave":
		if _, err := pipeline.DecodeWAV(body); err != nil {
			return nil, errorf(http.StatusBadRequest, "the %s body: %v", mt, err)
		}
	}
	in := m.Inputs[0]
	shape := []int64{1}
	if in.Shape != nil && len(in.Shape) == 0 {
		shape = []int64{} // a scalar input
	}
	return &tensor.Request{Inputs: []tensor.Tensor{{Name: in.Name, Datatype: tensor.Bytes, Shape: shape, Data: tensor.AppendBytesElement(nil, body)}}}, nil
}

func describeInputs(m *model.Model) string {
	if len(m.Inputs) == 0 {
		return "no declared inputs"
	}
	var parts []string
	for _, in := range m.Inputs {
		parts = append(parts, in.Name+" ("+in.Datatype.String()+")")
	}
	return strings.Join(parts, ", ")
}

// Leases hands pipeline steps run by user code to it and takes its
// answers; *lease.Leaser is one.
type Leases interface {
	Take(ctx context.Context, pipeline, step string, wait time.Duration) (*lease.Lease, error)
	Answer(ctx context.Context, id string, outputs []tensor.Tensor, errMsg string, may func(pipeline string) bool) error
}

// pipelineJob is, for a job of a pipeline, the job of its first model
// step: the operations before that step run here, at submission, so
// that a request they cannot take is refused at once (400, naming the
// step). A job of a model is returned as it is.
func (s *Server) pipelineJob(m *model.Model, job *jobs.Job) (*jobs.Job, error) {
	if m.Pipeline == nil {
		return job, nil
	}
	st, call, _, err := flow.Start(m.Pipeline, job.Request.Inputs, s.opts.Catalog)
	if err == nil && call == nil {
		return nil, errorf(http.StatusBadRequest, "pipeline %s ran to its end without a model step", m.Name) // refused at load; kept for safety
	}
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "pipeline %s: %v", m.Name, err)
	}
	step, err := call.Job(m.Pipeline, job.ID, st, job)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "pipeline %s: %v", m.Name, err)
	}
	return step, nil
}

// takeLease: POST /v1/pipelines/{pipeline}/steps/{step}/leases?wait=10s.
func (s *Server) takeLease(w http.ResponseWriter, r *http.Request) error {
	if s.opts.Leases == nil {
		return errorf(http.StatusNotFound, "steps run by user code are not served here")
	}
	name := r.PathValue("pipeline")
	if err := allow(r, name); err != nil {
		return err
	}
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return errorf(http.StatusBadRequest, "wait %q: want a duration such as 10s", v)
		}
		wait = min(d, s.opts.MaxWait)
	}
	l, err := s.opts.Leases.Take(r.Context(), name, r.PathValue("step"), wait)
	switch {
	case errors.Is(err, lease.ErrNotFound):
		return errorf(http.StatusNotFound, "%v", err)
	case err != nil:
		s.log.Warn("lease a step", "pipeline", name, "step", r.PathValue("step"), "err", err)
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: "the queue is unavailable; retry later"}
	case l == nil:
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"lease": l.ID, "job": l.Job, "attempt": l.Attempt, "deadline": l.Deadline,
		"request": json.RawMessage(l.Request.AppendJSON(nil)),
	})
	return nil
}

// answerLease: POST /v1/leases/{lease}, a V2 response of the step's
// outputs or {"error": "..."}.
func (s *Server) answerLease(w http.ResponseWriter, r *http.Request) error {
	if s.opts.Leases == nil {
		return errorf(http.StatusNotFound, "steps run by user code are not served here")
	}
	body, err := readBody(http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes), r.ContentLength)
	if err != nil {
		return errorf(http.StatusBadRequest, "read the answer: %v", err)
	}
	var failed struct {
		Error *string `json:"error"`
	}
	var outputs []tensor.Tensor
	errMsg := ""
	if json.Unmarshal(body, &failed) == nil && failed.Error != nil {
		if errMsg = *failed.Error; errMsg == "" {
			errMsg = "user code failed and said nothing more"
		}
	} else {
		resp, err := tensor.DecodeResponse(body)
		if err != nil {
			return errorf(http.StatusBadRequest, "the answer is neither a V2 response of the step's outputs nor {\"error\": ...}: %v", err)
		}
		outputs = resp.Outputs
	}
	may := func(p string) bool { return mayUse(r.Context(), p) }
	err = s.opts.Leases.Answer(r.Context(), r.PathValue("lease"), outputs, errMsg, may)
	switch {
	case errors.Is(err, lease.ErrUnknownLease):
		return errorf(http.StatusNotFound, "unknown or expired lease: it was answered, or not answered within the step's lease_timeout and offered again")
	case errors.Is(err, lease.ErrBadAnswer):
		return errorf(http.StatusBadRequest, "%v", err)
	case err != nil:
		s.log.Warn("answer a lease", "err", err)
		return &httpError{code: http.StatusServiceUnavailable, retryAfter: 1, msg: fmt.Sprintf("the answer could not be taken; answer again: %v", err)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"accepted": true})
	return nil
}
