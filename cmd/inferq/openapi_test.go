package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/inferq/inferq/internal/testenv"
)

// What the server answers matches the OpenAPI document it serves: each
// response below is validated against the document's schema for its path,
// method and status.
func TestResponsesMatchOpenAPI(t *testing.T) {
	s := startServe(t, testenv.ModelRepo(t, map[string]string{"iris/1/model.onnx": "@" + irisPath(t)}))
	r := do(t, "GET", s.url+"/openapi.json", nil)
	if r.code != http.StatusOK {
		t.Fatalf("GET /openapi.json: %d", r.code)
	}
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(r.body)
	if err != nil {
		t.Fatal(err)
	}
	doc.Servers = openapi3.Servers{{URL: s.url}}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	call := func(method, path, body string, headers ...string) []byte {
		t.Helper()
		req, _ := http.NewRequest(method, s.url+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		route, params, err := router.FindRoute(req)
		if err != nil {
			t.Fatalf("%s %s: not in the document: %v", method, path, err)
		}
		in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
		out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: res.StatusCode, Header: res.Header, Body: io.NopCloser(bytes.NewReader(b))}
		if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
			t.Errorf("%s %s -> %d %s: does not match the document: %v", method, path, res.StatusCode, b, err)
		}
		return b
	}
	good := `{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`
	id := s.submit(t, "/v1/models/iris/jobs", []byte(good))
	s.await(t, id, 30*time.Second)
	call("GET", "/v1/jobs/"+id, "")
	call("GET", "/v1/jobs/"+id+"?wait=1s", "")
	call("GET", "/v1/jobs/"+id+"/result", "")
	call("DELETE", "/v1/jobs/"+id, "")
	call("POST", "/v1/models/iris/jobs", good, "Inferq-Priority", "high", "Idempotency-Key", "k1")
	call("POST", "/v1/models/iris/jobs", `{"inputs":[]}`)
	call("POST", "/v1/models/nope/jobs", good)
	call("POST", "/v1/models/iris/versions/1/jobs", good)
	call("POST", "/v2/models/iris/infer", good)
	call("POST", "/v2/models/iris/versions/1/infer", good)
	call("GET", "/v1/models", "")
	call("GET", "/v2/models/iris", "")
	call("GET", "/v2/models/iris/versions/1", "")
	call("GET", "/v2/models/iris/ready", "")
	call("GET", "/v2", "")
	call("GET", "/v2/health/live", "")
	call("GET", "/v2/health/ready", "")
	call("GET", "/v1/jobs/01M8937HDB0W20B2CWDSR9VKD8", "")
	batch := call("POST", "/v1/models/iris/batches", good+"\n"+good+"\n")
	var rec struct{ ID string }
	response{body: batch}.json(t, &rec)
	call("GET", "/v1/batches/"+rec.ID, "")
	call("GET", "/v1/batches/nonsense", "")
}
