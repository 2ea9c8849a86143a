"""Runtime backends on an exported file: onnxruntime and OpenVINO by input name, their errors, and
OpenVINO's signal stack (a compiled model must not leave its own on the calling thread)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from strg_deploy.config import preset
from strg_deploy.engines.onnxruntime import OnnxRuntimeNetwork
from strg_deploy.engines.openvino import OpenVinoNetwork, signal_stack
from strg_deploy.errors import StrgError
from strg_deploy.export.onnx import ExportOptions, example_inputs, export_network
from strg_deploy.models.strg import build_model


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(preset("tiny")).eval()
    path = tmp_path_factory.mktemp("engines") / "head.onnx"
    path.write_bytes(export_network(model, "head", ExportOptions(max_batch=2)).SerializeToString())
    inputs = example_inputs(model, seed=5)["head"]
    with torch.no_grad():
        expected = model.head(**inputs).numpy()
    return path, {k: v.numpy() for k, v in inputs.items()}, expected


@pytest.mark.parametrize("backend", [OnnxRuntimeNetwork, OpenVinoNetwork])
def test_backends_run_by_input_name(head_file, backend):
    path, feeds, expected = head_file
    network = backend(path, threads=1)
    assert network.input_names == ("features", "boxes", "mask") and network.output_names == ("logits",)
    reordered = dict(reversed(list(feeds.items())))
    np.testing.assert_allclose(network.run(reordered)["logits"], expected, atol=1e-5)
    with pytest.raises(StrgError, match="missing input"):
        network.run({"features": feeds["features"]})


@pytest.mark.parametrize("backend", [OnnxRuntimeNetwork, OpenVinoNetwork])
def test_backends_refuse_a_file_that_is_not_onnx(tmp_path, backend):
    bad = tmp_path / "head.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(StrgError, match="head.onnx"):
        backend(bad)


@pytest.mark.skipif(signal_stack() is None, reason="sigaltstack is Linux-only")
def test_openvino_leaves_the_signal_stack_as_it_was(head_file):
    path, feeds, _ = head_file
    before = signal_stack()
    network = OpenVinoNetwork(path, threads=1)
    network.run(feeds)
    assert signal_stack() == before
    # The crash this prevents: a live compiled model, torch's SIGCHLD handler, a child process exits.
    code = (
        "import subprocess, sys, torch.utils.data as d\n"
        "from strg_deploy.engines.openvino import OpenVinoNetwork\n"
        f"network = OpenVinoNetwork({str(path)!r}, threads=1)\n"
        "list(d.DataLoader(list(range(4)), num_workers=1))\n"
        "subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
        "print('survived')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "survived", (result.returncode, result.stderr)


def test_openvino_computes_in_float32_unless_asked(head_file):
    """OpenVINO's own default is bf16 on CPUs with bfloat16 units; the backend asks for f32."""
    path, feeds, expected = head_file
    network = OpenVinoNetwork(path, threads=1)
    assert network.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    np.testing.assert_allclose(network.run(feeds)["logits"], expected, atol=1e-5)
    fast = OpenVinoNetwork(path, threads=1, precision="bf16")
    np.testing.assert_allclose(fast.run(feeds)["logits"], expected, atol=0.05)  # bf16 where the CPU has it
    with pytest.raises(StrgError, match="unknown OpenVINO precision 'fp8'"):
        OpenVinoNetwork(path, precision="fp8")
