"""`strg train` from the command line: a tiny run, resume (with the options repeated, or none: the run
folder's settings.json), and one-line errors."""

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
        (
            [*common[:6], "small", *common[7:], "--resume"],
            f"{run} was trained with --preset tiny; this resume gives --preset small (drop the option",
        ),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output


def test_a_resume_needs_no_options_and_names_a_conflicting_one(tmp_path):
    """`strg train --resume --out RUN` takes every setting from RUN/settings.json; max_steps (a stop
    point) is not taken, so the stopped run goes on to its end; --epochs may extend it; another --lr or
    --task is one line, exit 2."""
    data = tmp_path / "synth"
    generate(data, videos_train=8, videos_validation=4, size=64, frames=16, workers=1)
    run = tmp_path / "run"
    stop = tmp_path / "stop.json"
    stop.write_text('{"max_steps": 3}')  # 2 steps per epoch: stopped inside epoch 2
    first = runner.invoke(
        app,
        ["train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--model", "i3d"]
        + ["--boxes", str(data / "boxes.jsonl"), "--batch-size", "4", "--workers", "0", "--epochs", "2"]
        + ["--lr", "0.03", "--options", str(stop)],
    )
    assert first.exit_code == 0, first.output
    settings = json.loads((run / "settings.json").read_text())
    assert settings["data"] == str(data.resolve()) and settings["lr"] == 0.03 and settings["model"] == "i3d"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    for args, fragment in [
        (["--lr", "0.1"], f"{run} was trained with --lr 0.03; this resume gives --lr 0.1 (drop the option"),
        (["--task", "proposals"], "was trained with --task classes; this resume gives --task proposals"),
        (["--data", str(tmp_path)], f"was trained with --data {data.resolve()}; this resume gives --data"),
    ]:
        refused = runner.invoke(app, ["train", "--resume", "--out", str(run), *args])
        assert refused.exit_code == 2 and refused.output.count("\n") == 1, refused.output
        assert refused.output.startswith("error: ") and fragment in refused.output, refused.output
    resumed = runner.invoke(app, ["train", "--resume", "--out", str(run)])
    assert resumed.exit_code == 0, resumed.output
    assert "after epoch 2" in resumed.stdout and "after epoch 1" not in resumed.stdout
    longer = runner.invoke(app, ["train", "--resume", "--out", str(run), "--epochs", "3", "--lr", "0.03"])
    assert longer.exit_code == 0, longer.output
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3] and rows[-1]["global_step"] == 6
    assert json.loads((run / "settings.json").read_text())["epochs"] == 3
    assert load_pretrained(run / "last").cfg.architecture == "i3d"
