"""The accuracy study's bookkeeping: per-class and per-pair scores, and the record that lets a study span
machines (benchmarks/accuracy_study.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("accuracy_study", BENCHMARKS / "accuracy_study.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_summary_scores_classes_pairs_and_direction(study):
    # 4 classes = 2 reversal pairs; pair 0: 3 right, 1 reversed; pair 1: one in pair 0, one right.
    labels = np.array([0, 0, 1, 1, 2, 3])
    predicted = np.array([0, 1, 1, 1, 0, 3])
    summary = study.summary_of(predicted, labels, 4)
    assert summary["top1"] == pytest.approx(4 / 6)
    assert summary["per_class"] == [0.5, 1.0, 0.0, 1.0]
    assert summary["pairs"]["0"] == {"accuracy": 0.75, "in_pair": 1.0, "direction": 0.75}
    assert summary["pairs"]["1"] == {"accuracy": 0.5, "in_pair": 0.5, "direction": 1.0}
    assert summary["direction"] == pytest.approx(0.875)
    assert summary["in_pair"] == pytest.approx(0.75)


def test_summary_leaves_out_classes_and_pairs_without_videos(study):
    summary = study.summary_of(np.array([1, 1]), np.array([0, 1]), 4)
    assert summary["per_class"] == [0.0, 1.0, None, None]
    assert summary["pairs"]["1"] == {"accuracy": None, "in_pair": None, "direction": None}
    assert summary["direction"] == pytest.approx(0.5)  # pair 1 has no video: left out of the means
    assert summary["in_pair"] == 1.0


def test_record_adds_replaces_and_matches_settings(study, tmp_path):
    record = tmp_path / "results" / "study.json"
    settings = {"preset": "tiny", "epochs": 2, "lr": 0.02}
    study.add_to_record(record, {"model": "strg-gt", "seed": 1, "settings": settings, "top1": 0.5})
    study.add_to_record(record, {"model": "frame", "seed": 0, "settings": settings, "top1": 0.1})
    study.add_to_record(record, {"model": "strg-gt", "seed": 1, "settings": settings, "top1": 0.6})
    runs = study.read_record(record)
    assert [(r["model"], r["seed"], r["top1"]) for r in runs] == [("frame", 0, 0.1), ("strg-gt", 1, 0.6)]
    assert study.find_run(runs, "strg-gt", 1, settings)["top1"] == 0.6
    assert study.find_run(runs, "strg-gt", 1, {**settings, "epochs": 3}) is None
    assert study.find_run(runs, "strg-gt", 2, settings) is None
    assert json.loads(record.read_text())["runs"] == runs
    assert list(record.parent.iterdir()) == [record]  # no temporary file left


def test_mean_spread_skips_missing_values(study):
    assert study.mean_spread([0.2, 0.4, None]) == "30.0 ± 10.0"
    assert study.mean_spread([0.25]) == "25.0"
    assert study.mean_spread([None]) == "-"
    assert study.mean_spread([600.0, 1200.0], scale=1 / 60) == "15.0 ± 5.0"


def test_the_committed_record_reads_back(study):
    runs = study.read_record(study.RECORD)
    assert runs, "benchmarks/results/accuracy_study.json holds the finished runs"
    for run in runs:
        assert run["model"] in study.MODELS
        assert 0.0 <= run["top1"] <= 1.0
        assert len(run["pairs"]) == 7
