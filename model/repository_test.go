package model_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/inferq/inferq/internal/onnxbuild"
	"github.com/inferq/inferq/internal/testenv"
	"github.com/inferq/inferq/model"
	"github.com/inferq/inferq/onnx"
)

// Each kind of model gets the batching its metadata allows: which inputs
// stack, which are shared, and why a model is not batched at all.
func TestBatchingFromMetadata(t *testing.T) {
	rt := testenv.Runtime(t)
	tests := []struct {
		name      string
		model     []byte
		config    string
		batchable bool
		batched   []bool
		reason    string // part of the reason when not batchable
		maxBatch  int
		// unchecked says made-up rows could not be run to check the
		// signature's word.
		unchecked bool
	}{
		{"dense", onnxbuild.Dense(4, 1, 1), "", true, []bool{true}, "", 32, false},
		{"every datatype", onnxbuild.Identities(), "", true, slices.Repeat([]bool{true}, 13), "", 32, false},
		{"scalar and fixed inputs are shared", onnxbuild.Conditioned(), "", true, []bool{true, false, false}, "", 32, false},
		{"scalar output", onnxbuild.Total(), "", false, []bool{true}, `output "sum" is a scalar`, 1, false},
		{"state with batch on axis 1", onnxbuild.Recurrent(), "", false, []bool{true, false}, `output "h_next" has a fixed first dimension`, 1, false},
		{"state input with batch on axis 1", onnxbuild.StateOnAxis1(), "", false, []bool{true, false}, `input "h" ([1 -1 4]) has a fixed first dimension and a dynamic one after it`, 1, false},
		{"axis after the first named batch", onnxbuild.SeqFirst(), "", false, []bool{true}, `input "x" ([-1 -1 4]) names axis 1 "batch": its batch axis is not the first`, 1, false},
		{"first axes named differently", onnxbuild.Boxes(), "", false, []bool{true, true}, `the first axes of input "image" ("batch") and input "boxes" ("num_boxes") have different names`, 1, false},
		{"rows that mix", onnxbuild.BatchCentered(), "", false, []bool{true}, "its rows are not independent: output \"y\" of a row run stacked with another differs", 1, false},
		{"rows that mix, batching asked for", onnxbuild.BatchCentered(), "max_batch_size: 8\n", true, []bool{true}, "", 8, false},
		{"outputs not along the batch", onnxbuild.Flattened(), "", false, []bool{true}, "its outputs do not follow the batch axis", 1, false},
		{"made-up rows that do not run", onnxbuild.FivesSum(), "", true, []bool{true}, "", 32, true},
		{"variable width", onnxbuild.RowSum(), "max_batch_size: 8\n", true, []bool{true}, "", 8, false},
		{"batching switched off", onnxbuild.Dense(4, 1, 1), "max_batch_size: 1\n", false, []bool{true}, "max_batch_size is 1", 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{"m/1/model.onnx": string(tt.model)}
			if tt.config != "" {
				files["m/config.yaml"] = tt.config
			}
			dir := testenv.ModelRepo(t, files)
			repo, err := model.Load(dir, rt)
			if err != nil {
				t.Fatal(err)
			}
			f, err := repo.Family("m")
			if err != nil {
				t.Fatal(err)
			}
			if len(f.Refused) > 0 {
				t.Fatalf("refused: %v", f.Refused)
			}
			m := f.Default()
			if m.Batchable != tt.batchable || !slices.Equal(m.Batched, tt.batched) {
				t.Errorf("batchable %v, batched %v; want %v, %v", m.Batchable, m.Batched, tt.batchable, tt.batched)
			}
			if tt.reason == "" && m.Batching != "" || !strings.Contains(m.Batching, tt.reason) {
				t.Errorf("reason %q, want it to say %q", m.Batching, tt.reason)
			}
			if (m.Unchecked != "") != tt.unchecked {
				t.Errorf("unchecked %q, want it %v", m.Unchecked, tt.unchecked)
			}
			if m.Config.MaxBatchSize != tt.maxBatch {
				t.Errorf("max batch size %d, want %d", m.Config.MaxBatchSize, tt.maxBatch)
			}
		})
	}
}

// A config that asks for batching a model that cannot be batched refuses
// that version with the reason, and other models load.
func TestConfigAskingForImpossibleBatching(t *testing.T) {
	rt := testenv.Runtime(t)
	dir := testenv.ModelRepo(t, map[string]string{
		"total/1/model.onnx": string(onnxbuild.Total()),
		"total/config.yaml":  "max_batch_size: 8\n",
		"ok/1/model.onnx":    string(onnxbuild.Dense(4, 1, 1)),
	})
	repo, err := model.Load(dir, rt)
	if err != nil {
		t.Fatal(err)
	}
	f, err := repo.Family("total")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Refused[1]; err == nil || !strings.Contains(err.Error(), `output "sum" is a scalar`) || !strings.Contains(err.Error(), "max_batch_size") {
		t.Fatalf("refusal: %v", err)
	}
	if _, err := repo.Lookup("ok", 0); err != nil {
		t.Fatal(err)
	}
}

// A model's provider comes from its config, and a worker's device
// overrides the provider and the GPU, keeping the other GPU options.
func TestConfigProvider(t *testing.T) {
	c, err := model.ParseConfig([]byte("execution_provider: tensorrt\ngpu:\n  device_id: 2\n  memory_limit: 1024\n  trt_fp16: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		device onnx.Provider
		want   string
	}{
		{onnx.Provider{}, "tensorrt:2"},
		{onnx.Provider{Name: onnx.ProviderCUDA, DeviceID: 5}, "cuda:5"},
		{onnx.Provider{Name: onnx.ProviderCPU}, "cpu"},
	} {
		p := c.Provider(tt.device)
		if p.String() != tt.want || p.GPUMemLimit != 1024 || !p.TensorRTFP16 {
			t.Errorf("device %v: %+v, want %s with the config's options", tt.device, p, tt.want)
		}
	}
	if p := (model.Config{}).Provider(onnx.Provider{}); p.String() != "cpu" {
		t.Errorf("no config: %v, want cpu", p)
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string // error substring; "" for success
	}{
		{"empty", "", ""},
		{"full", "max_batch_size: 64\nmax_queue_delay: 2ms\npreferred_batch_sizes: [16, 32]\ninstances: 2\nintra_op_threads: 4\ninter_op_threads: 1\nexecution_provider: cpu\nmax_attempts: 5\nresult_retention: 72h\n", ""},
		{"typo", "max_batch: 8\n", "max_batch"},
		{"negative size", "max_batch_size: -1\n", "negative"},
		{"negative delay", "max_queue_delay: -5ms\n", "negative"},
		{"preferred over max", "max_batch_size: 8\npreferred_batch_sizes: [16]\n", "exceeds"},
		{"zero preferred", "preferred_batch_sizes: [0]\n", "positive"},
		{"unknown provider", "execution_provider: tpu\n", "unknown"},
		{"cuda with every option", "execution_provider: cuda\nfallback: cpu\ngpu:\n  device_id: 1\n  memory_limit: 8589934592\n  arena_extend_strategy: same_as_requested\n  cudnn_conv_algo_search: heuristic\n", ""},
		{"tensorrt", "execution_provider: tensorrt\ngpu:\n  trt_fp16: true\n  trt_engine_cache: /var/cache/trt\n", ""},
		{"other fallback", "execution_provider: cuda\nfallback: tpu\n", "the one fallback is cpu"},
		{"negative device", "gpu:\n  device_id: -1\n", "negative"},
		{"unknown arena strategy", "gpu:\n  arena_extend_strategy: grow\n", "arena_extend_strategy"},
		{"unknown conv search", "gpu:\n  cudnn_conv_algo_search: fast\n", "cudnn_conv_algo_search"},
		{"gpu typo", "gpu:\n  device: 1\n", "device"},
		{"capture and statistics", "statistics: false\ncapture:\n  rate: 0.01\n", ""},
		{"spinning", "spinning: true\nintra_op_threads: 1\n", ""},
		{"capture over 1", "capture:\n  rate: 2\n", "capture.rate"},
		{"negative capture", "capture:\n  rate: -0.1\n", "capture.rate"},
		{"bad duration", "max_queue_delay: soon\n", "parse config"},
		{"negative retention", "result_retention: -1h\n", "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := model.ParseConfig([]byte(tt.yaml))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %+v, %v; want an error saying %q", c, err, tt.want)
			}
		})
	}
	c, err := model.ParseConfig([]byte("max_batch_size: 64\nmax_queue_delay: 2ms\npreferred_batch_sizes: [32, 16]\nresult_retention: 72h\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxBatchSize != 64 || c.MaxQueueDelay != 2*time.Millisecond || c.ResultRetention != 72*time.Hour {
		t.Fatalf("parsed %+v", c)
	}
}

// Padding and ragged must name the model's inputs and outputs, along
// dynamic axes after the batch axis.
func TestPaddingChecked(t *testing.T) {
	rt := testenv.Runtime(t)
	tests := []struct {
		name, config, want string
	}{
		{"ok", "padding: {buckets: [8, 16], inputs: {x: {axis: 1}}, outputs: {y: 1}}\n", ""},
		{"unknown input", "padding: {buckets: [8], inputs: {ids: {axis: 1}}}\n", `no input "ids"`},
		{"batch axis", "padding: {buckets: [8], inputs: {x: {axis: 0}}}\n", "axis 0 must be a dynamic axis"},
		{"missing axis", "padding: {buckets: [8], inputs: {x: {axis: 2}}}\n", "axis 2 must be"},
		{"unknown output", "padding: {buckets: [8], inputs: {x: {axis: 1}}, outputs: {z: 1}}\n", `no output "z"`},
		{"descending buckets", "padding: {buckets: [16, 8], inputs: {x: {axis: 1}}}\n", "ascending"},
		{"no inputs", "padding: {buckets: [8]}\n", "at least one input"},
		{"ragged ok", "ragged: {input: x, axis: 1, multiple_of: 8, outputs: {y: 1}}\n", ""},
		{"ragged unknown input", "ragged: {input: ids, axis: 1}\n", `config ragged: the model has no input "ids"`},
		{"ragged batch axis", "ragged: {input: x, axis: 0}\n", "axis 0 must be a dynamic axis"},
		{"ragged unknown output", "ragged: {input: x, axis: 1, outputs: {z: 1}}\n", `no output "z"`},
		{"ragged no input", "ragged: {axis: 1}\n", "ragged names no input"},
		{"ragged negative multiple", "ragged: {input: x, axis: 1, multiple_of: -8}\n", "multiple_of -8 is negative"},
		{"ragged and padding", "ragged: {input: x, axis: 1}\npadding: {buckets: [8], inputs: {x: {axis: 1}}}\n", "one of them"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testenv.ModelRepo(t, map[string]string{"m/1/model.onnx": string(onnxbuild.MaskedSum()), "m/config.yaml": tt.config})
			repo, err := model.Load(dir, rt)
			if err != nil {
				t.Fatal(err)
			}
			var got error
			if f, err := repo.Family("m"); err != nil {
				got = err // the config itself was refused
			} else {
				got = f.Refused[1]
			}
			if len(repo.Problems) > 0 {
				got = repo.Problems[0]
			}
			if tt.want == "" {
				if got != nil {
					t.Fatal(got)
				}
				return
			}
			if got == nil || !strings.Contains(got.Error(), tt.want) {
				t.Fatalf("got %v, want an error saying %q", got, tt.want)
			}
		})
	}
}
