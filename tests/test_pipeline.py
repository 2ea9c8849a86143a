"""The runtime core: the pipeline over every backend (onnxruntime, OpenVINO, torch, auto, per network),
batch limits, features left on the backend, the reference sample and `strg verify` (a perturbed weight
fails it), and that none of it needs torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_CLASSES as CLASSES
from conftest import VIDEOS
from onnx import numpy_helper
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.config import preset
from strg_deploy.contract.manifest import MANIFEST_FILE, file_sha256, read_manifest
from strg_deploy.contract.networks import NETWORKS, SPECS, rpn_frames, tensor_shapes
from strg_deploy.contract.reference import REFERENCE_FILE, read_reference
from strg_deploy.data.clips import synthetic_clip, video_clip
from strg_deploy.engines.auto import CHOICE_FILE
from strg_deploy.engines.base import BatchLimits
from strg_deploy.engines.compare import tolerance_for
from strg_deploy.engines.pipeline import Pipeline, activate
from strg_deploy.errors import StrgError
from strg_deploy.export.reference import torch_pipeline
from strg_deploy.models.serialization import save_pretrained

runner = CliRunner()


@pytest.fixture(scope="module")
def export(tiny_export):
    return tiny_export


def copied(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "export"
    shutil.copytree(folder, target)
    return target


def clips_of(model, batch: int, seed: int = 3) -> np.ndarray:
    cfg = model.cfg
    return np.stack([synthetic_clip(cfg.frames, cfg.size, seed + i) for i in range(batch)])


def assert_close(expected, actual) -> None:
    for name in ("boxes", "scores", "logits"):
        diff = np.abs(np.asarray(actual[name], np.float64) - expected[name]).max()
        assert diff <= tolerance_for(expected[name]), (name, diff)
    np.testing.assert_array_equal(actual["mask"], expected["mask"])


def test_contract_shapes_and_rpn_frame_rule_agree_for_numpy_and_torch():
    cfg = preset("tiny")
    shapes = tensor_shapes(cfg, "head", batch=3)
    assert shapes["boxes"] == (3, cfg.feature_frames, cfg.proposals.num_boxes, 4)
    assert shapes["logits"] == (3, cfg.num_classes)
    assert SPECS["rpn"].output_names == ("boxes", "scores", "mask")
    clip = np.arange(2 * 3 * 4 * 2 * 2, dtype=np.uint8).reshape(2, 3, 4, 2, 2)
    frames = rpn_frames(clip, 2)
    assert frames.shape == (4, 3, 2, 2) and frames.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(frames[1], clip[0, :, 2])  # clip 0, feature frame 1 = input frame 2
    np.testing.assert_array_equal(frames[2], clip[1, :, 0])
    np.testing.assert_array_equal(rpn_frames(torch.from_numpy(clip), 2).numpy(), frames)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_pipeline_matches_the_torch_model(export, backend):
    model, folder = export
    clips = clips_of(model, 3)
    expected = torch_pipeline(model, folder).run(clips)
    pipeline = Pipeline.load(folder, backend)
    got = pipeline.run(clips)
    cfg = model.cfg
    assert got.boxes.shape == (3, cfg.feature_frames, cfg.proposals.num_boxes, 4)
    assert got.mask.dtype == np.bool_ and got.logits.shape == (3, len(CLASSES))
    assert_close(expected.as_dict(), got.as_dict())
    np.testing.assert_allclose(got.probabilities.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got.probabilities, activate(expected.logits, "softmax"), atol=1e-5)
    assert set(got.seconds) == {"rpn", "backbone", "head"}
    assert {row["backend"] for row in pipeline.describe()} == {backend}
    assert pipeline.classes == tuple(CLASSES)


def test_sigmoid_activation_is_stable():
    logits = np.array([[-1000.0, 0.0, 1000.0]], np.float32)
    np.testing.assert_allclose(activate(logits, "sigmoid"), [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(activate(logits, "softmax"), [[0.0, 0.0, 1.0]])


class Limited:
    """A network with a batch limit that records the batch sizes it was given."""

    def __init__(self, network, maximum: int, optimal: int | None = None):
        self.network, self.limits, self.seen = network, BatchLimits(optimal=optimal, maximum=maximum), []
        self.input_names, self.output_names = network.input_names, network.output_names
        self.info = network.info

    def run(self, inputs):
        self.seen.append(next(iter(inputs.values())).shape[0])
        return self.network.run(inputs)

    def to_host(self, value):
        return self.network.to_host(value)


def test_batches_larger_than_a_network_takes_run_in_chunks(export):
    model, folder = export
    pipeline = Pipeline.load(folder, "onnxruntime")
    clips = clips_of(model, 5)
    whole = pipeline.run(clips)
    t = model.cfg.feature_frames
    limited = {
        "rpn": Limited(pipeline.networks["rpn"], maximum=3 * t),
        "backbone": Limited(pipeline.networks["backbone"], maximum=2),
        "head": pipeline.networks["head"],
    }
    chunked = Pipeline(limited, model.cfg, "softmax", folder)
    assert chunked.max_clips() == 2 and chunked.preferred_clips() is None
    got = chunked.run(clips)
    assert limited["backbone"].seen == [2, 2, 1] and limited["rpn"].seen == [2 * t, 2 * t, t]
    for name, value in whole.as_dict().items():
        np.testing.assert_allclose(getattr(got, name), value, atol=1e-5)


def test_torch_backend_runs_a_checkpoint_and_keeps_features_as_tensors(export, tmp_path):
    model, folder = export
    save_pretrained(model, tmp_path / "best")
    pipeline = Pipeline.load(tmp_path / "best", "torch")
    head = pipeline.networks["head"]
    received = []
    run = head.run
    head.run = lambda inputs: received.append(type(inputs["features"])) or run(inputs)
    clips = clips_of(model, 2)
    got = pipeline.run(clips)
    assert received == [torch.Tensor]  # the backbone's output went to the head as it was
    assert_close(Pipeline.load(folder, "onnxruntime").run(clips).as_dict(), got.as_dict())
    with pytest.raises(StrgError, match="is an export; the torch backend runs a checkpoint"):
        Pipeline.load(folder, "torch")


def test_onnxruntime_io_binding_keeps_features_as_ort_values_for_the_head(export):
    """The path onnxruntime-cuda takes (outputs bound on the session's device, the backbone's OrtValue
    handed to the head as it is), run here with the CPU as that device."""
    import onnxruntime as ort

    from strg_deploy.engines.onnxruntime import OnnxRuntimeNetwork

    model, folder = export
    plain = Pipeline.load(folder, "onnxruntime")
    bound = {n: OnnxRuntimeNetwork(folder / f"{n}.onnx", bind_outputs=True) for n in NETWORKS}
    pipeline = Pipeline(bound, model.cfg, "softmax", folder)
    head = bound["head"]
    received = []
    run = head.run
    head.run = lambda inputs: received.append(type(inputs["features"])) or run(inputs)
    clips = clips_of(model, 3)
    got = pipeline.run(clips)
    assert received == [ort.OrtValue]  # the features never became a numpy array on the way
    for name, value in plain.run(clips).as_dict().items():
        np.testing.assert_array_equal(getattr(got, name), value)
    outputs = bound["backbone"].run({"clip": clips})
    assert isinstance(outputs["features"], ort.OrtValue)
    assert outputs["features"].shape() == list(bound["backbone"].to_host(outputs["features"]).shape)
    # a plain network takes an OrtValue too, and still answers with numpy arrays
    logits = plain.networks["head"].run({**{k: got.as_dict()[k] for k in ("boxes", "mask")}, **outputs})
    assert isinstance(logits["logits"], np.ndarray)
    np.testing.assert_array_equal(logits["logits"], got.logits)
    with pytest.raises(StrgError, match="missing input"):
        head.run({"features": outputs["features"]})


class Queued(Limited):
    """A network as an asynchronous GPU backend looks to the pipeline: ``run`` queues (here: the real
    run, then its seconds of pretended device work), ``wait`` blocks until the queue is done."""

    def __init__(self, network, device_seconds: float):
        super().__init__(network, maximum=None)
        self.device_seconds, self.calls = device_seconds, []

    def run(self, inputs):
        self.calls.append("run")
        return self.network.run(inputs)

    def wait(self):
        self.calls.append("wait")
        time.sleep(self.device_seconds)


def test_an_asynchronous_backbone_is_waited_for_where_its_features_stay_on_the_device(export):
    """The backbone's queued work counts in its own seconds, not in the head's that reads the features."""
    model, folder = export
    loaded = Pipeline.load(folder, "onnxruntime").networks
    queued = Queued(loaded["backbone"], device_seconds=0.3)
    kept = Pipeline({**loaded, "backbone": queued}, model.cfg, "softmax", folder).run(clips_of(model, 1))
    assert queued.calls == ["run", "wait"]
    assert kept.seconds["backbone"] >= 0.3  # the wait is counted where the work was queued
    openvino = Pipeline.load(folder, {"rpn": "onnxruntime", "backbone": "onnxruntime", "head": "openvino"})
    queued.calls.clear()
    chain = Pipeline({**openvino.networks, "backbone": queued}, model.cfg, "softmax", folder)
    chain.run(clips_of(model, 1))
    assert queued.calls == ["run"]  # copied to the host for another runtime: to_host waits already


def test_bad_clips_backend_and_changed_files_are_one_line(export, tmp_path):
    model, folder = export
    pipeline = Pipeline.load(folder, "onnxruntime")
    cfg = model.cfg
    with pytest.raises(
        StrgError, match=rf"clips must be uint8 \[B, 3, {cfg.frames}, {cfg.size}, {cfg.size}\]"
    ):
        pipeline.run(np.zeros((1, 3, cfg.frames, cfg.size, cfg.size), np.float32))
    with pytest.raises(StrgError, match="backend must be one of"):
        Pipeline.load(folder, "tensorflow")
    with pytest.raises(StrgError, match="exactly rpn, backbone, head"):
        Pipeline.load(folder, {"rpn": "openvino"})
    with pytest.raises(StrgError, match="export folder not found"):
        Pipeline.load(tmp_path / "missing")
    changed = copied(folder, tmp_path)
    with open(changed / "head.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(StrgError, match=r"head.onnx changed since the export"):
        Pipeline.load(changed)


def test_backend_per_network(export):
    model, folder = export
    mixed = Pipeline.load(folder, {"rpn": "onnxruntime", "backbone": "openvino", "head": "onnxruntime"})
    assert [row["backend"] for row in mixed.describe()] == ["onnxruntime", "openvino", "onnxruntime"]
    clips = clips_of(model, 2)
    assert_close(torch_pipeline(model, folder).run(clips).as_dict(), mixed.run(clips).as_dict())


def test_auto_measures_each_network_once_and_remembers_until_something_changes(export, tmp_path):
    model, folder = export
    folder = copied(folder, tmp_path)
    (folder / CHOICE_FILE).unlink(missing_ok=True)  # other tests may have run auto on the shared export
    first = Pipeline.load(folder, "auto")
    assert not first.choice.reused
    for row in first.describe():
        assert set(row["measured_ms"]) == {"onnxruntime", "openvino"}
        assert row["backend"] == min(row["measured_ms"], key=row["measured_ms"].get)
    saved = json.loads((folder / CHOICE_FILE).read_text())
    assert saved["runtimes"] == first.choice.runtimes and saved["key"]["machine"]["cores"] >= 1
    again = Pipeline.load(folder, "auto")
    assert again.choice.reused and again.choice.runtimes == first.choice.runtimes
    assert not Pipeline.load(folder, "auto", threads=1).choice.reused  # another thread setting
    saved = json.loads((folder / CHOICE_FILE).read_text())
    saved["key"]["runtimes"]["openvino"] = "0.0"  # as after an upgrade of a runtime
    (folder / CHOICE_FILE).write_text(json.dumps(saved))
    assert not Pipeline.load(folder, "auto", threads=1).choice.reused
    clips = clips_of(model, 1)
    assert_close(torch_pipeline(model, folder).run(clips).as_dict(), again.run(clips).as_dict())


def test_export_writes_a_reference_sample_of_the_video_and_a_synthetic_clip(export):
    model, folder = export
    manifest = read_manifest(folder)
    entry = manifest["reference"]
    assert entry["file"] == REFERENCE_FILE and entry["sha256"] == file_sha256(folder / REFERENCE_FILE)
    reference = read_reference(folder, manifest)
    cfg = model.cfg
    video = VIDEOS / "arm_wrestling_h264_340x256.mp4"
    if VIDEOS.is_dir():
        assert entry["clips"] == ["video arm_wrestling_h264_340x256.mp4", "synthetic 1"]
        first = video_clip(video, cfg.frames, cfg.size, cfg.span_seconds)
    else:
        assert entry["clips"] == ["synthetic 0", "synthetic 1"]
        first = synthetic_clip(cfg.frames, cfg.size, seed=0)
    np.testing.assert_array_equal(reference.clips[0], first)
    np.testing.assert_array_equal(reference.clips[1], synthetic_clip(cfg.frames, cfg.size, seed=1))
    with torch.no_grad():
        logits = model(torch.from_numpy(reference.clips)).numpy()
    np.testing.assert_allclose(reference.outputs["head"]["logits"], logits, atol=1e-5)
    assert reference.outputs["backbone"]["features"].shape[:3] == (2, cfg.node_dim, cfg.feature_frames)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "auto"])
def test_strg_verify_passes_on_every_backend(export, backend, tmp_path):
    _, folder = export
    folder = copied(folder, tmp_path)  # auto writes its choice beside the export
    result = runner.invoke(app, ["verify", str(folder), "--backend", backend, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["passed"] and [r["network"] for r in record["rows"]] == [
        "files",
        "rpn",
        "backbone",
        "head",
        "chain",
    ]
    assert all(r["passed"] for r in record["rows"]) and len(record["backends"]) == 3
    chain = record["rows"][-1]
    assert chain["top1_equal"] and 0 <= chain["max_abs"] <= chain["tolerance"]


def perturb_one_weight(path: Path) -> str:
    """Add 0.5 to one element of the largest weight of an ONNX file (in place); returns its name."""
    proto = onnx.load(str(path))
    largest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(largest).copy()
    array.flat[0] += 0.5
    largest.CopyFrom(numpy_helper.from_array(array, largest.name))
    onnx.save(proto, str(path))
    return largest.name


def test_a_perturbed_weight_fails_verification(export, tmp_path):
    _, folder = export
    folder = copied(folder, tmp_path)
    perturb_one_weight(folder / "backbone.onnx")
    result = runner.invoke(app, ["verify", str(folder)])
    assert result.exit_code == 1
    assert "error: 1 of 1 checks failed, e.g. changed files: backbone.onnx" in result.stderr
    # the same file re-recorded in the manifest (as a broken re-export would): the numbers catch it
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["networks"]["backbone"]["sha256"] = file_sha256(folder / "backbone.onnx")
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    result = runner.invoke(app, ["verify", str(folder), "--json"])
    assert result.exit_code == 1
    rows = {r["network"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows["files"]["passed"] and rows["rpn"]["passed"] and rows["head"]["passed"]
    assert not rows["backbone"]["passed"] and not rows["chain"]["passed"]
    assert rows["backbone"]["max_abs"] > 10 * rows["backbone"]["tolerance"]


def test_verify_without_or_with_a_broken_reference_is_one_line(export, tmp_path):
    _, folder = export
    folder = copied(folder, tmp_path)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / REFERENCE_FILE).write_bytes(b"not a zip file")
    manifest["reference"]["sha256"] = file_sha256(folder / REFERENCE_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    result = runner.invoke(app, ["verify", str(folder)])
    assert result.exit_code == 2 and result.stderr.startswith("error: cannot read the reference sample")
    assert len(result.stderr.strip().splitlines()) == 1
    del manifest["reference"]
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    result = runner.invoke(app, ["verify", str(folder)])
    assert result.exit_code == 2 and "has no reference sample" in result.stderr
    for args, message in (
        (["verify", str(tmp_path / "none")], "no manifest.json"),
        (
            ["verify", str(folder), "--backend", "torch"],
            "--backend must be one of auto, onnxruntime, openvino",
        ),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.stderr, result.output


def test_verify_runs_in_an_interpreter_where_torch_cannot_be_imported(export):
    _, folder = export
    code = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
from strg_deploy.engines.verify import verify_export
result = verify_export({str(folder)!r}, "openvino")
assert result.passed, result.rows
print(len(result.rows))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "5"


def test_the_preferred_batch_is_the_smallest_optimal_size_in_clips(export):
    model, folder = export
    pipeline = Pipeline.load(folder, "onnxruntime")
    assert pipeline.preferred_clips() is None  # CPU runtimes take any batch
    t = model.cfg.feature_frames
    tuned = {
        "rpn": Limited(pipeline.networks["rpn"], maximum=8 * t, optimal=3 * t),  # frames: 3 clips
        "backbone": Limited(pipeline.networks["backbone"], maximum=8, optimal=4),
        "head": pipeline.networks["head"],
    }
    assert Pipeline(tuned, model.cfg, "softmax", folder).preferred_clips() == 3
