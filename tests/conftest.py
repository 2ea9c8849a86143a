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
