#!/usr/bin/env bash
# The GPU device check. On a machine with an NVIDIA GPU, from the
# repository root, with the bundle `make gpu-bundle` made (here, or
# carried there in parts: docs/gpu.md):
#
#   bash deploy/gpu/check.sh [BUNDLE]        # BUNDLE defaults to build/gpu-bundle
#
# It joins the CUDA provider's parts, finds the CUDA 13 libraries (the
# system's, or those of the NVIDIA Python packages a PyTorch environment
# carries), then runs the device check's test and benchmark from the
# bundle's test binary: every model served on the GPU with no fallback,
# GPU memory held (nvidia-smi), answers equal to the CPU's, and the
# figures of docs/gpu.md. Output goes to stdout and, where $OUT is set, to
# $OUT/gpu-check.log. No Go toolchain is needed there.
set -euo pipefail
bundle=${1:-build/gpu-bundle}
bundle=$(cd "$bundle" && pwd)
log=${OUT:-/tmp}/gpu-check.log
exec > >(tee "$log") 2>&1

echo "== GPU"
nvidia-smi -L || { echo "no NVIDIA GPU here (nvidia-smi failed)"; exit 1; }

echo "== ONNX Runtime GPU build"
cuda=$bundle/ort/libonnxruntime_providers_cuda.so
if [ ! -s "$cuda" ]; then
	ls "$bundle"/parts/cuda.* >/dev/null 2>&1 || { echo "no CUDA provider in $bundle (parts/cuda.NN or ort/libonnxruntime_providers_cuda.so)"; exit 1; }
	cat "$bundle"/parts/cuda.* > "$cuda"
fi
ls -l "$bundle"/ort

# The CUDA libraries: the system's where ldconfig knows them, else the
# lib folders of the nvidia-* Python packages (cuda_runtime, cublas,
# curand, cudnn, ...), as PyTorch installs them.
extra=$(python3 - <<'PY' 2>/dev/null || true
import importlib, os, pkgutil
try:
    import nvidia
except ImportError:
    raise SystemExit
seen = []
for m in pkgutil.iter_modules(nvidia.__path__):
    try:
        mod = importlib.import_module("nvidia." + m.name)
    except Exception:
        continue
    for p in getattr(mod, "__path__", []):
        lib = os.path.join(p, "lib")
        if os.path.isdir(lib) and lib not in seen:
            seen.append(lib)
print(":".join(seen))
PY
)
export LD_LIBRARY_PATH="$bundle/ort${extra:+:$extra}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
missing=$(ldd "$cuda" | grep 'not found' || true)
if [ -n "$missing" ]; then
	echo "the CUDA provider cannot find:"; echo "$missing"; exit 1
fi

echo "== device check (tests, then the benchmark)"
export ONNXRUNTIME_LIB=$bundle/ort/libonnxruntime.so INFERQ_GPU_DEVICE=${INFERQ_GPU_DEVICE:-cuda:0}
cd "$(dirname "$0")/../../cmd/inferq"
"$bundle"/inferq.test -test.run '^TestGPU' -test.v -test.timeout 15m
"$bundle"/inferq.test -test.run '^$' -test.bench '^BenchmarkGPU$' -test.benchtime 1x -test.v -test.timeout 20m
echo "== done; log in $log"
