"""TensorRT engine builds: the TensorRT copy of the ONNX files, the build plan, the sidecar and its check,
and the CLI without TensorRT. The builds themselves need TensorRT >= 10.9 and an NVIDIA GPU and skip here."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.config import preset
from strg_deploy.contract import engines as sidecars
from strg_deploy.contract.engines import Gpu, Sidecar, check_engine, read_sidecar, write_sidecar
from strg_deploy.contract.manifest import read_manifest
from strg_deploy.errors import StrgError
from strg_deploy.export import engine as builder
from strg_deploy.export.tensorrt_graph import strg_nodes, tensorrt_model, write_tensorrt_copy

runner = CliRunner()
TRT_MISSING = builder.tensorrt_problem() is not None or isinstance(builder.find_gpu(), str)
NEEDS_TRT = pytest.mark.skipif(TRT_MISSING, reason="needs TensorRT >= 10.9 and an NVIDIA GPU")


# --- the TensorRT copy ---------------------------------------------------------------------------


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_copy_has_declared_fields_and_parser_attributes(tiny_export, tmp_path):
    _, folder = tiny_export
    source = onnx.load(str(folder / "head.onnx"))
    # an attribute the plugin does not declare (tensorrt.plugin would refuse it) is dropped in the copy
    roi = next(n for n in source.graph.node if n.op_type == "FrameRoIAlignMax")
    roi.attribute.append(onnx.helper.make_attribute("debug_name", "x"))
    path = tmp_path / "head.onnx"
    onnx.save(source, str(path))

    copy_path = write_tensorrt_copy(path, tmp_path / "engines" / "head.trt.onnx")
    copy = onnx.load(str(copy_path))
    onnx.checker.check_model(copy, full_check=True)
    nodes = {n.op_type: _attrs(n) for n in strg_nodes(copy)}
    assert nodes == {
        "FrameRoIAlignMax": {
            "spatial_scale": pytest.approx(1 / 16),
            "output_size": 7,
            "sampling_ratio": 2,
            "plugin_namespace": b"strg",
            "plugin_version": b"1",
            "aot": 1,
        },
        "SpaceTimeGraph": {"plugin_namespace": b"strg", "plugin_version": b"1", "aot": 1},
    }
    # the portable file keeps its attributes; the copy keeps the function bodies (aot declared)
    assert "aot" not in _attrs(
        next(n for n in onnx.load(str(path)).graph.node if n.op_type == "SpaceTimeGraph")
    )
    assert {f.name: list(f.attribute) for f in copy.functions} == {
        "FrameRoIAlignMax": [
            "spatial_scale",
            "output_size",
            "sampling_ratio",
            "plugin_namespace",
            "plugin_version",
            "aot",
        ],
        "SpaceTimeGraph": ["plugin_namespace", "plugin_version", "aot"],
    }
    # the other networks have no strg nodes: their copies are the same graph
    rpn = onnx.load(str(write_tensorrt_copy(folder / "rpn.onnx", tmp_path / "rpn.trt.onnx")))
    assert strg_nodes(rpn) == [] and len(rpn.graph.node) == len(
        onnx.load(str(folder / "rpn.onnx")).graph.node
    )


def test_onnxruntime_runs_the_copy_like_the_original(tiny_export, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    _, folder = tiny_export
    copy_path = write_tensorrt_copy(folder / "head.onnx", tmp_path / "head.trt.onnx")
    reference = np.load(folder / "reference.npz")
    cfg = ModelConfigFromExport(folder)
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, cfg.size / 2, size=(2, cfg.feature_frames, cfg.proposals.num_boxes, 4)).astype(
        np.float32
    )
    boxes[..., 2:] += boxes[..., :2] + 1
    mask = rng.uniform(size=boxes.shape[:3]) > 0.3
    feeds = {"features": reference["backbone.features"], "boxes": boxes, "mask": mask}
    outputs = []
    for path in (folder / "head.onnx", copy_path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, feeds)[0])
    assert outputs[0].shape == (2, 5)
    np.testing.assert_array_equal(outputs[0], outputs[1])


def ModelConfigFromExport(folder: Path):
    from strg_deploy.config import ModelConfig

    return ModelConfig.from_dict(read_manifest(folder)["model"]["config"])


def test_copy_refuses_unknown_ops_and_missing_fields():
    node = onnx.helper.make_node(
        "FrameRoIAlignMax", ["f", "b", "m"], ["y"], domain="strg", spatial_scale=0.0625
    )
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", [], []))
    with pytest.raises(StrgError, match="has no attribute output_size"):
        tensorrt_model(model)
    model.graph.node[0].attribute.extend([onnx.helper.make_attribute("output_size", 7.0)])
    with pytest.raises(StrgError, match="attribute output_size must be int"):
        tensorrt_model(model)
    other = onnx.helper.make_node("Mystery", ["x"], ["y"], domain="strg")
    with pytest.raises(StrgError, match="strg::Mystery is not one of FrameRoIAlignMax, SpaceTimeGraph"):
        tensorrt_model(onnx.helper.make_model(onnx.helper.make_graph([other], "g", [], [])))


def test_copy_with_external_data(tiny_export, tmp_path):
    _, folder = tiny_export
    model = onnx.load(str(folder / "head.onnx"))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    source = tmp_path / "src" / "head.onnx"
    source.parent.mkdir()
    onnx.save(model, str(source), save_as_external_data=True, location="head.onnx.data", size_threshold=0)
    copy_path = write_tensorrt_copy(source, tmp_path / "out" / "head.trt.onnx")
    assert sorted(p.name for p in copy_path.parent.iterdir()) == ["head.trt.onnx", "head.trt.onnx.data"]
    copy = onnx.load(str(copy_path))  # loads its weights from the engine folder
    for init in copy.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), weights[init.name])


# --- the plan ------------------------------------------------------------------------------------


def test_plan_profiles_follow_the_model_config(tiny_export, tmp_path):
    _, folder = tiny_export
    manifest = read_manifest(folder)
    plan = builder.plan_build(folder, manifest, max_batch=6)
    cfg = ModelConfigFromExport(folder)
    t, n, s = cfg.feature_frames, cfg.proposals.num_boxes, cfg.size
    assert (
        plan.out_dir == folder / "engines-fp32"
        and plan.timing_cache == folder / "engines-fp32" / "timing.cache"
    )
    assert plan.opt_batch == 4
    assert plan.profiles["rpn"] == {"frames": ((t, 3, s, s), (4 * t, 3, s, s), (6 * t, 3, s, s))}
    assert plan.profiles["backbone"]["clip"] == (
        (1, 3, cfg.frames, s, s),
        (4, 3, cfg.frames, s, s),
        (6, 3, cfg.frames, s, s),
    )
    assert plan.profiles["head"]["mask"] == ((1, t, n), (4, t, n), (6, t, n))
    assert builder.plan_build(folder, manifest, max_batch=2).opt_batch == 2
    assert builder.plan_build(folder, manifest, precision="fp16", out_dir=tmp_path).out_dir == tmp_path
    for kwargs, message in (
        ({"precision": "int8"}, "--precision must be one of fp32, fp16"),
        ({"max_batch": 0}, "--max-batch must be at least 1"),
        ({"max_batch": 4, "opt_batch": 5}, r"--opt-batch must be between 1 and --max-batch \(4\)"),
    ):
        with pytest.raises(StrgError, match=message):
            builder.plan_build(folder, manifest, **kwargs)
    plain = {**manifest, "export": {**manifest["export"], "functions": "inlined"}}
    with pytest.raises(StrgError, match="exported with --plain"):
        builder.plan_build(folder, plain)


def test_an_existing_engine_is_kept_only_when_it_was_built_as_asked(tiny_export, tmp_path):
    """The keep-or-refuse logic on engine files and sidecars written here (no TensorRT involved: the plan
    files are placeholder bytes, and only their hashes are checked)."""
    _, folder = tiny_export
    manifest = read_manifest(folder)
    gpu = Gpu("NVIDIA H200", "9.0")
    plan = builder.plan_build(folder, manifest, out_dir=tmp_path, max_batch=8)
    for network in ("rpn", "backbone", "head"):
        engine = sidecars.engine_path(tmp_path, network)
        engine.write_bytes(network.encode())
        sidecar = _sidecar(
            network=network,
            engine_file=engine.name,
            engine_sha256=sidecars.file_sha256(engine),
            tensorrt_version="10.13.0.35",
            gpu=gpu,
            precision="fp32",
            profile=builder.sidecar_profile(plan, network),
            model_config_sha256=sidecars.config_sha256(manifest["model"]["config"]),
            export_files=sidecars.export_files(manifest),
        )
        write_sidecar(engine, sidecar)
    assert builder.existing_engines(plan, manifest, "10.13.0.35", gpu) == ["rpn", "backbone", "head"]
    other = builder.plan_build(folder, manifest, out_dir=tmp_path, max_batch=16)
    t = preset("tiny").feature_frames
    with pytest.raises(StrgError, match=rf"rpn.engine was built for {t}\.\.{8 * t} \(opt {4 * t}\) frames, "):
        builder.existing_engines(other, manifest, "10.13.0.35", gpu)


def test_plugin_layer_check():
    L = builder.LayerInfo
    expected = Counter({"FrameRoIAlignMax": 1, "SpaceTimeGraph": 1})
    good = [
        L("conv", "CONVOLUTION"),
        L("node__symbolic", "PLUGIN_V3", "strg::FrameRoIAlignMax"),
        L("node__symbolic_multi_out__1", "PLUGIN_V3", "strg::SpaceTimeGraph"),
    ]
    assert builder.plugin_layer_problems(good, expected) == []
    body = [L("conv", "CONVOLUTION"), L("roi_roialign_7", "PLUGIN_V3", "::ROIAlign_TRT"), good[2]]
    problems = builder.plugin_layer_problems(body, expected)
    assert problems[0] == "layer roi_roialign_7 is plugin ::ROIAlign_TRT, not a strg plugin"
    assert (
        "1 strg::FrameRoIAlignMax node(s) became 0 plugin layer(s) (the function body was imported)"
        in problems
    )
    assert builder.plugin_layer_problems([L("conv", "CONVOLUTION")], Counter()) == []


# --- the sidecar ---------------------------------------------------------------------------------

H100 = Gpu("NVIDIA H100 80GB HBM3", "9.0")
SHA = {
    name: f"{i:064x}" for i, name in enumerate(("rpn.onnx", "backbone.onnx", "head.onnx", "reference.npz"))
}


def _manifest(config=None) -> dict:
    networks = {n: {"file": f"{n}.onnx", "sha256": SHA[f"{n}.onnx"]} for n in ("rpn", "backbone", "head")}
    return {
        "networks": networks,
        "reference": {"file": "reference.npz", "sha256": SHA["reference.npz"]},
        "model": {"config": config or preset("tiny").to_dict()},
    }


def _sidecar(**changes) -> Sidecar:
    fields = dict(
        network="head",
        engine_file="head.engine",
        engine_sha256="ab" * 32,
        tensorrt_version="10.13.0.35",
        gpu=H100,
        precision="fp16",
        profile={"mask": {"min": [1, 4, 4], "opt": [4, 4, 4], "max": [8, 4, 4]}},
        model_config_sha256=sidecars.config_sha256(preset("tiny").to_dict()),
        export_files=dict(SHA),
    )
    return Sidecar(**{**fields, **changes})


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "head.engine"
    path = write_sidecar(engine, _sidecar())
    assert path == tmp_path / "head.engine.json"
    data = json.loads(path.read_text())
    assert data["schema"] == "strg-deploy-engine" and data["schema_version"] == 1
    assert data["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert read_sidecar(engine) == _sidecar()


def test_config_hash_ignores_key_order():
    config = preset("tiny").to_dict()
    shuffled = dict(reversed(list(config.items())))
    assert sidecars.config_sha256(shuffled) == sidecars.config_sha256(config)
    assert sidecars.config_sha256(preset("small").to_dict()) != sidecars.config_sha256(config)


def test_check_engine_accepts_a_match_and_names_each_mismatch(tmp_path):
    check_engine(_sidecar(), "10.13.0.35", H100, _manifest())
    cases = [
        (
            (_sidecar(), "10.14.0.1", H100, _manifest()),
            "head.engine was built with TensorRT 10.13.0.35, this is TensorRT 10.14.0.1",
        ),
        (
            (_sidecar(), "10.13.0.35", Gpu("NVIDIA A100-SXM4-80GB", "8.0"), _manifest()),
            r"built for another GPU \(NVIDIA H100 80GB HBM3, compute capability 9.0\), "
            r"this one is NVIDIA A100-SXM4-80GB \(8.0\)",
        ),
        (
            (_sidecar(), "10.13.0.35", H100, _manifest(preset("small").to_dict())),
            "built from another model config",
        ),
    ]
    changed = _manifest()
    changed["networks"]["head"]["sha256"] = "f" * 64
    cases.append(
        ((_sidecar(), "10.13.0.35", H100, changed), "built from another head.onnx than the export's")
    )
    for args, message in cases:
        with pytest.raises(StrgError, match=message) as info:
            check_engine(*args, export_dir="runs/export")
        assert str(info.value).endswith("run `strg engine build runs/export --rebuild`")
        assert "\n" not in str(info.value)
    # another network's file changed: the head engine still fits
    other = _manifest()
    other["networks"]["rpn"]["sha256"] = "f" * 64
    check_engine(_sidecar(), "10.13.0.35", H100, other)
    # the plan file itself is hashed when given
    engine = tmp_path / "head.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(StrgError, match="not the plan file its sidecar describes"):
        check_engine(_sidecar(), "10.13.0.35", H100, _manifest(), engine=engine)
    check_engine(
        _sidecar(engine_sha256=sidecars.file_sha256(engine)), "10.13.0.35", H100, _manifest(), engine=engine
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"head.engine has no sidecar \(head.engine.json is missing\)"),
        ("{not json", "corrupt engine sidecar .*head.engine.json: Expecting property name"),
        ('{"schema": "other"}', "corrupt engine sidecar .*: not a strg engine sidecar"),
        (
            '{"schema": "strg-deploy-engine", "schema_version": 9}',
            "schema version 9, this strg-deploy reads 1",
        ),
    ],
)
def test_missing_or_corrupt_sidecar_is_one_line(tmp_path, text, message):
    engine = tmp_path / "head.engine"
    if text is not None:
        (tmp_path / "head.engine.json").write_text(text)
    with pytest.raises(StrgError, match=message) as info:
        read_sidecar(engine, export_dir="EXP")
    assert "\n" not in str(info.value) and str(info.value).endswith("run `strg engine build EXP --rebuild`")


def test_sidecar_with_a_wrong_field(tmp_path):
    data = _sidecar().to_dict()
    data["profile"]["mask"]["max"] = [8, "4", 4]
    (tmp_path / "head.engine.json").write_text(json.dumps(data))
    with pytest.raises(StrgError, match="profile must map each input to"):
        read_sidecar(tmp_path / "head.engine")


# --- without TensorRT (this machine) -------------------------------------------------------------


@pytest.mark.skipif(not TRT_MISSING, reason="TensorRT and a GPU are present")
def test_engine_build_without_tensorrt_is_one_line(tiny_export, tmp_path):
    _, folder = tiny_export
    result = runner.invoke(app, ["engine", "build", str(folder), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: strg engine build needs TensorRT >= 10.9 and an NVIDIA GPU: ")
    assert lines[0].endswith("pip install 'strg-deploy[gpu]' --extra-index-url https://pypi.nvidia.com")
    assert not (tmp_path / "e").exists()
    with pytest.raises(StrgError, match="needs TensorRT >= 10.9"):
        builder.build_engines(folder)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "no manifest.json in"),
        (["{export}", "--precision", "fp8"], "precision"),
        (["{export}", "--max-batch", "2", "--opt-batch", "4"], "opt"),
        (["{export}", "--out", "{file}"], "is not a folder"),
    ],
)
def test_engine_build_names_the_users_mistake_before_the_machines(tiny_export, tmp_path, args, message):
    _, folder = tiny_export
    (tmp_path / "file").write_text("x")
    paths = {"missing": tmp_path / "nothing", "export": folder, "file": tmp_path / "file"}
    result = runner.invoke(app, ["engine", "build", *(a.format(**paths) for a in args)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "TensorRT" not in lines[0], result.output


@pytest.mark.skipif(not TRT_MISSING, reason="TensorRT and a GPU are present")
def test_export_engine_checks_tensorrt_before_exporting(tmp_path):
    out = tmp_path / "export"
    result = runner.invoke(
        app, ["export", "--preset", "tiny", "--out", str(out), "--engine", "--precision", "fp16"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: strg export --engine needs TensorRT >= 10.9"), (
        result.output
    )
    assert not out.exists()


def test_precision_without_engine_is_refused(tmp_path):
    result = runner.invoke(
        app, ["export", "--preset", "tiny", "--out", str(tmp_path / "x"), "--precision", "fp16"]
    )
    assert result.exit_code == 2 and "--precision is for --engine" in result.output
    result = runner.invoke(app, ["engine", "build", "--help"])
    assert result.exit_code == 0 and "--rebuild" in result.output


def test_missing_plugins_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "strg_deploy.plugins.registration", None)
    with pytest.raises(
        StrgError, match=r"no TensorRT plugin registrations \(strg_deploy.plugins.registration\)"
    ):
        builder._load_plugins()


def test_runtime_side_imports_no_tensorrt_and_no_torch():
    from conftest import loaded_after_importing

    modules = ["contract.engines", "export.engine", "export.tensorrt_graph", "cli.engine"]
    modules = [f"strg_deploy.{m}" for m in modules]
    assert loaded_after_importing(modules, ("torch", "tensorrt", "cuda")) == []


# --- with TensorRT and a GPU ---------------------------------------------------------------------


@NEEDS_TRT
def test_build_keep_and_refuse(tiny_export, tmp_path):
    _, folder = tiny_export
    out = tmp_path / "engines"
    results = builder.build_engines(folder, out_dir=out, max_batch=2)
    assert [(r.network, r.status) for r in results] == [
        ("rpn", "built"),
        ("backbone", "built"),
        ("head", "built"),
    ]
    import tensorrt as trt

    gpu = builder.find_gpu()
    manifest = read_manifest(folder)
    for r in results:
        sidecar = read_sidecar(r.path)
        check_engine(sidecar, trt.__version__, gpu, manifest, engine=r.path)
        assert sidecar.profile[next(iter(sidecar.profile))]["max"][0] in (
            2,
            2 * manifest["clip"]["feature_frames"],
        )
    assert (out / "timing.cache").stat().st_size > 0
    again = builder.build_engines(folder, out_dir=out, max_batch=2)
    assert [r.status for r in again] == ["kept"] * 3
    data = json.loads((out / "head.engine.json").read_text())
    data["tensorrt_version"] = "0.0.0"
    (out / "head.engine.json").write_text(json.dumps(data))
    with pytest.raises(StrgError, match="was built with TensorRT 0.0.0"):
        builder.build_engines(folder, out_dir=out, max_batch=2)
    rebuilt = builder.build_engines(folder, out_dir=out, max_batch=2, rebuild=True)
    assert [r.status for r in rebuilt] == ["built"] * 3
