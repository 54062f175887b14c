// Package deploy holds inferq's container image and Kubernetes manifests;
// its test validates every manifest the kustomizations yield, offline.
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/inferq/inferq/producer"
)

// kustomization is the part of a kustomization.yaml these manifests use:
// resources only (files, or folders holding a kustomization).
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// render returns the documents a kustomization yields, with the file each
// came from.
func render(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml uses more than resources (this test renders resources only): %v", dir, err)
	}
	out := map[string][]byte{}
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			for name, doc := range render(t, p) {
				out[name] = doc
			}
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%s: resource %s: %v", dir, r, err)
		}
		for i, doc := range bytes.Split(b, []byte("\n---\n")) {
			if len(bytes.TrimSpace(doc)) > 0 {
				out[fmt.Sprintf("%s#%d", p, i)] = doc
			}
		}
	}
	return out
}

// TestManifests decodes every Kubernetes object strictly into its Go type
// from k8s.io/api (an unknown or misspelt field is an error), and checks
// KEDA ScaledObjects against KEDA's own CRD schema.
func TestManifests(t *testing.T) {
	scaledObject := keda(t)
	for _, overlay := range []string{"kubernetes/base", "kubernetes/gpu"} {
		docs := render(t, overlay)
		kinds := map[string]int{}
		defined := map[string]bool{} // "Secret/name", "ConfigMap/name"
		var refs []string            // what the pods use, the same way
		for name, doc := range docs {
			var head struct{ APIVersion, Kind string }
			if err := yaml.Unmarshal(doc, &head); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			kinds[head.Kind]++
			var obj any
			switch head.APIVersion + " " + head.Kind {
			case "apps/v1 Deployment":
				obj = &appsv1.Deployment{}
			case "apps/v1 StatefulSet":
				obj = &appsv1.StatefulSet{}
			case "v1 Service":
				obj = &corev1.Service{}
			case "v1 ConfigMap":
				obj = &corev1.ConfigMap{}
			case "v1 Secret":
				obj = &corev1.Secret{}
			case "v1 PersistentVolumeClaim":
				obj = &corev1.PersistentVolumeClaim{}
			case "policy/v1 PodDisruptionBudget":
				obj = &policyv1.PodDisruptionBudget{}
			case "keda.sh/v1alpha1 ScaledObject":
				var v any
				if err := yaml.Unmarshal(doc, &v); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if err := scaledObject.VisitJSON(v); err != nil {
					t.Errorf("%s: not a valid ScaledObject: %v", name, err)
				}
				continue
			default:
				t.Errorf("%s: %s %s has no validation here; add its Go type", name, head.APIVersion, head.Kind)
				continue
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			switch o := obj.(type) {
			case *appsv1.Deployment:
				checkDeployment(t, name, o)
				refs = append(refs, podRefs(&o.Spec.Template.Spec)...)
			case *appsv1.StatefulSet:
				checkStatefulSet(t, name, o)
				var claims []string
				for _, c := range o.Spec.VolumeClaimTemplates {
					claims = append(claims, c.Name)
				}
				refs = append(refs, podRefs(&o.Spec.Template.Spec, claims...)...)
			case *corev1.Secret:
				defined["Secret/"+o.Name] = true
				if o.Name == "inferq-tokens" {
					if _, err := producer.ParseTokens(strings.NewReader(o.StringData["tokens"])); err != nil {
						t.Errorf("%s: the API would refuse its tokens file: %v", name, err)
					}
				}
			case *corev1.ConfigMap:
				defined["ConfigMap/"+o.Name] = true
			}
		}
		for _, r := range refs {
			if !defined[r] {
				t.Errorf("%s: a pod uses %s, which the manifests do not define", overlay, r)
			}
		}
		if kinds["Deployment"] == 0 || kinds["ScaledObject"] == 0 {
			t.Errorf("%s yields %v", overlay, kinds)
		}
	}
}

// checkDeployment holds the rules a Deployment must follow beyond its
// schema: selectors match labels, and workers drain within their grace.
func checkDeployment(t *testing.T, name string, d *appsv1.Deployment) {
	for k, v := range d.Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("%s: selector %s=%s does not match the pod labels", name, k, v)
		}
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		if limit, ok := c.Resources.Limits[corev1.ResourceMemory]; ok && strings.HasPrefix(c.Image, "inferq:") {
			checkMemoryLimit(t, name+" "+c.Name, c.Env, limit.Value())
		}
		if len(c.Args) > 0 && c.Args[0] == "worker" {
			grace := d.Spec.Template.Spec.TerminationGracePeriodSeconds
			if grace == nil || *grace < 70 || !strings.Contains(strings.Join(c.Args, " "), "--drain-timeout 60s") {
				t.Errorf("%s: a worker needs --drain-timeout well inside terminationGracePeriodSeconds", name)
			}
		}
	}
}

// checkMemoryLimit holds an inferq container with a memory limit to a
// GOMEMLIMIT below it, so that Go's heap stays under the limit instead of
// drifting toward twice its live size, and leaves room for what is not
// Go's (ONNX Runtime, CUDA): at most three quarters of the limit.
func checkMemoryLimit(t *testing.T, name string, env []corev1.EnvVar, limit int64) {
	t.Helper()
	for _, e := range env {
		if e.Name != "GOMEMLIMIT" {
			continue
		}
		n, err := goMemLimit(e.Value)
		if err != nil {
			t.Errorf("%s: GOMEMLIMIT %q: %v", name, e.Value, err)
		} else if n <= 0 || n > limit*3/4 {
			t.Errorf("%s: GOMEMLIMIT %s is not within three quarters of the memory limit (%d bytes)", name, e.Value, limit)
		}
		return
	}
	t.Errorf("%s: a memory limit and no GOMEMLIMIT below it (docs/performance.md#memory)", name)
}

// goMemLimit reads a GOMEMLIMIT as the Go runtime does: bytes, or a number
// with B, KiB, MiB, GiB or TiB.
func goMemLimit(v string) (int64, error) {
	unit := int64(1)
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"B", 1}} {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, unit = n, u.size
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a size the Go runtime reads: %w", err)
	}
	return n * unit, nil
}

// podRefs lists the Secrets and ConfigMaps a pod uses, as "Kind/name",
// and a "volume/name" for each volume mount that names neither a volume of
// the pod nor one of claims (a StatefulSet's volume claim templates).
func podRefs(p *corev1.PodSpec, claims ...string) []string {
	var out []string
	volumes := map[string]bool{}
	for _, c := range claims {
		volumes[c] = true
	}
	for _, v := range p.Volumes {
		volumes[v.Name] = true
		if v.Secret != nil {
			out = append(out, "Secret/"+v.Secret.SecretName)
		}
		if v.ConfigMap != nil {
			out = append(out, "ConfigMap/"+v.ConfigMap.Name)
		}
	}
	for _, c := range p.Containers {
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				out = append(out, "Secret/"+e.SecretRef.Name)
			}
			if e.ConfigMapRef != nil {
				out = append(out, "ConfigMap/"+e.ConfigMapRef.Name)
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				out = append(out, "Secret/"+e.ValueFrom.SecretKeyRef.Name)
			}
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				out = append(out, "volume/"+m.Name)
			}
		}
	}
	return out
}

// keda returns the ScaledObject schema from KEDA's CRD (vendored in
// schemas/), made strict: objects with declared properties take no others.
func keda(t *testing.T) *openapi3.Schema {
	t.Helper()
	b, err := os.ReadFile("schemas/keda.sh_scaledobjects.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Name   string
				Schema struct {
					OpenAPIV3Schema json.RawMessage `json:"openAPIV3Schema"`
				}
			}
		}
	}
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name != "v1alpha1" {
			continue
		}
		var s openapi3.Schema
		if err := json.Unmarshal(v.Schema.OpenAPIV3Schema, &s); err != nil {
			t.Fatal(err)
		}
		strict(&s)
		if err := s.Validate(context.Background()); err != nil {
			t.Fatalf("KEDA schema: %v", err)
		}
		return &s
	}
	t.Fatal("no v1alpha1 in the KEDA CRD")
	return nil
}

func strict(s *openapi3.Schema) {
	if s == nil {
		return
	}
	if len(s.Properties) > 0 && s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil && s.Extensions["x-kubernetes-preserve-unknown-fields"] == nil {
		no := false
		s.AdditionalProperties.Has = &no
	}
	for _, p := range s.Properties {
		strict(p.Value)
	}
	if s.Items != nil {
		strict(s.Items.Value)
	}
	if s.AdditionalProperties.Schema != nil {
		strict(s.AdditionalProperties.Schema.Value)
	}
}

// checkStatefulSet holds the rules of the NATS StatefulSet: a JetStream
// cluster of an odd number of nodes (a majority survives one lost),
// routes naming each of its pods, started in parallel.
func checkStatefulSet(t *testing.T, name string, s *appsv1.StatefulSet) {
	if s.Name != "nats" {
		return
	}
	n := int(*s.Spec.Replicas)
	if n < 3 || n%2 == 0 {
		t.Errorf("%s: %d NATS replicas; a JetStream cluster wants 3 or 5", name, n)
	}
	if s.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("%s: NATS pods must start in parallel, or the first waits for a quorum that never comes", name)
	}
	conf, err := os.ReadFile("kubernetes/base/nats.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if route := fmt.Sprintf("nats://nats-%d.%s:6222", i, s.Spec.ServiceName); !bytes.Contains(conf, []byte(route)) {
			t.Errorf("%s: the cluster's routes miss %s", name, route)
		}
	}
}
