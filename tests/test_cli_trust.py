"""What `strg train`, `eval` and `proposals` promise a user: a run folder that holds a run is never
overwritten silently, where results go is checked before any work, the same seed writes the same bytes,
every bad option value is one `error:` line, and the help says what each option does."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.data.synthetic import generate
from strg_deploy.train.run_dir import prepare_run_dir

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    generate(folder, videos_train=8, videos_validation=4, size=64, frames=16, workers=1)
    return folder


def train_args(data, out, *extra):
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--boxes",
        str(data / "boxes.jsonl"),
        "--batch-size",
        "4",
        "--workers",
        "0",
        *extra,
    ]


def one_error_line(result, *fragments):
    """The command failed with status 2 and printed one line, ``error: ...``, holding ``fragments``."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_folder_holding_a_run_is_refused_then_moved_aside_with_overwrite(data, tmp_path):
    run = tmp_path / "run"
    assert runner.invoke(app, train_args(data, run, "--epochs", "1")).exit_code == 0
    weights = digest(run / "best" / "model.safetensors")
    metrics = (run / "metrics.jsonl").read_text()
    refused = runner.invoke(app, train_args(data, run, "--epochs", "1", "--seed", "3"))
    one_error_line(refused, "already holds a run", "--resume", "--overwrite")
    assert digest(run / "best" / "model.safetensors") == weights
    assert (run / "metrics.jsonl").read_text() == metrics
    both = runner.invoke(app, train_args(data, run, "--resume", "--overwrite"))
    one_error_line(both, "pick one")

    again = runner.invoke(app, train_args(data, run, "--epochs", "1", "--seed", "3", "--overwrite"))
    assert again.exit_code == 0, again.output
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1  # the old run, whole, beside the new one
    assert digest(aside[0] / "best" / "model.safetensors") == weights
    assert (aside[0] / "metrics.jsonl").read_text() == metrics
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_where_results_go_is_checked_before_any_work(data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "run"):
        result = runner.invoke(app, train_args(data, out, "--epochs", "1"))
        one_error_line(result, str(out))
    assert blocker.read_text() == "not a folder"
    detector = tmp_path / "detector.safetensors"
    detector.write_bytes(b"")  # never read: the output is checked first
    for out, message in ((blocker, "exists; pass --overwrite"), (blocker / "p.safetensors", "cannot write")):
        result = runner.invoke(
            app,
            [
                "proposals",
                "--data",
                str(data),
                "--detector",
                str(detector),
                "--preset",
                "tiny",
                "--out",
                str(out),
            ],
        )
        one_error_line(result, message)


def test_prepare_run_dir_moves_aside_and_never_deletes(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="already holds a run"):
        prepare_run_dir(run, resume=False, overwrite=False)
    moved = prepare_run_dir(run, resume=False, overwrite=True)
    assert moved is not None and (moved / "notes.txt").read_text() == "mine" and (moved / "best").is_dir()
    assert not run.exists()  # created by the run's first write
    run.mkdir()
    assert prepare_run_dir(run, resume=False, overwrite=False) is None  # an empty folder holds no run
    with pytest.raises(Exception, match="nothing to resume"):
        prepare_run_dir(run, resume=True, overwrite=False)


def test_the_same_command_and_seed_write_the_same_weights(data, tmp_path):
    """The initial weights come from --seed too: two runs are byte-identical, another seed is not."""
    runs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        result = runner.invoke(app, train_args(data, tmp_path / name, "--epochs", "1", "--seed", seed))
        assert result.exit_code == 0, result.output
        runs[name] = digest(tmp_path / name / "last" / "model.safetensors")
    assert runs["a"] == runs["b"] != runs["c"]
    losses = [
        json.loads((tmp_path / name / "metrics.jsonl").read_text())["train_loss"] for name in ("a", "b")
    ]
    assert losses[0] == losses[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"workers": -1}, "workers must be >= 0"),
        ({"seed": -5}, "seed must be >= 0"),
        ({"epochs": "ten"}, "epochs must be an integer, got 'ten'"),
        ({"epochs": 1.5}, "epochs must be an integer, got 1.5"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": "fast"}, "lr must be a number"),
        ({"freeze_bn": "yes"}, "freeze_bn must be true or false"),
        ({"max_unreadable": 2}, "max_unreadable must be <= 1.0"),
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"device": "mps"}, "device 'mps' is not supported"),
        ({"device": 3}, "device must be a string"),
    ],
)
def test_options_file_values_are_checked_like_the_flags(data, tmp_path, options, message):
    path = tmp_path / "options.json"
    path.write_text(json.dumps(options))
    args = train_args(data, tmp_path / "run", "--options", str(path))
    del args[args.index("--batch-size") : args.index("--workers") + 2]  # flags would override the file
    result = runner.invoke(app, args)
    one_error_line(result, message if "device '" in message else f"training option {message}")
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_gpu_is_one_line(data, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the error is for machines without one")
    train = runner.invoke(app, train_args(data, tmp_path / "run", "--device", "cuda"))
    one_error_line(train, "no CUDA GPU is available", "--device cpu")
    assert not (tmp_path / "run").exists()
    evaluated = runner.invoke(app, ["eval", str(tmp_path), "--data", str(data), "--device", "cuda:1"])
    one_error_line(evaluated, "no CUDA GPU is available")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--data", "x", "--out", "y", "--epochs", "0"], ("'--epochs'", "(see strg train --help)")),
        (["train", "--out", "y"], ("Missing option '--data'",)),
        (["trian"], ("No such command 'trian'", "(see strg --help)")),
        (["model", "summary", "--batch", "two"], ("'--batch'", "(see strg model summary --help)")),
        (["export", "--bogus"], ("No such option: --bogus",)),
    ],
)
def test_usage_errors_are_one_line_too(args, fragments):
    one_error_line(runner.invoke(app, args), *fragments)


def test_annotation_entries_skipped_are_reported_and_bounded(data, tmp_path):
    """Entries whose videos are missing are reported in one warning line at the start; past
    max_unreadable the run stops before training."""
    import shutil

    copy = tmp_path / "synth"
    shutil.copytree(data, copy)
    (copy / "videos" / "1.mp4").unlink()
    options = tmp_path / "lenient.json"
    options.write_text('{"max_unreadable": 0.2}')
    result = runner.invoke(
        app, train_args(copy, tmp_path / "run", "--epochs", "1", "--options", str(options))
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "train: 1 of 8 entries skipped (1 missing video file" in warnings[0]
    strict = runner.invoke(app, train_args(copy, tmp_path / "run2"))  # the default bound: 10 %
    one_error_line(strict, "1 of 8 entries", "more than 10%")
    assert not (tmp_path / "run2").exists()  # nothing written, not even the folder


def test_strg_on_a_random_rpn_is_warned_about(data, tmp_path):
    args = train_args(data, tmp_path / "run", "--epochs", "1")
    args.remove("--boxes")
    args.remove(str(data / "boxes.jsonl"))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: STRG's boxes come from its RPN, which has random weights" in result.output
    evaluated = runner.invoke(
        app, ["eval", str(tmp_path / "run" / "best"), "--data", str(data), "--workers", "0"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "RPN has random weights" in evaluated.output
    with_boxes = runner.invoke(
        app,
        ["eval", str(tmp_path / "run" / "best"), "--data", str(data), "--boxes", str(data / "boxes.jsonl")]
        + ["--workers", "0"],
    )
    assert with_boxes.exit_code == 0 and "warning" not in with_boxes.output


def test_the_last_line_names_the_best_epoch(data, tmp_path):
    result = runner.invoke(app, train_args(data, tmp_path / "run", "--epochs", "2"))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda row: row["headline"])
    last = result.stdout.strip().splitlines()[-1]
    expected = (
        f"best top1 {100 * best['headline']:.1f} % at epoch {best['epoch']} (step {best['global_step']})"
    )
    assert last.startswith(expected), last


@pytest.mark.parametrize("command", [["train"], ["eval"], ["proposals"], ["export"], ["data", "synth"]])
def test_every_option_and_argument_is_described(command):
    """No option without a help text, and arguments in the usage line in capitals, not {braces}."""
    import typer.main

    group = typer.main.get_command(app)
    cmd = group
    for name in command:
        cmd = cmd.commands[name]
    for param in cmd.params:
        if param.name != "help":
            assert getattr(param, "help", None), f"{' '.join(command)}: {param.name} has no help"
    usage = runner.invoke(app, [*command, "--help"]).stdout
    assert "{" not in usage.split("\n\n")[0] + usage.splitlines()[1]
