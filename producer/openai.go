package producer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/inferq/inferq/model"
)

// openAILine is a batch file line in the form of OpenAI's Batch API:
// {"custom_id", "method", "url", "body"}, the body a V2 request.
type openAILine struct {
	CustomID json.RawMessage `json:"custom_id"`
	Method   string          `json:"method"`
	URL      string          `json:"url"`
	Body     json.RawMessage `json:"body"`
}

// openAIEnvelope reads a line given in the form of OpenAI's Batch API,
// for the batch's model m: it returns the V2 request in its body and the
// envelope, or a nil envelope for a line in inferq's own form (a V2
// request). With an envelope, an error says what is wrong with it.
func openAIEnvelope(m *model.Model, line []byte) ([]byte, *openAILine, error) {
	if !bytes.Contains(line, []byte(`"url"`)) || !bytes.Contains(line, []byte(`"body"`)) {
		return nil, nil, nil // a V2 request (which has neither member)
	}
	var env openAILine
	if err := json.Unmarshal(line, &env); err != nil || env.URL == "" || len(env.Body) == 0 {
		return nil, nil, nil // not an envelope: read as a V2 request, with its errors
	}
	if !strings.EqualFold(env.Method, "POST") {
		return nil, &env, fmt.Errorf("method %q: a batch line's request is a POST", env.Method)
	}
	if err := checkLineURL(m, env.URL); err != nil {
		return nil, &env, err
	}
	if !bytes.HasPrefix(bytes.TrimSpace(env.Body), []byte("{")) {
		return nil, &env, fmt.Errorf("body: want a V2 inference request (a JSON object)")
	}
	return env.Body, &env, nil
}

// checkLineURL accepts the paths a batch line may name for the batch's
// model: /v2/models/{model}/infer or /v1/models/{model}/jobs, each with an
// optional /versions/{version} that must be the version the batch runs.
func checkLineURL(m *model.Model, url string) error {
	parts := strings.Split(strings.Trim(url, "/"), "/")
	bad := fmt.Errorf("url %q: want /v2/models/%s/infer (or /v1/models/%s/jobs)", url, m.Name, m.Name)
	if len(parts) != 4 && len(parts) != 6 || parts[1] != "models" {
		return bad
	}
	switch {
	case parts[0] == "v2" && parts[len(parts)-1] == "infer":
	case parts[0] == "v1" && parts[len(parts)-1] == "jobs":
	default:
		return bad
	}
	if parts[2] != m.Name {
		return fmt.Errorf("url %q names model %s; this batch is of model %s, and a batch file runs one model", url, parts[2], m.Name)
	}
	if len(parts) == 6 {
		v, err := strconv.ParseInt(parts[4], 10, 64)
		if parts[3] != "versions" || err != nil {
			return bad
		}
		if v != m.Version {
			return fmt.Errorf("url %q names version %d; this batch runs version %d of %s", url, v, m.Version, m.Name)
		}
	}
	return nil
}
