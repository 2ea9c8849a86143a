"""What a deployment runs, torch-free: the pipeline and `strg verify` on an export's reference sample.

In the main environment these run on the tiny export of conftest. .ci/run also runs this file in a
second virtual environment with only the `cpu` extra installed (no torch, no torchvision), on an export
made by the main environment, named by STRG_DEPLOYMENT_EXPORT.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.contract.manifest import read_manifest
from strg_deploy.contract.reference import read_reference
from strg_deploy.engines.compare import tolerance_for
from strg_deploy.engines.pipeline import Pipeline, available_runtimes

DEPLOYMENT_EXPORT = os.environ.get("STRG_DEPLOYMENT_EXPORT")
runner = CliRunner()


@pytest.fixture(scope="module")
def folder(request) -> Path:
    if DEPLOYMENT_EXPORT:
        return Path(DEPLOYMENT_EXPORT)
    return request.getfixturevalue("tiny_export")[1]


@pytest.mark.skipif(
    not DEPLOYMENT_EXPORT, reason="the deployment environment of .ci/run has no torch; this one does"
)
def test_the_deployment_environment_has_no_torch():
    assert importlib.util.find_spec("torch") is None
    assert importlib.util.find_spec("torchvision") is None


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_pipeline_computes_the_reference_logits(folder, runtime):
    assert runtime in available_runtimes()
    reference = read_reference(folder, read_manifest(folder))
    predictions = Pipeline.load(folder, runtime).run(reference.clips)
    expected = reference.outputs["head"]["logits"]
    assert np.abs(predictions.logits - expected).max() <= tolerance_for(expected)
    np.testing.assert_array_equal(predictions.logits.argmax(-1), expected.argmax(-1))
    np.testing.assert_allclose(predictions.probabilities.sum(-1), 1.0, rtol=1e-5)


def test_strg_verify_passes(folder):
    result = runner.invoke(app, ["verify", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["passed"] and len(record["rows"]) == 5


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_strg_infer_runs_the_export(folder, backend, tmp_path):
    from conftest import write_clip

    clips = [write_clip(tmp_path / f"clip{k}.mp4", k) for k in range(2)]
    out = tmp_path / "predictions.jsonl"
    result = runner.invoke(
        app, ["infer", str(folder), *map(str, clips), "--backend", backend, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {line["stream"] for line in lines} == {"clip0", "clip1"}
    classes = read_manifest(folder)["model"]["classes"]
    assert all(line["top"][0]["label"] in classes for line in lines)


def _onnxruntime_gpu_without_a_gpu() -> str | None:
    """Why the next test cannot run here (None when it can): it needs onnxruntime-gpu installed on a
    machine without the NVIDIA driver."""
    import ctypes

    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "needs onnxruntime-gpu (the deployment check swaps it in for onnxruntime)"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    return "this machine has the NVIDIA driver: the GPU tests cover onnxruntime-cuda here"


# set by the deployment check, where the next test must run
EXPECT_ONNXRUNTIME_GPU = bool(os.environ.get("STRG_DEPLOYMENT_ONNXRUNTIME_GPU"))


@pytest.mark.skipif(
    not EXPECT_ONNXRUNTIME_GPU and _onnxruntime_gpu_without_a_gpu() is not None,
    reason=str(_onnxruntime_gpu_without_a_gpu()),
)
def test_onnxruntime_gpu_without_a_gpu_refuses_cuda_in_one_line(folder, tmp_path):
    """What a user of the gpu extra sees on a machine without a GPU: one line naming the missing driver
    or library (none of onnxruntime's own log lines), exit 2; the CPU provider still runs."""
    import subprocess
    import sys

    unable = _onnxruntime_gpu_without_a_gpu()
    if unable is not None:  # the deployment check asked for this test: never skip it silently there
        pytest.fail(unable)

    command = [sys.executable, "-m", "strg_deploy.cli", "verify", str(folder)]
    command += ["--backend", "onnxruntime-cuda"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: onnxruntime-gpu ")
    assert "NVIDIA driver" in lines[0] or "cannot load its CUDA provider" in lines[0]
    result = runner.invoke(app, ["verify", str(folder), "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
