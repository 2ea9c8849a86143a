"""ONNX export: custom nodes and their bodies, the RPN's batched post-processing, the manifest, parity
with torch on onnxruntime and OpenVINO (random inputs and real clips), atomic writes, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.config import preset
from strg_deploy.contract.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    file_sha256,
    read_manifest,
    verify_files,
)
from strg_deploy.contract.nodes import (
    DOMAIN,
    ROI_ALIGN_MAX,
    SPACE_TIME_GRAPH,
    inline_functions,
    roi_attributes,
)
from strg_deploy.contract.reference import REFERENCE_FILE
from strg_deploy.errors import StrgError
from strg_deploy.export import onnx as export_onnx
from strg_deploy.export.function_bodies import (
    attach_functions,
    missing_functions,
    roi_align_max_function,
    space_time_graph_function,
)
from strg_deploy.export.onnx import ExportOptions, export_model, export_network
from strg_deploy.export.parity import check_export
from strg_deploy.models.graphs import space_time_graphs
from strg_deploy.models.roi import frame_roi_align_max
from strg_deploy.models.serialization import save_pretrained
from strg_deploy.models.strg import build_model

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
CLASSES = [f"action_{i}" for i in range(5)]
runner = CliRunner()


def tiny_model(seed: int = 0, architecture: str = "strg"):
    torch.manual_seed(seed)
    cfg = preset("tiny").with_classes(CLASSES).replace(architecture=architecture)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model()
    out = tmp_path_factory.mktemp("export")
    manifest = export_model(model, out, ExportOptions(max_batch=4))
    return model, out, manifest


# ---------------------------------------------------------------------------------------------------
# Function bodies on their own: one custom node in a model, run by onnxruntime


def _single_node_model(node, inputs, outputs, function) -> onnx.ModelProto:
    graph = helper.make_graph([node], "one_node", inputs, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
        functions=[function],
    )
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString()).run(None, feeds)


def _boxes(batch, frames, count, size, seed):
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(batch, frames, count, 2, 2, generator=g) * size * 1.2 - 0.1 * size  # some outside
    boxes = torch.cat([corners.amin(dim=3), corners.amax(dim=3)], dim=-1)
    boxes[0, 0, 0] = torch.tensor([3.0, 3.0, 3.2, 3.1])  # smaller than a feature cell
    mask = torch.rand(batch, frames, count, generator=g) > 0.3
    mask[1, 2] = False  # a frame without any valid box
    return boxes, mask


def test_roi_align_max_body_matches_the_torch_op():
    features = torch.randn(2, 6, 3, 5, 7)
    boxes, mask = _boxes(2, 3, 4, 80.0, seed=1)
    node = helper.make_node(
        ROI_ALIGN_MAX,
        ["features", "boxes", "mask"],
        ["nodes"],
        domain=DOMAIN,
        **roi_attributes(spatial_scale=1 / 16, output_size=3, sampling_ratio=2),
    )
    model = _single_node_model(
        node,
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", 6, 3, 5, 7]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", 3, 4, 4]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["B", 3, 4]),
        ],
        [helper.make_tensor_value_info("nodes", TensorProto.FLOAT, ["B", 3, 4, 6])],
        roi_align_max_function(18),
    )
    want = frame_roi_align_max(features, boxes, mask, 1 / 16, 3, 2).numpy()
    feeds = {"features": features.numpy(), "boxes": boxes.numpy(), "mask": mask.numpy()}
    for candidate in (model, inline_functions(model)):
        (got,) = _run(candidate, feeds)
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(got[~mask.numpy()] == 0) and np.abs(got).max() > 0.1
    body_ops = [n.op_type for n in roi_align_max_function(18).node]
    roi = next(n for n in roi_align_max_function(18).node if n.op_type == "RoiAlign")
    attrs = {a.name: a for a in roi.attribute}
    assert attrs["mode"].s == b"avg" and attrs["coordinate_transformation_mode"].s == b"half_pixel"
    assert attrs["sampling_ratio"].ref_attr_name == "sampling_ratio"  # explicit, from the node
    assert body_ops.index("ReduceMax") > body_ops.index("RoiAlign")


def test_space_time_graph_body_matches_the_torch_op_without_nan():
    boxes, mask = _boxes(2, 4, 5, 60.0, seed=2)
    boxes[0, 1, 2] = boxes[0, 2, 3]  # an exact overlap
    node = helper.make_node(SPACE_TIME_GRAPH, ["boxes", "mask"], ["forward", "backward"], domain=DOMAIN)
    model = _single_node_model(
        node,
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", 4, 5, 4]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["B", 4, 5]),
        ],
        [
            helper.make_tensor_value_info("forward", TensorProto.FLOAT, ["B", 3, 5, 5]),
            helper.make_tensor_value_info("backward", TensorProto.FLOAT, ["B", 3, 5, 5]),
        ],
        space_time_graph_function(18),
    )
    forward, backward = space_time_graphs(boxes, mask)
    got_forward, got_backward = _run(model, {"boxes": boxes.numpy(), "mask": mask.numpy()})
    np.testing.assert_allclose(got_forward, forward.numpy(), atol=1e-6)
    np.testing.assert_allclose(got_backward, backward.numpy(), atol=1e-6)
    assert np.isfinite(got_forward).all() and np.isfinite(got_backward).all()
    assert np.all(got_forward[1, 1] == 0) and np.all(got_forward[1, 2] == 0)  # frame 2 of clip 1 is empty
    assert got_forward[0, 1, 2, 3] > 0.5


# ---------------------------------------------------------------------------------------------------
# The exported files


def test_export_writes_three_checked_networks_and_their_manifest(exported):
    model, out, manifest = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "backbone.onnx",
        "head.onnx",
        MANIFEST_FILE,
        REFERENCE_FILE,
        "rpn.onnx",
    ]
    assert read_manifest(out) == manifest and verify_files(out, manifest) == []
    cfg = model.cfg
    t, n, s = cfg.feature_frames, cfg.proposals.num_boxes, cfg.size
    nets = manifest["networks"]
    assert nets["rpn"]["inputs"] == [{"name": "frames", "dtype": "uint8", "shape": ["frames", 3, s, s]}]
    assert nets["rpn"]["outputs"] == [
        {"name": "boxes", "dtype": "float32", "shape": ["frames", n, 4]},
        {"name": "scores", "dtype": "float32", "shape": ["frames", n]},
        {"name": "mask", "dtype": "bool", "shape": ["frames", n]},
    ]
    assert nets["backbone"]["inputs"] == [
        {"name": "clip", "dtype": "uint8", "shape": ["batch", 3, cfg.frames, s, s]}
    ]
    assert [i["name"] for i in nets["head"]["inputs"]] == ["features", "boxes", "mask"]
    assert nets["head"]["inputs"][2] == {"name": "mask", "dtype": "bool", "shape": ["batch", t, n]}
    assert nets["head"]["outputs"] == [
        {"name": "logits", "dtype": "float32", "shape": ["batch", len(CLASSES)]}
    ]
    assert nets["head"]["custom_ops"] == [f"strg::{ROI_ALIGN_MAX}", f"strg::{SPACE_TIME_GRAPH}"]
    assert nets["rpn"]["preprocessing"]["mean"] == list(cfg.proposals.mean)
    assert nets["backbone"]["preprocessing"]["std"] == list(cfg.backbone.std)
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["export"]["opset"] == 18
    assert manifest["model"]["classes"] == CLASSES and manifest["model"]["output_activation"] == "softmax"
    assert manifest["clip"] == {
        "frames": cfg.frames,
        "size": s,
        "span_seconds": cfg.span_seconds,
        "feature_frames": t,
        "temporal_stride": cfg.backbone.temporal_stride,
        "num_boxes": n,
    }
    assert nets["head"]["sha256"] == file_sha256(out / "head.onnx")
    assert {"torch", "onnx", "strg-deploy"} <= set(manifest["versions"])
    head = onnx.load(out / "head.onnx")
    nodes = [node for node in head.graph.node if node.domain == DOMAIN]
    assert sorted(node.op_type for node in nodes) == [ROI_ALIGN_MAX, SPACE_TIME_GRAPH]
    roi = next(node for node in nodes if node.op_type == ROI_ALIGN_MAX)
    attrs = {a.name: helper.get_attribute_value(a) for a in roi.attribute}
    assert attrs == {
        "spatial_scale": pytest.approx(1 / cfg.backbone.spatial_stride),
        "output_size": cfg.head.roi_size,
        "sampling_ratio": cfg.head.sampling_ratio,
        "plugin_namespace": b"strg",
        "plugin_version": b"1",
    }
    assert missing_functions(head) == []
    del head.functions[:]  # the checker alone would accept this file
    onnx.checker.check_model(head, full_check=True)
    assert missing_functions(head) == [ROI_ALIGN_MAX, SPACE_TIME_GRAPH]
    with pytest.raises(StrgError, match="have no function body"):
        export_onnx.check_network(head, "head")
    assert attach_functions(head) is head and missing_functions(head) == []


def test_rpn_pads_every_frame_to_n_at_any_batch(exported):
    model, out, _ = exported
    session = ort.InferenceSession(str(out / "rpn.onnx"))
    size = model.cfg.size
    for frames in (1, 5):
        x = torch.randint(
            0,
            256,
            (frames, 3, size, size),
            dtype=torch.uint8,
            generator=torch.Generator().manual_seed(frames),
        )
        boxes, scores, mask = session.run(None, {"frames": x.numpy()})
        with torch.no_grad():
            want = model.rpn(x)
        assert boxes.shape == (frames, model.rpn.num_boxes, 4) and mask.dtype == np.bool_
        np.testing.assert_allclose(boxes, want.boxes.numpy(), atol=1e-4)
        np.testing.assert_allclose(scores, want.scores.numpy(), atol=1e-6)
        assert np.array_equal(mask, want.mask.numpy())
        assert np.all(boxes[~mask] == 0) and np.all(scores[~mask] == 0)
    ops = {node.op_type for node in onnx.load(out / "rpn.onnx").graph.node}
    assert {"TopK", "NonMaxSuppression", "ScatterND", "GatherElements"} <= ops


def test_parity_with_torch_on_onnxruntime_and_openvino(exported):
    model, out, _ = exported
    videos = [VIDEOS / "arm_wrestling_h264_340x256.mp4"] if VIDEOS.is_dir() else []
    rows = check_export(model, out, videos=videos)
    assert {(r.runtime, r.network) for r in rows} >= {
        (rt, net) for rt in ("onnxruntime", "openvino") for net in ("rpn", "backbone", "head", "chain")
    }
    assert all(row.passed for row in rows), [row for row in rows if not row.passed]
    chain = [r for r in rows if r.network == "chain"]
    assert all(r.max_abs <= 1e-4 and r.top1_equal for r in chain)
    assert len(chain) == 2 * (1 + len(videos))


@pytest.mark.skipif(not VIDEOS.is_dir(), reason=f"real clips not found at {VIDEOS}")
def test_plain_export_has_no_custom_nodes_and_the_same_outputs(exported, tmp_path):
    model, _, _ = exported
    manifest = export_model(model, tmp_path, ExportOptions(max_batch=2, plain=True, external_data=True))
    head = onnx.load(tmp_path / "head.onnx")
    assert not head.functions and all(node.domain != DOMAIN for node in head.graph.node)
    assert {node.op_type for node in head.graph.node} >= {"RoiAlign", "ReduceMax"}
    assert manifest["export"]["functions"] == "inlined" and manifest["networks"]["head"]["custom_ops"] == []
    assert (tmp_path / "backbone.onnx.data").is_file()
    assert manifest["networks"]["backbone"]["external_data"]["sha256"] == file_sha256(
        tmp_path / "backbone.onnx.data"
    )
    rows = check_export(
        model, tmp_path, runtimes=("onnxruntime",), videos=[VIDEOS / "people_bw_film_h264_aac_640x480.mp4"]
    )
    assert all(row.passed for row in rows), rows


def test_a_failed_export_keeps_the_previous_one(exported, tmp_path, monkeypatch):
    _, out, _ = exported
    for file in out.iterdir():  # a previous export
        (tmp_path / file.name).write_bytes(file.read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = export_onnx.export_network

    def failing(model, network, options):
        if network == "head":
            raise StrgError("head.onnx fails onnx.checker: simulated")
        return real(model, network, options)

    monkeypatch.setattr(export_onnx, "export_network", failing)
    other = tiny_model(seed=1)
    with pytest.raises(StrgError, match="simulated"):
        export_model(other, tmp_path, ExportOptions(max_batch=2))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no staging folder left either


def test_a_failed_export_removes_its_staging_folder(tmp_path, monkeypatch):
    def failing(model, network, options):
        raise RuntimeError("the exporter crashed")  # not only StrgError

    monkeypatch.setattr(export_onnx, "export_network", failing)
    with pytest.raises(RuntimeError, match="crashed"):
        export_model(tiny_model(), tmp_path, ExportOptions(max_batch=2))
    assert list(tmp_path.iterdir()) == []


KILLED_EXPORT = """
import os, signal, sys
import torch
from strg_deploy.config import preset
from strg_deploy.export.onnx import ExportOptions, export_model
from strg_deploy.models.strg import build_model

def die(network):  # the staging folder exists by now
    os.kill(os.getpid(), signal.SIGKILL)

export_model(build_model(preset("tiny")).eval(), sys.argv[1], ExportOptions(max_batch=1), on_network=die)
"""


def test_the_next_export_removes_the_staging_folder_of_a_killed_one(tmp_path, monkeypatch):
    killed = subprocess.Popen([sys.executable, "-c", KILLED_EXPORT, str(tmp_path)], stderr=subprocess.PIPE)
    _, stderr = killed.communicate()  # waits: the process is gone, not a zombie
    assert killed.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    (left,) = tmp_path.glob(".export-*")
    assert left.name.startswith(f".export-{killed.pid}-") and left.is_dir()
    live = tmp_path / f".export-{os.getpid()}-running"  # an export of a process that is alive
    legacy = tmp_path / ".export-k3j9x0qa"  # named before staging folders carried a process id
    for folder in (live, legacy):
        folder.mkdir()
    (tmp_path / "keep.txt").write_text("not ours")

    def failing(model, network, options):  # the next export: its clean-up happens before any network
        raise StrgError("head.onnx fails onnx.checker: simulated")

    monkeypatch.setattr(export_onnx, "export_network", failing)
    with pytest.raises(StrgError, match="simulated"):
        export_model(tiny_model(), tmp_path, ExportOptions(max_batch=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "keep.txt"]
    assert export_onnx.remove_stale_staging(tmp_path) == []


def test_export_rejects_bad_options_and_other_architectures(tmp_path):
    for opset in (17, 22, 99):  # 22: onnxruntime has no RoiAlign kernel for it; 99: no such opset
        with pytest.raises(StrgError, match=f"opset must be 18 to 21, got {opset}"):
            export_network(tiny_model(), "head", ExportOptions(opset=opset))
    with pytest.raises(StrgError, match="takes an STRG checkpoint"):
        export_model(tiny_model(architecture="i3d"), tmp_path)
    with pytest.raises(StrgError, match="max-batch must be at least 1"):
        ExportOptions(max_batch=0).validate()
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_exports_a_checkpoint_and_checks_it(tmp_path):
    model = tiny_model(seed=3)
    save_pretrained(model, tmp_path / "best")
    out = tmp_path / "onnx"
    result = runner.invoke(
        app, ["export", str(tmp_path / "best"), "--out", str(out), "--max-batch", "2", "--check"]
    )
    assert result.exit_code == 0, result.output
    assert (
        "exported to" in result.stdout
        and "parity with torch" in result.stdout
        and "FAIL" not in result.stdout
    )
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["model"]["classes"] == CLASSES and manifest["export"]["max_batch"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "OUT"], "give a checkpoint folder or --preset NAME"),
        (["--preset", "tiny"], "needs --out DIR"),
        (["--preset", "tiny", "--out", "OUT", "--opset", "17"], "--opset must be 18 to 21, got 17"),
        (["--preset", "tiny", "--out", "OUT", "--opset", "99"], "--opset must be 18 to 21, got 99"),
        (["--preset", "tiny", "--out", "FILE"], "it exists and is not a folder"),
        (["--preset", "tiny", "--out", "FILE/onnx"], "FILE exists and is not a folder"),
        (
            ["MISSING", "--out", "FILE"],
            "it exists and is not a folder",
        ),  # checked before the checkpoint loads
        (["MISSING", "--out", "OUT"], "checkpoint folder not found"),
        (["--lint", "OUT"], "no manifest.json in"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
    names = {"MISSING": "missing", "OUT": "out", "FILE": "file", "FILE/onnx": "file/onnx"}
    (tmp_path / "file").write_text("not a folder")
    args = [str(tmp_path / names[a]) if a in names else a for a in args]
    message = message.replace("FILE", str(tmp_path / "file"))
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert (tmp_path / "file").read_text() == "not a folder" and not (tmp_path / "out").exists()


def test_cli_lint_passes_the_export_and_names_a_bad_node(exported, tmp_path):
    _, out, _ = exported
    result = runner.invoke(app, ["export", "--lint", str(out)])
    assert result.exit_code == 0, result.output
    assert "0 finding(s) in rpn, backbone, head" in result.stdout
    for file in out.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    head = onnx.load(tmp_path / "head.onnx")
    head.graph.node.append(helper.make_node("NonZero", ["mask"], ["where_valid"], name="/head/NonZero_bad"))
    onnx.save(head, tmp_path / "head.onnx")
    result = runner.invoke(app, ["export", "--lint", str(tmp_path)])
    assert result.exit_code == 1
    assert '"/head/NonZero_bad"' in result.stdout and "[data-dependent-shape]" in result.stdout


def test_head_exports_at_a_later_opset(exported, tmp_path):
    model, _, _ = exported
    proto = export_network(model, "head", ExportOptions(opset=20))
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 20), (DOMAIN, 1)}
    assert all(f.opset_import[0].version == 20 for f in proto.functions)
    inputs = export_onnx.example_inputs(model, seed=4)["head"]
    (logits,) = ort.InferenceSession(proto.SerializeToString()).run(
        None, {k: v.numpy() for k, v in inputs.items()}
    )
    with torch.no_grad():
        np.testing.assert_allclose(logits, model.head(**inputs).numpy(), atol=1e-5)
