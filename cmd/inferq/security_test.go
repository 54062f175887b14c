package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/record"
)

// TestTokensFileAndTLS: the API served over HTTPS with a tokens file. A
// request without a token gets 401; a token limited to some models gets
// 403 for the others, for their jobs and their dead letters, and sees only
// its models listed; editing the file revokes a token without a restart.
func TestTokensFileAndTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	const ops, team = "0ps0ps0ps0ps0ps0ps0ps0ps0ps0ps00", "teamteamteamteamteamteamteamteam"
	tokens := filepath.Join(dir, "tokens")
	writeFile(t, tokens, []byte("# every model\n"+ops+"\n# lookup only\n"+team+" lookup\n"))
	repo, _ := fixtures(t, nil)
	s := startServe(t, repo, "--tokens-file", tokens, "--tls-cert", certFile, "--tls-key", keyFile, "--only", "none")
	base := strings.Replace(s.url, "http://", "https://", 1)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 30 * time.Second}
	call := func(method, path, token, body string) response {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		res, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return response{code: res.StatusCode, header: res.Header, body: mustRead(t, res)}
	}
	accepted := func(r response) string {
		t.Helper()
		var rec record.Record
		if r.code != http.StatusAccepted || json.Unmarshal(r.body, &rec) != nil {
			t.Fatalf("submit: %d %s", r.code, r.body)
		}
		return rec.ID
	}
	total := `{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`
	totalJob := accepted(call("POST", "/v1/models/total/jobs", ops, total))
	lookupJob := accepted(call("POST", "/v1/models/lookup/jobs", team, string(lookupRequest(1))))

	for _, c := range []struct {
		method, path, token, body string
		code                      int
	}{
		{"GET", "/v1/models", "", "", 401},
		{"GET", "/v1/models", "wrongwrongwrongwrongwrongwrongwr", "", 401},
		{"GET", "/v2/health/ready", "", "", 200},
		{"POST", "/v1/models/total/jobs", team, total, 403},
		{"GET", "/v2/models/total", team, "", 403},
		{"GET", "/v1/jobs/" + totalJob, team, "", 404},
		{"DELETE", "/v1/jobs/" + totalJob, team, "", 404},
		{"GET", "/v1/jobs/" + totalJob + "/result", team, "", 404},
		{"GET", "/v1/jobs/" + totalJob + "/events", team, "", 404},
		{"GET", "/v1/models/total/results", team, "", 403},
		{"GET", "/v1/models/total/dead-letters", team, "", 403},
		{"POST", "/v1/models/total/batches", team, total + "\n", 403},
		{"GET", "/v1/jobs/" + lookupJob, team, "", 200},
		{"GET", "/v1/jobs/" + lookupJob, ops, "", 200},
		{"GET", "/v1/jobs/" + totalJob, ops, "", 200},
		{"GET", "/v1/models/lookup/dead-letters", team, "", 200},
	} {
		r := call(c.method, c.path, c.token, c.body)
		if r.code != c.code {
			t.Errorf("%s %s with token %.4s: %d %s, want %d", c.method, c.path, c.token, r.code, r.body, c.code)
		}
		if r.code == 403 && !strings.Contains(r.errorMessage(t), "may not use model total") {
			t.Errorf("%s %s: 403 says %s", c.method, c.path, r.body)
		}
	}
	var list struct{ Models []struct{ Name string } }
	r := call("GET", "/v1/models", team, "")
	r.json(t, &list)
	var names []string
	for _, m := range list.Models {
		names = append(names, m.Name)
	}
	if !slices.Equal(names, []string{"lookup"}) {
		t.Errorf("the lookup-only token is shown models %v", names)
	}

	// Plain HTTP to the HTTPS port is refused.
	if res, err := http.Get(s.url + "/v2/health/live"); err == nil {
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the TLS port: %d", res.StatusCode)
		}
	}

	// Revoking the team's token in the file takes effect without a restart.
	writeFile(t, tokens, []byte(ops+"\n"))
	eventually(t, 20*time.Second, "a token removed from the tokens file refused", func() bool {
		return call("GET", "/v1/jobs/"+lookupJob, team, "").code == http.StatusUnauthorized
	})
	if r := call("GET", "/v1/jobs/"+lookupJob, ops, ""); r.code != http.StatusOK {
		t.Errorf("the token kept: %d %s", r.code, r.body)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// a pool that trusts it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "inferq test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestNATSOverTLS: against a NATS server that requires TLS, the API
// connects with --nats-ca naming the CA of the server's certificate, and
// refuses to start without it, saying why.
func TestNATSOverTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := selfSigned(t, dir)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := natsserver.NewServer(&natsserver.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
		TLS: true, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(ns.Shutdown)
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS did not start")
	}
	url := strings.Replace(ns.ClientURL(), "nats://", "tls://", 1)
	repo, _ := fixtures(t, nil)
	t.Setenv("ONNXRUNTIME_LIB", testenv.ORTLibrary(t))
	args := []string{"--nats", url, "--models", repo, "--storage", t.TempDir(), "--http", "127.0.0.1:0", "--log-level", "warn"}

	// Without the CA the server's certificate is not trusted.
	err = serveCmd(context.Background(), args, testWriter{t}, modeAPI, nil)
	if err == nil || !strings.Contains(err.Error(), "connect to NATS") || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without --nats-ca: %v, want a refusal that names the certificate", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	addr := make(chan string, 1)
	go func() {
		done <- serveCmd(ctx, append(args, "--nats-ca", certFile), testWriter{t}, modeAPI, func(a string) { addr <- a })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("api: %v", err)
		}
	}()
	var s *server
	select {
	case a := <-addr:
		s = &server{url: "http://" + a}
	case err := <-done:
		t.Fatalf("api with --nats-ca: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("the API did not start")
	}
	if r := do(t, "GET", s.url+"/v2/health/ready", nil); r.code != http.StatusOK {
		t.Fatalf("ready over TLS: %d %s", r.code, r.body)
	}
	s.submit(t, "/v1/models/lookup/jobs", lookupRequest(1))
}

// TestResultBounds: a tiny request cannot make a huge result. An output
// asked for twice is a 400 at submission (repeating one made a 5 MB
// request store 250 MB), and a result past --max-result-bytes fails its
// job with the reason, at once, while a small one still succeeds.
func TestResultBounds(t *testing.T) {
	s := startServe(t, filepath.Join(testenv.Root(t), "testdata/models"), "--max-result-bytes", "400")
	row := "5.1,3.5,1.4,0.2"
	twice := []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[` + row + `]}],"outputs":[{"name":"probabilities"},{"name":"label"},{"name":"probabilities"}]}`)
	for _, path := range []string{"/v1/models/iris/jobs", "/v2/models/iris/infer"} {
		if r := do(t, "POST", s.url+path, twice); r.code != http.StatusBadRequest || !strings.Contains(r.errorMessage(t), "asked for twice") {
			t.Errorf("POST %s with an output asked for twice: %d %s, want 400 saying so", path, r.code, r.body)
		}
	}
	small := s.submit(t, "/v1/models/iris/jobs", []byte(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[`+row+`]}],"outputs":[{"name":"label"}]}`))
	rows := strings.TrimSuffix(strings.Repeat(row+",", 32), ",")
	large := s.submit(t, "/v1/models/iris/jobs", []byte(`{"inputs":[{"name":"x","shape":[32,4],"datatype":"FP32","data":[`+rows+`]}]}`))
	if rec := s.await(t, small, 30*time.Second); rec.Status != record.Succeeded {
		t.Errorf("a small result: %+v", rec)
	}
	rec := s.await(t, large, 30*time.Second)
	if rec.Status != record.Failed || !strings.Contains(rec.Error, "--max-result-bytes 400") || rec.Attempts != 1 {
		t.Errorf("a result past --max-result-bytes: %+v; want failed at once, with the reason", rec)
	}
}

// TestMetricsToken: with --metrics-token, /metrics (which shows every
// model's traffic and prediction distribution) needs that token; an API
// token, even one for every model, is not it; health stays open.
func TestMetricsToken(t *testing.T) {
	const api, scrape = "0123456789abcdef0123456789abcdef", "metrics-0123456789abcdef01234567"
	s := startServe(t, filepath.Join(testenv.Root(t), "testdata/models"), "--api-tokens", api, "--metrics-token", scrape)
	for _, c := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"an API token", api, http.StatusUnauthorized},
		{"the metrics token", scrape, http.StatusOK},
	} {
		var h []string
		if c.token != "" {
			h = []string{"Authorization", "Bearer " + c.token}
		}
		r := do(t, "GET", s.url+"/metrics", nil, h...)
		if r.code != c.want || (c.want == http.StatusOK && !strings.Contains(string(r.body), "inferq_")) {
			t.Errorf("/metrics with %s: %d %.200s, want %d", c.name, r.code, r.body, c.want)
		}
	}
	if r := do(t, "GET", s.url+"/v2/health/live", nil); r.code != http.StatusOK {
		t.Errorf("liveness without a token: %d", r.code)
	}
}
