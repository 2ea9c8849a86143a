#!/usr/bin/env bash
# Everything a GPU can show, in one run (see benchmarks/gpu.py): kernels against torch CUDA, the PTX
# launched as TensorRT launches it, the pipeline on torch CUDA and onnxruntime CUDA, TensorRT engines
# where TensorRT is installed, NVDEC. Results go to OUT/results.json (default gpu-results), and the
# suite's GPU tests run after it; the whole run stays under 9 minutes.
#     bash benchmarks/gpu.sh [OUT]
# It runs from the checkout without installing it (PYTHONPATH), with $PYTHON or python3. On a machine
# that cannot reach a package index, copy along the .whl folder that `bash benchmarks/gpu_wheels.sh`
# fills (the packages strg-deploy needs that such a GPU image lacks): its wheels are installed first,
# into a folder of their own, without touching the machine's packages.
set -u
cd "$(dirname "$0")/.."
out="${1:-gpu-results}"
mkdir -p "$out"
python="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    site="$(mktemp -d)"
    trap 'rm -rf "$site"' EXIT
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:$site"
fi
export PYTHONUNBUFFERED=1
timeout 390 "$python" benchmarks/gpu.py --out "$out" 2>&1 | tee "$out/gpu.txt"
timeout 150 "$python" -m pytest -q -p no:cacheprovider \
    tests/test_tensorrt_backend.py tests/test_gpu_decode.py tests/test_engine_build.py \
    tests/test_plugin_ptx.py tests/test_plugin_registration.py -rs 2>&1 | tail -40 | tee "$out/pytest.txt"
