"""`strg train` from the command line: a tiny run, resume, and one-line errors."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.data.synthetic import generate
from strg_deploy.models.serialization import load_pretrained

runner = CliRunner()


def test_train_resume_and_errors(tmp_path):
    data = tmp_path / "synth"
    generate(data, videos_train=8, videos_validation=4, size=64, frames=16, workers=1)
    run = tmp_path / "run"
    common = [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--preset",
        "tiny",
        "--boxes",
        str(data / "boxes.jsonl"),
        "--batch-size",
        "4",
        "--workers",
        "0",
    ]
    result = runner.invoke(app, [*common, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "after epoch 1" in result.stdout and "all epochs" in result.stdout
    assert load_pretrained(run / "best").cfg.preset == "tiny"
    result = runner.invoke(app, [*common, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert "after epoch 2" in result.stdout and "after epoch 1" not in result.stdout
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    evaluated = runner.invoke(
        app,
        [
            "eval",
            str(run / "best"),
            "--data",
            str(data),
            "--boxes",
            str(data / "boxes.jsonl"),
            "--workers",
            "0",
            "--crops",
            "3",
            "--json",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads(evaluated.stdout)
    assert metrics["num_videos"] == 4 and 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0

    options = tmp_path / "options.json"
    options.write_text('{"epochz": 3}')
    for args, message in [
        ([*common, "--options", str(options)], "unknown training options ['epochz']"),
        (["eval", str(run / "best"), "--data", str(data), "--format", "folders"], "split folder not found"),
        ([*common[:-2], "--workers", "0", "--format", "kinetics"], "unknown data format 'kinetics'"),
        (["train", "--data", str(data), "--out", str(tmp_path / "new"), "--resume"], "nothing to resume"),
        ([*common[:6], "small", *common[7:], "--resume"], "is for preset 'tiny', the model is 'small'"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output
