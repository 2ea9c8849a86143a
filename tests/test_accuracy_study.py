"""The accuracy study's bookkeeping: per-class and per-pair scores, and the record that lets a study span
machines (benchmarks/accuracy_study.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def study(load_benchmark):
    return load_benchmark("accuracy_study")


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


def test_a_tiny_study_trains_records_and_skips_what_is_recorded(study, load_benchmark, tmp_path, capsys):
    """i3d, then STRG on the fine-tuned RPN's proposals and I3D again, both with the backbone of that i3d
    run; then the diagnosis script on the STRG run. The tiny learning rate keeps the stage-2 weights at
    the init."""
    import torch
    from safetensors.torch import load_file

    from strg_deploy.data.synthetic import CLASS_NAMES, generate

    data, out, record = tmp_path / "synth", tmp_path / "study", tmp_path / "record.json"
    generate(data, videos_train=8, videos_validation=4, size=64, frames=16, workers=1, seed=5)
    common = ["--data", str(data), "--out", str(out), "--record", str(record), "--preset", "tiny"]
    common += ["--epochs", "1", "--lr", "1e-9", "--rpn-epochs", "1", "--seeds", "0", "--workers", "0"]
    with pytest.raises(SystemExit, match="starts from the i3d run of seed 0, which has not finished"):
        study.main([*common, "--models", "strg-rpn-i3d"])
    models = ["--models", "i3d", "strg-rpn-i3d", "i3d-i3d"]
    study.main([*common, *models])
    runs = study.read_record(record)
    assert [(r["model"], r["seed"]) for r in runs] == [("i3d", 0), ("strg-rpn-i3d", 0), ("i3d-i3d", 0)]
    for run in runs:
        assert (
            0.0 <= run["top1"] <= 1.0 and len(run["per_class"]) == len(CLASS_NAMES) and len(run["curve"]) == 1
        )
        assert run["settings"]["train_videos"] == 8 and run["settings"]["validation_videos"] == 4
    assert "rpn_epochs" in runs[1]["settings"] and "rpn_epochs" not in runs[0]["settings"]
    assert (out / "proposals.safetensors").is_file() and (out / "rpn" / "detector.safetensors").is_file()

    first = load_file(out / "i3d" / "seed0" / "last" / "model.safetensors")
    convs = [k for k in first if k.startswith("backbone.resnet.") and k.endswith("conv1.weight")]
    assert len(convs) > 3
    for model in ("strg-rpn-i3d", "i3d-i3d"):
        second = load_file(out / model / "seed0" / "last" / "model.safetensors")
        for name in convs:
            torch.testing.assert_close(second[name], first[name], rtol=0, atol=1e-6)
    assert second.keys() == first.keys()  # i3d-i3d is an I3D

    mtime = (out / "i3d" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    study.main([*common, *models])  # everything is recorded: nothing trains
    assert study.read_record(record) == runs
    assert (out / "i3d" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == mtime
    other_lr = ["1e-8" if arg == "1e-9" else arg for arg in common]
    with pytest.raises(
        SystemExit, match=r"study/i3d/seed0 holds a run with other settings: lr 1e-09 \(not 1e-08\)"
    ):
        study.main([*other_lr, "--models", "i3d"])  # the folder's run has lr 1e-9: not resumed, not recorded
    assert study.read_record(record) == runs

    module = load_benchmark("study_diagnosis")
    capsys.readouterr()
    module.main(
        [
            str(out / "strg-rpn-i3d" / "seed0"),
            "--data",
            str(data),
            "--proposals",
            str(out / "proposals.safetensors"),
            "--threads",
            str(torch.get_num_threads()),
        ]
    )
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.count(" | ") == 4]
    assert [row[:2] for row in rows[:6]] == [
        [boxes, silenced]
        for boxes in ("ground truth", "RPN proposals")
        for silenced in ("-", "graph", "global")
    ]
    assert all(0.0 <= float(row[2]) <= 100.0 for row in rows[:6])
