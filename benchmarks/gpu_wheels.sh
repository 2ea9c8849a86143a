#!/usr/bin/env bash
# Fill .whl/ with the wheels benchmarks/gpu.sh installs on a GPU machine that cannot reach a package
# index: the packages strg-deploy's GPU run needs beyond a CUDA image with PyTorch, Triton, onnx,
# onnxruntime, typer, rich, safetensors and cuda-bindings, i.e. PyAV (decoding, NVDEC). Wheels for
# x86_64 Linux and the Python given (default 3.12, that of such images).
#     bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-3.12}"
mkdir -p .whl
exclude="$(git rev-parse --git-path info/exclude)"  # the wheels never get committed
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
av_version="$(python -c 'import importlib.metadata as m; print(m.version("av"))')"
python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "av==$av_version"
ls -l .whl
