package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/inferq/inferq/onnx"
	"github.com/inferq/inferq/traffic"
)

// Config is a model's serving configuration, read from the optional
// DIR/{model}/config.yaml. Zero fields take defaults derived from the model
// itself (see Resolve).
type Config struct {
	// MaxBatchSize is the most rows one run takes. 0 derives it: 32 for a
	// model whose inputs and outputs all have a dynamic first dimension,
	// else 1 (no batching).
	MaxBatchSize int `yaml:"max_batch_size" json:"max_batch_size"`
	// MaxQueueDelay is how long the first request of a batch may wait for
	// others to join it while an instance is free to run it (while all are
	// busy, the batch fills until one is). Default 5ms.
	MaxQueueDelay time.Duration `yaml:"max_queue_delay" json:"max_queue_delay"`
	// PreferredBatchSizes are batch sizes worth dispatching at once, without
	// waiting out the delay, when no more requests are at hand.
	PreferredBatchSizes []int `yaml:"preferred_batch_sizes" json:"preferred_batch_sizes,omitempty"`
	// Instances is the number of sessions running batches in parallel.
	// Default 1.
	Instances int `yaml:"instances" json:"instances"`
	// IntraOpThreads and InterOpThreads size ONNX Runtime's thread pools; 0
	// leaves ONNX Runtime's defaults.
	IntraOpThreads int `yaml:"intra_op_threads" json:"intra_op_threads"`
	InterOpThreads int `yaml:"inter_op_threads" json:"inter_op_threads"`
	// Spinning lets ONNX Runtime's threads spin while they wait for work:
	// off by default, since a worker shares its cores with the API, NATS
	// and its other instances; on can help a worker that has its cores to
	// itself (see docs/performance.md).
	Spinning bool `yaml:"spinning" json:"spinning,omitempty"`
	// ExecutionProvider is where the model runs: "cpu" (the default),
	// "cuda" or "tensorrt". A worker's --device overrides it.
	ExecutionProvider string `yaml:"execution_provider" json:"execution_provider"`
	// GPU configures the cuda and tensorrt providers.
	GPU *GPU `yaml:"gpu" json:"gpu,omitempty"`
	// Fallback "cpu" runs the model on the CPU in a worker where its
	// provider cannot be attached (no GPU, no GPU build of ONNX Runtime),
	// with a log line; empty leaves the model unserved by that worker,
	// with the reason in GET /v1/models.
	Fallback string `yaml:"fallback" json:"fallback,omitempty"`
	// MaxAttempts bounds how often a job is run before it ends failed.
	// Default 3.
	MaxAttempts int `yaml:"max_attempts" json:"max_attempts"`
	// ResultRetention is how long a finished job's result and record are
	// kept. 0 keeps them until the store's own lifecycle rules remove them.
	ResultRetention time.Duration `yaml:"result_retention" json:"result_retention,omitempty"`
	// Statistics, false, turns off the statistics of what the model is
	// asked and answers (on by default; see docs/monitoring.md).
	Statistics *bool `yaml:"statistics" json:"statistics,omitempty"`
	// Capture samples jobs, their requests and responses, into the
	// result store for study and retraining. Off by default.
	Capture *Capture `yaml:"capture" json:"capture,omitempty"`
	// Padding, for sequence models, pads variable-length inputs up to a
	// bucket length so that requests of different lengths share a run,
	// and trims the outputs back.
	Padding *Padding `yaml:"padding" json:"padding,omitempty"`
	// Ragged runs the rows of an input that come right-padded (text
	// line crops padded to the widest of a picture, clips to the
	// longest) each at its own length, and pads the outputs back.
	Ragged *Ragged `yaml:"ragged" json:"ragged,omitempty"`
	// Traffic splits the jobs that name no version among the model's
	// versions, by shares ({"2": 90, "3": 10}), and Shadow names the
	// versions every such job also runs on, off the answer's path (see
	// docs/guides/rollouts.md). A split set at run time (PUT
	// /v1/models/{model}/traffic) takes precedence. Versions not loaded
	// are left out, with a log line.
	Traffic map[string]int `yaml:"traffic" json:"traffic,omitempty"`
	Shadow  []string       `yaml:"shadow" json:"shadow,omitempty"`
}

// Split is the traffic split the config declares (traffic and shadow).
func (c Config) Split() traffic.Split { return traffic.Split{Traffic: c.Traffic, Shadow: c.Shadow} }

// Padding pads inputs along a variable-length axis up to the next bucket
// length, and trims outputs back to each request's own length. Use it
// only for models that ignore the padding (an attention mask padded with
// zeros, for instance): the outputs of a padded request are what the model
// computes over the padded input.
type Padding struct {
	// Buckets are the lengths an axis is padded up to, ascending. A
	// request longer than the last is not padded, and runs with requests
	// of its own length.
	Buckets []int64 `yaml:"buckets" json:"buckets"`
	// Inputs are the inputs padded: the axis, and the value padding
	// takes (BYTES inputs pad with empty strings).
	Inputs map[string]PadInput `yaml:"inputs" json:"inputs"`
	// Outputs are the outputs trimmed back, and along which axis, to the
	// length of the request's first padded input.
	Outputs map[string]int `yaml:"outputs" json:"outputs,omitempty"`
}

// Ragged is an input whose rows come padded at the end of an axis with
// a value: each row runs cut to its own length (the last entry along the
// axis that is not all padding, rounded up to MultipleOf), rows of equal
// length together, so that a model whose cost grows with the length
// (and whose answer the padding would change) never runs the padding.
// The listed outputs are padded back with zeros along their axis to the
// longest of a request's rows, so that a request's answer keeps one
// shape; a zero row is what decoders of class probabilities (CTC) read
// as nothing.
type Ragged struct {
	Input string  `yaml:"input" json:"input"`
	Axis  int     `yaml:"axis" json:"axis"`
	Value float64 `yaml:"value" json:"value,omitempty"`
	// MultipleOf rounds each row's length up (1 or 0: exact), so that
	// rows of near lengths share a run.
	MultipleOf int64          `yaml:"multiple_of" json:"multiple_of,omitempty"`
	Outputs    map[string]int `yaml:"outputs" json:"outputs,omitempty"`
}

// Capture is a model's data capture: the share of jobs written, with
// their requests and responses, as JSON Lines under
// capture/<model>/<version>/<date>/ in the result store.
type Capture struct {
	// Rate is the share of jobs captured, from 0 to 1.
	Rate float64 `yaml:"rate" json:"rate"`
}

// StatisticsOn reports whether the model's statistics are kept.
func (c Config) StatisticsOn() bool { return c.Statistics == nil || *c.Statistics }

// CaptureRate is the share of the model's jobs captured, 0 for none.
func (c Config) CaptureRate() float64 {
	if c.Capture == nil {
		return 0
	}
	return c.Capture.Rate
}

// GPU are a GPU provider's options.
type GPU struct {
	// DeviceID is the GPU the model runs on, where the worker's --device
	// does not say.
	DeviceID int `yaml:"device_id" json:"device_id"`
	// MemoryLimit bounds the CUDA memory arena, in bytes; 0 for none.
	MemoryLimit int64 `yaml:"memory_limit" json:"memory_limit,omitempty"`
	// ArenaExtendStrategy is next_power_of_two (the default) or
	// same_as_requested.
	ArenaExtendStrategy string `yaml:"arena_extend_strategy" json:"arena_extend_strategy,omitempty"`
	// CudnnConvAlgoSearch is exhaustive (the default), heuristic or
	// default.
	CudnnConvAlgoSearch string `yaml:"cudnn_conv_algo_search" json:"cudnn_conv_algo_search,omitempty"`
	// TensorRTFP16 lets TensorRT run in half precision.
	TensorRTFP16 bool `yaml:"trt_fp16" json:"trt_fp16,omitempty"`
	// TensorRTEngineCache is a folder where TensorRT keeps the engines
	// it builds.
	TensorRTEngineCache string `yaml:"trt_engine_cache" json:"trt_engine_cache,omitempty"`
}

// Provider is where the model asks to run, with its options; device,
// when not the zero Provider (a worker's --device), overrides the
// provider and the GPU.
func (c Config) Provider(device onnx.Provider) onnx.Provider {
	p := onnx.Provider{Name: c.ExecutionProvider}
	if g := c.GPU; g != nil {
		p.DeviceID = g.DeviceID
		p.GPUMemLimit = uint64(g.MemoryLimit)
		p.ArenaExtendStrategy, p.CudnnConvAlgoSearch = g.ArenaExtendStrategy, g.CudnnConvAlgoSearch
		p.TensorRTFP16, p.TensorRTCache = g.TensorRTFP16, g.TensorRTEngineCache
	}
	if device.Name != "" {
		p.Name, p.DeviceID = device.Name, device.DeviceID
	}
	if p.Name == "" {
		p.Name = onnx.ProviderCPU
	}
	return p
}

// PadInput is how one input is padded.
type PadInput struct {
	Axis  int     `yaml:"axis" json:"axis"`
	Value float64 `yaml:"value" json:"value"`
}

// MarshalJSON writes durations as Go duration strings such as "5ms".
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config
	type out struct {
		plain
		MaxQueueDelay   string `json:"max_queue_delay"`
		ResultRetention string `json:"result_retention,omitempty"`
	}
	o := out{plain: plain(c), MaxQueueDelay: c.MaxQueueDelay.String()}
	if c.ResultRetention > 0 {
		o.ResultRetention = c.ResultRetention.String()
	}
	return json.Marshal(o)
}

// ReadConfig reads a config.yaml. Unknown keys are errors, so a typo does
// not silently fall back to a default.
func ReadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	return ParseConfig(b)
}

// ParseConfig parses config.yaml content.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("parse config: %w", err)
	}
	return c, c.validate()
}

func (c *Config) validate() error {
	switch {
	case c.MaxBatchSize < 0:
		return fmt.Errorf("max_batch_size %d is negative", c.MaxBatchSize)
	case c.MaxQueueDelay < 0:
		return fmt.Errorf("max_queue_delay %s is negative", c.MaxQueueDelay)
	case c.Instances < 0:
		return fmt.Errorf("instances %d is negative", c.Instances)
	case c.IntraOpThreads < 0 || c.InterOpThreads < 0:
		return errors.New("thread counts must not be negative")
	case c.ResultRetention < 0:
		return fmt.Errorf("result_retention %s is negative", c.ResultRetention)
	case c.MaxAttempts < 0:
		return fmt.Errorf("max_attempts %d is negative", c.MaxAttempts)
	}
	switch c.ExecutionProvider {
	case "", onnx.ProviderCPU, onnx.ProviderCUDA, onnx.ProviderTensorRT:
	default:
		return fmt.Errorf("execution_provider %q is unknown (want cpu, cuda or tensorrt)", c.ExecutionProvider)
	}
	if c.Capture != nil && (c.Capture.Rate < 0 || c.Capture.Rate > 1 || math.IsNaN(c.Capture.Rate)) {
		return fmt.Errorf("capture.rate %g: want a share from 0 to 1, such as 0.01", c.Capture.Rate)
	}
	switch c.Fallback {
	case "", onnx.ProviderCPU:
	default:
		return fmt.Errorf("fallback %q: the one fallback is cpu", c.Fallback)
	}
	if g := c.GPU; g != nil {
		switch {
		case g.DeviceID < 0:
			return fmt.Errorf("gpu.device_id %d is negative", g.DeviceID)
		case g.MemoryLimit < 0:
			return fmt.Errorf("gpu.memory_limit %d is negative", g.MemoryLimit)
		case g.ArenaExtendStrategy != "" && !slices.Contains(onnx.ArenaStrategies, g.ArenaExtendStrategy):
			return fmt.Errorf("gpu.arena_extend_strategy %q: want one of %v", g.ArenaExtendStrategy, onnx.ArenaStrategies)
		case g.CudnnConvAlgoSearch != "" && !slices.Contains(onnx.ConvAlgoSearch, g.CudnnConvAlgoSearch):
			return fmt.Errorf("gpu.cudnn_conv_algo_search %q: want one of %v", g.CudnnConvAlgoSearch, onnx.ConvAlgoSearch)
		}
	}
	if p := c.Padding; p != nil {
		if len(p.Buckets) == 0 || len(p.Inputs) == 0 {
			return errors.New("padding needs buckets and at least one input")
		}
		for i, b := range p.Buckets {
			if b <= 0 || i > 0 && b <= p.Buckets[i-1] {
				return fmt.Errorf("padding buckets %v: want positive lengths in ascending order", p.Buckets)
			}
		}
	}
	if r := c.Ragged; r != nil {
		switch {
		case c.Padding != nil:
			return errors.New("ragged and padding do opposite things to an input; a model takes one of them")
		case r.Input == "":
			return errors.New("ragged names no input")
		case r.MultipleOf < 0:
			return fmt.Errorf("ragged multiple_of %d is negative", r.MultipleOf)
		}
	}
	for _, p := range c.PreferredBatchSizes {
		if p <= 0 {
			return fmt.Errorf("preferred_batch_sizes has %d; sizes must be positive", p)
		}
		if c.MaxBatchSize > 0 && p > c.MaxBatchSize {
			return fmt.Errorf("preferred batch size %d exceeds max_batch_size %d", p, c.MaxBatchSize)
		}
	}
	return nil
}

// resolve fills defaults. batchable says whether the model's inputs and
// outputs allow stacking requests along the first dimension.
func (c Config) resolve(batchable bool) Config {
	if c.MaxBatchSize == 0 {
		c.MaxBatchSize = 1
		if batchable {
			c.MaxBatchSize = 32
		}
	}
	if c.MaxQueueDelay == 0 {
		c.MaxQueueDelay = 5 * time.Millisecond
	}
	if c.Instances == 0 {
		c.Instances = 1
	}
	if c.ExecutionProvider == "" {
		c.ExecutionProvider = "cpu"
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 3
	}
	c.PreferredBatchSizes = slices.Clone(c.PreferredBatchSizes)
	slices.Sort(c.PreferredBatchSizes)
	return c
}
