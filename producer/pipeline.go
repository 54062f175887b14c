package producer

import (
	"net/http"

	"github.com/inferq/inferq/flow"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
)

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
