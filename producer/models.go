package producer

import (
	"maps"
	"net/http"
	"slices"
	"strconv"

	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
)

type ioJSON struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"`
}

func ioList(ios []onnx.IO) []ioJSON {
	out := make([]ioJSON, len(ios))
	for i, io := range ios {
		out[i] = ioJSON{Name: io.Name, Datatype: io.Datatype.String(), Shape: io.Shape}
	}
	return out
}

type versionJSON struct {
	Version   string `json:"version"`
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"`
	Batchable bool   `json:"batchable"`
	// Batching says why a model is not batchable.
	Batching string `json:"batching,omitempty"`
	// BatchingUnchecked says why a model batched on its signature's word
	// could not be run on made-up rows to check it.
	BatchingUnchecked string `json:"batching_unchecked,omitempty"`
	// SharedInputs are inputs that are not stacked: only requests with
	// identical values for them are batched together.
	SharedInputs []string     `json:"shared_inputs,omitempty"`
	Config       model.Config `json:"config"`
	Inputs       []ioJSON     `json:"inputs,omitempty"`
	Outputs      []ioJSON     `json:"outputs,omitempty"`
	// Steps, for a pipeline, are its steps in the order they run.
	Steps []stepJSON `json:"steps,omitempty"`
}

// stepJSON is a pipeline's step as GET /v1/models shows it.
type stepJSON struct {
	Name     string            `json:"name"`
	Model    string            `json:"model,omitempty"`
	Version  int64             `json:"version,omitempty"`
	Op       string            `json:"op,omitempty"`
	With     map[string]any    `json:"with,omitempty"`
	External string            `json:"external,omitempty"`
	Inputs   map[string]string `json:"inputs"`
}

func stepsOf(m *model.Model) []stepJSON {
	if m.Pipeline == nil {
		return nil
	}
	var out []stepJSON
	for _, i := range m.Pipeline.Order {
		st := m.Pipeline.Spec.Steps[i]
		out = append(out, stepJSON{Name: st.Name, Model: st.Model, Version: st.Version, Op: st.Op, With: st.With, External: st.External, Inputs: st.Inputs})
	}
	return out
}

type modelJSON struct {
	Name           string        `json:"name"`
	DefaultVersion string        `json:"default_version,omitempty"`
	Versions       []versionJSON `json:"versions"`
	// Workers are the processes serving the model, with the device each
	// version really runs on there and their batch settings, or why a
	// process does not serve it.
	Workers []jobs.WorkerStatus `json:"workers"`
}

func describe(f *model.Family) modelJSON {
	out := modelJSON{Name: f.Name, Versions: []versionJSON{}}
	if d := f.Default(); d != nil {
		out.DefaultVersion = d.VersionString()
	}
	for _, m := range f.Versions {
		v := versionJSON{
			Version: m.VersionString(), State: "ready", Batchable: m.Batchable, Batching: m.Batching, BatchingUnchecked: m.Unchecked, Config: m.Config,
			Inputs: ioList(m.Inputs), Outputs: ioList(m.Outputs), Steps: stepsOf(m),
		}
		if m.Batchable {
			for i, in := range m.Inputs {
				if !m.Batched[i] {
					v.SharedInputs = append(v.SharedInputs, in.Name)
				}
			}
		}
		out.Versions = append(out.Versions, v)
	}
	for _, v := range slices.Sorted(maps.Keys(f.Refused)) {
		out.Versions = append(out.Versions, versionJSON{Version: strconv.FormatInt(v, 10), State: "unavailable", Reason: f.Refused[v].Error()})
	}
	return out
}

func (s *Server) listModels(w http.ResponseWriter, r *http.Request) error {
	var workers []jobs.WorkerStatus
	if s.opts.Workers != nil {
		var err error
		if workers, err = s.opts.Workers.WorkerStatuses(r.Context()); err != nil {
			s.log.Warn("reading worker statuses", "err", err)
		}
	}
	out := []modelJSON{}
	for _, f := range s.opts.Catalog.Families() {
		if !mayUse(r.Context(), f.Name) {
			continue
		}
		m := describe(f)
		m.Workers = []jobs.WorkerStatus{}
		for _, st := range workers {
			if st.Model == f.Name {
				m.Workers = append(m.Workers, st)
			}
		}
		out = append(out, m)
	}
	writeJSON(w, http.StatusOK, map[string]any{"models": out})
	return nil
}

// modelMetadata answers the V2 model metadata of a model or version.
func (s *Server) modelMetadata(w http.ResponseWriter, r *http.Request) error {
	m, err := s.lookup(r)
	if err != nil {
		return err
	}
	f, err := s.opts.Catalog.Family(m.Name)
	if err != nil {
		return err
	}
	versions := make([]string, len(f.Versions))
	for i, v := range f.Versions {
		versions[i] = v.VersionString()
	}
	platform := "onnxruntime_onnx"
	if m.Pipeline != nil {
		platform = "inferq_pipeline"
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"name":     m.Name,
		"versions": versions,
		"platform": platform,
		"inputs":   ioList(m.Inputs),
		"outputs":  ioList(m.Outputs),
	})
	return nil
}

func (s *Server) modelReady(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.lookup(r); err != nil {
		return err
	}
	return s.ready(w, r)
}
