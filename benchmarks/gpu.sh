#!/usr/bin/env bash
# Everything a GPU can show, in one run (see benchmarks/gpu.py): kernels against torch CUDA, the PTX
# launched as TensorRT launches it, the pipeline on torch CUDA and onnxruntime CUDA, TensorRT engines
# where TensorRT is installed, NVDEC. Results go to OUT/results.json (default gpu-results), and the
# suite's GPU tests run after it.
#     bash benchmarks/gpu.sh [OUT]
set -u
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
mkdir -p "$out"
timeout 480 python benchmarks/gpu.py --out "$out" 2>&1 | tee "$out/gpu.txt"
timeout 240 python -m pytest -q -p no:cacheprovider -x \
    tests/test_tensorrt_backend.py tests/test_gpu_decode.py tests/test_engine_build.py \
    tests/test_plugin_ptx.py tests/test_plugin_registration.py -rs 2>&1 | tail -25 | tee "$out/pytest.txt"
