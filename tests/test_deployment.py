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
