package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/inferq/inferq/producer"
)

// loadTokens reads the API tokens: those of --api-tokens, which may use
// every model, then those of --tokens-file. It returns the file's bytes
// too, for watchTokens to tell when it changes.
func loadTokens(list, file string) ([]producer.Token, []byte, error) {
	if file == "" {
		tokens, err := parseTokens(list, "", nil)
		return tokens, nil, err
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("read --tokens-file: %w", err)
	}
	tokens, err := parseTokens(list, file, b)
	return tokens, b, err
}

// parseTokens is the tokens of list and of the tokens file's content b.
func parseTokens(list, file string, b []byte) ([]producer.Token, error) {
	var out []producer.Token
	for _, t := range splitList(list) {
		out = append(out, producer.Token{Secret: t})
	}
	if file == "" {
		return out, nil
	}
	fromFile, err := producer.ParseTokens(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("--tokens-file %s: %w", file, err)
	}
	if len(fromFile) == 0 {
		return nil, fmt.Errorf("--tokens-file %s holds no token; with none, the API would be open to all", file)
	}
	return append(out, fromFile...), nil
}

// watchTokens reloads the tokens file when it changes, so that tokens are
// added and revoked without a restart. A file that no longer parses is
// logged and the tokens in force are kept.
func watchTokens(ctx context.Context, log *slog.Logger, api *producer.Server, list, file string, last []byte, interval time.Duration) {
	every(ctx, interval, func() {
		b, err := os.ReadFile(file)
		if err != nil {
			log.Error("cannot read the tokens file; keeping the tokens in force", "file", file, "err", err)
			return
		}
		if bytes.Equal(b, last) {
			return
		}
		last = b
		tokens, err := parseTokens(list, file, b)
		if err != nil {
			log.Error("tokens file changed but cannot be used; keeping the tokens in force", "err", err)
			return
		}
		api.SetTokens(tokens)
		log.Info("API tokens reloaded", "file", file, "tokens", len(tokens))
	})
}

// certificate serves a TLS key pair from files, read again when they
// change (as cert-manager renews them), at most every few seconds.
type certificate struct {
	certFile, keyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	checked time.Time
	mtimes  [2]time.Time
}

func newCertificate(certFile, keyFile string) (*certificate, error) {
	c := &certificate{certFile: certFile, keyFile: keyFile}
	if _, err := c.get(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certificate) get() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert != nil && time.Since(c.checked) < 5*time.Second {
		return c.cert, nil
	}
	c.checked = time.Now()
	var mt [2]time.Time
	for i, f := range []string{c.certFile, c.keyFile} {
		st, err := os.Stat(f)
		if err != nil {
			if c.cert != nil {
				return c.cert, nil // keep serving the one loaded
			}
			return nil, fmt.Errorf("TLS: %w", err)
		}
		mt[i] = st.ModTime()
	}
	if c.cert != nil && mt == c.mtimes {
		return c.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		if c.cert != nil {
			return c.cert, nil // half-written renewal: try again later
		}
		return nil, fmt.Errorf("TLS: load --tls-cert %s and --tls-key %s: %w", c.certFile, c.keyFile, err)
	}
	c.cert, c.mtimes = &cert, mt
	return c.cert, nil
}

// tlsConfig is the HTTP server's TLS configuration, or nil without
// --tls-cert.
func tlsConfig(certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("TLS needs both --tls-cert and --tls-key")
	}
	c, err := newCertificate(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return c.get() },
	}, nil
}

// natsSecurity are the flags that secure a connection to an external
// NATS server.
type natsSecurity struct {
	creds, ca, cert, key string
}

func (s *natsSecurity) register(fs *flag.FlagSet) {
	fs.StringVar(&s.creds, "nats-creds", "", "NATS credentials file (JWT and NKey seed) for an external server")
	fs.StringVar(&s.ca, "nats-ca", "", "CA certificate (PEM) that signed the NATS server's certificate, for tls:// URLs")
	fs.StringVar(&s.cert, "nats-cert", "", "client certificate (PEM) for NATS servers that verify clients")
	fs.StringVar(&s.key, "nats-key", "", "key of --nats-cert")
}

// options turns the flags into connection options. A user and password
// go in the URL: nats://user:password@host:4222.
func (s *natsSecurity) options() ([]nats.Option, error) {
	var out []nats.Option
	if s.creds != "" {
		if _, err := os.Stat(s.creds); err != nil {
			return nil, fmt.Errorf("--nats-creds: %w", err)
		}
		out = append(out, nats.UserCredentials(s.creds))
	}
	if s.ca != "" {
		out = append(out, nats.RootCAs(s.ca))
	}
	if (s.cert == "") != (s.key == "") {
		return nil, errors.New("--nats-cert and --nats-key go together")
	}
	if s.cert != "" {
		out = append(out, nats.ClientCert(s.cert, s.key))
	}
	return out, nil
}
