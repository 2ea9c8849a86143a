"""Shared fixtures: loading the scripts of benchmarks/ as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def load_benchmark():
    """``load_benchmark("accuracy_study")`` -> benchmarks/accuracy_study.py as a module. benchmarks/ stays on
    sys.path for the test module's lifetime, since the scripts import their shared helpers from it."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield _load
    finally:
        sys.path.remove(str(BENCHMARKS))


VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
TINY_CLASSES = [f"action_{i}" for i in range(5)]


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(model, folder): a tiny STRG with random weights (seed 0, five classes) exported with a
    reference sample of a real clip (a synthetic one where ../shared/videos is missing). Tests that
    change files copy the folder first. Needs torch."""
    torch = pytest.importorskip("torch", reason="exporting needs the train extra (torch)")
    from strg_deploy.config import preset
    from strg_deploy.export.onnx import ExportOptions, export_model
    from strg_deploy.models.strg import build_model

    torch.manual_seed(0)
    model = build_model(preset("tiny").with_classes(TINY_CLASSES)).eval()
    out = tmp_path_factory.mktemp("tiny_export")
    videos = [VIDEOS / "arm_wrestling_h264_340x256.mp4"] if VIDEOS.is_dir() else []
    export_model(model, out, ExportOptions(max_batch=4), videos=videos)
    return model, out
