"""`strg proposals` and training STRG from precomputed proposals or a detector file, from the command line."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.config import preset
from strg_deploy.data.synthetic import generate
from strg_deploy.models.proposals import RegionProposer
from strg_deploy.models.serialization import load_pretrained
from strg_deploy.models.weights import load_detector_weights
from strg_deploy.train.precompute import precomputed_tracks
from strg_deploy.train.proposer import save_detector

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_proposals")
    data = root / "synth"
    generate(data, videos_train=4, videos_validation=2, size=64, frames=16, workers=1, seed=2)
    torch.manual_seed(0)
    proposer = RegionProposer(preset("tiny"))
    for parameter in proposer.head.parameters():  # varied objectness, so the boxes differ per frame
        parameter.data.normal_(0, 0.5)
    detector = save_detector(proposer, root / "detector.safetensors")
    return root, data, detector, proposer


def common(data, run):
    return ["--data", str(data), "--out", str(run), "--preset", "tiny", "--batch-size", "2", "--workers", "0"]


def test_proposals_cover_both_splits_and_train_strg(setup):
    root, data, detector, _ = setup
    out = root / "proposals.safetensors"
    args = ["proposals", "--data", str(data), "--detector", str(detector), "--preset", "tiny"]
    result = runner.invoke(app, [*args, "--out", str(out), "--batch-frames", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "proposals of 6 videos" in result.stdout
    tracks = precomputed_tracks(out, preset("tiny").proposals.num_boxes)
    assert len(tracks) == 6
    first = next(iter(tracks))
    assert tracks[first].boxes.shape == (16, preset("tiny").proposals.num_boxes, 4)
    assert tracks[first].valid.any()

    run = root / "run"
    result = runner.invoke(app, ["train", *common(data, run), "--proposals", str(out), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert load_pretrained(run / "best").cfg.architecture == "strg"
    evaluated = runner.invoke(
        app,
        ["eval", str(run / "best"), "--data", str(data), "--proposals", str(out), "--workers", "0", "--json"],
    )
    assert evaluated.exit_code == 0, evaluated.output


def test_detector_weights_reach_the_rpn_and_the_checkpoint(setup):
    root, data, detector, proposer = setup
    run = root / "run_rpn"
    args = ["train", *common(data, run), "--detector", str(detector), "--epochs", "1"]
    result = runner.invoke(app, [*args, "--options", str(_options(root, max_steps=1))])
    assert result.exit_code == 0, result.output
    saved = load_pretrained(run / "last").rpn.state_dict()
    for name, value in proposer.state_dict().items():
        torch.testing.assert_close(saved[name], value, msg=name)


def _options(root, **values):
    path = root / "options.json"
    path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "i3d", "--detector", "DET"], "--model i3d has none"),
        (["--boxes", "BOXES", "--proposals", "DET"], "not both"),
        (["--proposals", "MISSING"], "not found"),
    ],
)
def test_bad_combinations_fail_in_one_line(setup, extra, message):
    root, data, detector, _ = setup
    names = {"DET": str(detector), "BOXES": str(data / "boxes.jsonl"), "MISSING": str(root / "nope")}
    extra = [names.get(x, x) for x in extra]
    result = runner.invoke(app, ["train", *common(data, root / "bad"), *extra])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_proposals_need_a_readable_detector(setup):
    root, data, _, _ = setup
    args = ["proposals", "--data", str(data), "--preset", "tiny", "--out", str(root / "p.safetensors")]
    result = runner.invoke(app, [*args, "--detector", str(root / "missing.pth")])
    assert result.exit_code == 2 and "missing.pth" in result.output
    assert not (root / "p.safetensors").exists()


def test_task_proposals_fine_tunes_the_rpn_and_reports_recall(setup):
    root, data, _, _ = setup
    run = root / "rpn"
    args = ["train", "--task", "proposals", *common(data, run), "--boxes", str(data / "boxes.jsonl")]
    result = runner.invoke(app, [*args, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "recall at 4 boxes per frame" in result.stdout
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= line["recall"] <= 1.0 and line["lr"] >= 0.0
    fresh = RegionProposer(preset("tiny"))
    load_detector_weights(fresh, run / "detector.safetensors")  # strict: every key fits the preset's RPN
    result = runner.invoke(app, [*args, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(text) for text in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and lines[0] == line  # epoch 1 kept, epoch 2 added


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "proposals"], "give --boxes"),
        (["--task", "detect"], "--task must be classes or proposals"),
        (["--task", "proposals", "--boxes", "BOXES", "--resume"], "nothing to resume"),
    ],
)
def test_task_errors_are_one_line(setup, extra, message):
    root, data, _, _ = setup
    extra = [str(data / "boxes.jsonl") if arg == "BOXES" else arg for arg in extra]
    result = runner.invoke(app, ["train", *common(data, root / "bad_task"), *extra])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
