package onnx

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	ort "github.com/yalue/onnxruntime_go"
)

// Execution providers a session can run on.
const (
	ProviderCPU      = "cpu"
	ProviderCUDA     = "cuda"
	ProviderTensorRT = "tensorrt"
)

// ErrProviderUnavailable is a provider that cannot be attached here: no
// GPU, an ONNX Runtime built without it, or missing CUDA libraries.
// Waiting does not change it; the model runs elsewhere, or on the CPU
// where its config allows.
var ErrProviderUnavailable = errors.New("execution provider unavailable")

// Provider says where a session runs. The zero value is the CPU.
type Provider struct {
	// Name is ProviderCPU (or ""), ProviderCUDA or ProviderTensorRT.
	Name string
	// DeviceID is the GPU, for CUDA and TensorRT.
	DeviceID int
	// GPUMemLimit bounds the CUDA memory arena, in bytes; 0 for none.
	GPUMemLimit uint64
	// ArenaExtendStrategy is how the arena grows: "next_power_of_two"
	// (the default) or "same_as_requested".
	ArenaExtendStrategy string
	// CudnnConvAlgoSearch is how cuDNN picks convolution algorithms:
	// "exhaustive" (the default: best, slow on a model's first runs),
	// "heuristic" or "default".
	CudnnConvAlgoSearch string
	// TensorRTFP16 lets TensorRT run in half precision.
	TensorRTFP16 bool
	// TensorRTCache, when set, is a folder where TensorRT keeps the
	// engines it builds, so that a restart does not build them again.
	TensorRTCache string
}

// Choices of Provider's string options, in their order in ONNX Runtime.
var (
	ArenaStrategies = []string{"next_power_of_two", "same_as_requested"}
	ConvAlgoSearch  = []string{"exhaustive", "heuristic", "default"}
)

// String names the device, as "cpu", "cuda:0" or "tensorrt:1".
func (p Provider) String() string {
	if p.Name == "" || p.Name == ProviderCPU {
		return ProviderCPU
	}
	return p.Name + ":" + strconv.Itoa(p.DeviceID)
}

// ParseDevice reads a device as a worker is told it: "cpu", "cuda",
// "cuda:N", "tensorrt" or "tensorrt:N".
func ParseDevice(s string) (Provider, error) {
	name, id, hasID := strings.Cut(s, ":")
	p := Provider{Name: name}
	switch name {
	case ProviderCPU:
		if hasID {
			return Provider{}, fmt.Errorf("device %q: the CPU takes no number", s)
		}
		return p, nil
	case ProviderCUDA, ProviderTensorRT:
	default:
		return Provider{}, fmt.Errorf("device %q: want cpu, cuda, cuda:N, tensorrt or tensorrt:N", s)
	}
	if hasID {
		n, err := strconv.Atoi(id)
		if err != nil || n < 0 {
			return Provider{}, fmt.Errorf("device %q: %q is not a GPU number", s, id)
		}
		p.DeviceID = n
	}
	return p, nil
}

// attach adds the provider to session options. An error that says the
// provider cannot be had here wraps ErrProviderUnavailable; one about its
// options does not.
//
// It uses ONNX Runtime's options structs (SessionOptionsAppendExecution
// Provider_CUDA and _TensorRT), which reach the provider library beside
// the core through the provider bridge also where the core was built
// without CUDA, as the GPU build this project installs is; the newer
// CreateCUDAProviderOptions answers "not enabled in this build" there.
func (p Provider) attach(so *ort.SessionOptions) error {
	if p.Name == "" || p.Name == ProviderCPU {
		return nil
	}
	if p.Name != ProviderCUDA && p.Name != ProviderTensorRT {
		return fmt.Errorf("execution provider %q is unknown (want cpu, cuda or tensorrt)", p.Name)
	}
	arena, search := 0, 0
	if p.ArenaExtendStrategy != "" {
		if arena = slices.Index(ArenaStrategies, p.ArenaExtendStrategy); arena < 0 {
			return fmt.Errorf("arena_extend_strategy %q: want one of %v", p.ArenaExtendStrategy, ArenaStrategies)
		}
	}
	if p.CudnnConvAlgoSearch != "" {
		if search = slices.Index(ConvAlgoSearch, p.CudnnConvAlgoSearch); search < 0 {
			return fmt.Errorf("cudnn_conv_algo_search %q: want one of %v", p.CudnnConvAlgoSearch, ConvAlgoSearch)
		}
	}
	if p.Name == ProviderTensorRT {
		err := so.AppendExecutionProviderTensorRTV1(ort.TensorRTOptionsV1{
			DeviceID: p.DeviceID, FP16: p.TensorRTFP16, EngineCachePath: p.TensorRTCache,
		})
		if err != nil {
			return unavailable(p, err)
		}
	}
	// CUDA runs the model, or under TensorRT what TensorRT cannot: not
	// the CPU.
	err := so.AppendExecutionProviderCUDAV1(ort.CUDAOptionsV1{
		DeviceID: p.DeviceID, GPUMemLimit: p.GPUMemLimit, ArenaExtendStrategy: arena, CudnnConvAlgoSearch: search,
	})
	if err != nil {
		return unavailable(p, err)
	}
	return nil
}

// unavailable says why p cannot be attached, and what to do.
func unavailable(p Provider, err error) error {
	env.Lock()
	lib := env.path
	env.Unlock()
	dir := filepath.Dir(lib)
	for _, name := range []string{"libonnxruntime_providers_shared.so", "libonnxruntime_providers_" + p.Name + ".so"} {
		if _, serr := os.Stat(filepath.Join(dir, name)); serr != nil {
			err = fmt.Errorf("%v; there is no %s beside %s: a build of ONNX Runtime without %s", err, name, lib, p.Name)
			break
		}
	}
	return fmt.Errorf("%w: %s cannot be attached (%v). A GPU worker needs an NVIDIA GPU, the GPU build of ONNX Runtime "+
		"(make gpu-onnxruntime; ONNXRUNTIME_LIB pointing at its libonnxruntime.so) and the CUDA 13 libraries on "+
		"LD_LIBRARY_PATH (libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libcurand.so.10, cuDNN 9) with the NVIDIA driver (libcuda.so.1); "+
		"see docs/gpu.md, or set fallback: cpu in the model's config.yaml", ErrProviderUnavailable, p, err)
}
