package producer_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/jobs"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/producer"
	"github.com/inferq/inferq/storage"
)

// The OpenAPI document is valid OpenAPI 3 and describes exactly the routes
// the server serves: neither can change without the other.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	b, err := producer.OpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not valid OpenAPI 3: %v", err)
	}
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}

	srv := testenv.JetStream(t)
	nc := testenv.Connect(t, srv)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	q, err := jobs.Setup(context.Background(), js, jobs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w := q.Records.Watch(nil)
	defer w.Close()
	catalog, err := model.NewCatalog(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	store, err := storage.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s, err := producer.New(producer.Options{
		Catalog: catalog, Queue: q, Records: q.Records, Results: store, Watcher: w, Stream: q,
		Batches: q.Batches, Objects: store, Registerer: reg, Gatherer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	served := s.Routes()
	slices.Sort(documented)
	slices.Sort(served)
	for _, r := range served {
		if !slices.Contains(documented, r) {
			t.Errorf("served but not in openapi.yaml: %s", r)
		}
	}
	for _, r := range documented {
		if !slices.Contains(served, r) {
			t.Errorf("in openapi.yaml but not served: %s", r)
		}
	}
	if t.Failed() {
		t.Logf("served:\n%s\ndocumented:\n%s", strings.Join(served, "\n"), strings.Join(documented, "\n"))
	}
}
