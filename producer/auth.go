package producer

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/inferq/inferq/model"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Token is an API token and the models it may use.
type Token struct {
	Secret string
	// Models are the models the token may use; empty for every model.
	Models []string
}

// MinTokenLength is the shortest token ParseTokens accepts: 128 bits as
// hex, so that a token cannot be guessed.
const MinTokenLength = 32

// ParseTokens reads a tokens file: one token per line, optionally
// followed by the models it may use, separated by spaces or commas.
// Blank lines and lines starting with # are skipped.
//
//	# ops: every model
//	3f0c9c1e6a2b4d5f8e7a9b0c1d2e3f40
//	# the fraud team
//	a1b2c3d4e5f60718293a4b5c6d7e8f90 fraud-v2, fraud-shadow
func ParseTokens(r io.Reader) ([]Token, error) {
	var out []Token
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' || r == ',' })
		tok := Token{Secret: f[0], Models: f[1:]}
		if len(tok.Models) == 0 && strings.ContainsRune(line, ',') {
			// "TOKEN ," reads as a list of models left empty, which would
			// grant every model.
			return nil, fmt.Errorf("line %d: a comma but no model after the token; list its models, or write the token alone to let it use every model", n)
		}
		if len(tok.Secret) < MinTokenLength {
			return nil, fmt.Errorf("line %d: a token of %d characters is too short to be secret; use at least %d (openssl rand -hex 16)", n, len(tok.Secret), MinTokenLength)
		}
		for _, m := range tok.Models {
			if !model.ValidName(m) {
				return nil, fmt.Errorf("line %d: %q is not a model name", n, m)
			}
		}
		if prev, ok := seen[tok.Secret]; ok {
			return nil, fmt.Errorf("line %d: the token of line %d again", n, prev)
		}
		seen[tok.Secret] = n
		out = append(out, tok)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read tokens: %w", err)
	}
	return out, nil
}

// SetTokens replaces the API tokens, such as when their file changes. An
// empty list turns access control off.
//
// Event streams opened with a token that the new list drops, or no longer
// grants the stream's model, are closed.
func (s *Server) SetTokens(tokens []Token) {
	s.tokens.Store(&tokens)
	next := make(chan struct{})
	if prev := s.tokensSet.Swap(&next); prev != nil {
		close(*prev)
	}
}

type tokensKey struct{}

// tokensSince is closed when the tokens change after r was let in.
func tokensSince(r *http.Request) <-chan struct{} {
	ch, _ := r.Context().Value(tokensKey{}).(chan struct{})
	return ch
}

// tokensChanged is closed at the next SetTokens.
func (s *Server) tokensChanged() chan struct{} { return *s.tokensSet.Load() }

// revoked reports whether r, let in before the tokens last changed, would
// now be refused for model m: its token dropped, or no longer granted m.
func (s *Server) revoked(r *http.Request, m string) bool {
	t, ok := s.authenticate(r)
	return !ok || t != nil && len(t.Models) > 0 && !slices.Contains(t.Models, m)
}

type grantKey struct{}

// authenticate finds the token a request carries, comparing it in
// constant time with every token known. With no tokens configured every
// request is let in, with no token: every model.
func (s *Server) authenticate(r *http.Request) (*Token, bool) {
	tokens := *s.tokens.Load()
	if len(tokens) == 0 {
		return nil, true
	}
	got, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		return nil, false
	}
	var found *Token
	for i := range tokens {
		if subtle.ConstantTimeCompare([]byte(got), []byte(tokens[i].Secret)) == 1 {
			found = &tokens[i]
		}
	}
	return found, found != nil
}

// bearer reads the token of an Authorization header's Bearer scheme,
// whose name is case-insensitive (RFC 9110, section 11.1).
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	tok = strings.TrimSpace(tok)
	return tok, ok && strings.EqualFold(scheme, "Bearer") && tok != ""
}

// withGrant notes the request's token in its context.
func withGrant(r *http.Request, t *Token) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), grantKey{}, t))
}

// caller identifies who sent a request, for what is kept per caller
// (idempotency keys): a hash of its token, never the token itself; ""
// when the API has no tokens, and every request is the one tenant's.
func caller(ctx context.Context) string {
	t, _ := ctx.Value(grantKey{}).(*Token)
	if t == nil {
		return ""
	}
	sum := sha256.Sum256([]byte(t.Secret))
	return "token:" + hex.EncodeToString(sum[:16])
}

// mayUse reports whether the request's token may use model m.
func mayUse(ctx context.Context, m string) bool {
	t, _ := ctx.Value(grantKey{}).(*Token)
	return t == nil || len(t.Models) == 0 || slices.Contains(t.Models, m)
}

// allow answers 403 unless the request's token may use model m.
func allow(r *http.Request, m string) error {
	if mayUse(r.Context(), m) {
		return nil
	}
	return errorf(http.StatusForbidden, "this API token may not use model %s", m)
}

// MetricsHandler serves g's metrics for Prometheus, to a scrape that
// carries token as Authorization: Bearer <token> when token is set (as
// Prometheus's authorization: credentials sends it), to any otherwise.
func MetricsHandler(g prometheus.Gatherer, token string) http.Handler {
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{})
	if token == "" {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := bearer(r.Header.Get("Authorization"))
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="inferq metrics"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong metrics token: send Authorization: Bearer <--metrics-token>"})
			return
		}
		h.ServeHTTP(w, r)
	})
}
