package model

import "testing"

// FuzzParseConfig: any config.yaml parses to a valid config or an error,
// never a panic, and what parses resolves to usable settings.
func FuzzParseConfig(f *testing.F) {
	for _, seed := range []string{
		"", "max_batch_size: 8\n", "max_queue_delay: 2ms\npreferred_batch_sizes: [4, 8]\n",
		"padding: {buckets: [8, 16], inputs: {x: {axis: 1, value: 0}}, outputs: {y: 1}}\n",
		"ragged: {input: x, axis: 1, value: 0, multiple_of: 8, outputs: {y: 1}}\n",
		"max_batch_size: -1\n", "instances: [1]\n", "result_retention: 72h\n", "{{{", "- a\n- b\n",
		"max_attempts: 99999999999999999999\n", "execution_provider: cuda\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		r := c.resolve(true)
		if r.MaxBatchSize < 1 || r.Instances < 1 || r.MaxAttempts < 1 || r.MaxQueueDelay <= 0 {
			t.Fatalf("config %q resolved to unusable settings %+v", b, r)
		}
	})
}
