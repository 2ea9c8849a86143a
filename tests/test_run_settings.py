"""The settings a run folder records (RUN/settings.json) and how a resume merges them with the options it
is given: the record fills in what is not given, a conflicting option is one line naming it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from strg_deploy.config import preset
from strg_deploy.errors import StrgError
from strg_deploy.models.strg import build_model
from strg_deploy.train.checkpoint import TrainPosition, save_checkpoint
from strg_deploy.train.loop import TrainOptions
from strg_deploy.train.run import PROPOSALS_LR, RunSpec, plan_run, settings_of
from strg_deploy.train.settings import SETTINGS_FILE, merge_settings, read_settings, write_settings


def recorded(tmp_path, **options):
    spec = RunSpec(tmp_path / "data", "ssv2", "tiny", "i3d", tmp_path / "run", boxes=tmp_path / "b.jsonl")
    return settings_of("classes", spec, TrainOptions(**options))


def test_the_record_round_trips_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = {**recorded(tmp_path), "data": "data", "cache": None}
    path = write_settings(tmp_path / "run", settings)
    assert path == tmp_path / "run" / SETTINGS_FILE and sorted(p.name for p in path.parent.iterdir()) == [
        SETTINGS_FILE
    ]
    back = read_settings(tmp_path / "run")
    assert back == {**settings, "data": str(tmp_path / "data"), "boxes": str(tmp_path / "b.jsonl")}
    assert json.loads(path.read_text())["settings_format"] == 1
    assert read_settings(tmp_path / "nothing") is None
    path.write_text("{not json")
    with pytest.raises(StrgError, match="cannot read the run's settings"):
        read_settings(tmp_path / "run")


def test_a_resume_takes_what_it_is_not_given_from_the_record(tmp_path):
    record = recorded(tmp_path, lr=0.01, epochs=2, max_steps=3, workers=2)
    merged = merge_settings("RUN", record, {"epochs": 4, "workers": 0, "device": "cpu", "lr": None})
    kept = {k: v for k, v in record.items() if k != "max_steps"}  # a stop point for one command only
    assert merged == {**kept, "epochs": 4, "workers": 0, "device": "cpu"}
    assert merge_settings("RUN", record, {"max_steps": 9})["max_steps"] == 9
    same = {"lr": 0.01, "preset": "tiny", "data": str(tmp_path / "x" / ".." / "data")}
    assert merge_settings("RUN", record, same)["lr"] == 0.01  # the recorded value given again is fine


@pytest.mark.parametrize(
    ("given", "line"),
    [
        (
            {"lr": 0.1},
            "RUN was trained with --lr 0.01; this resume gives --lr 0.1 "
            "(drop the option to keep the recorded value)",
        ),
        (
            {"preset": "small", "freeze_bn": True},
            "RUN was trained with --preset tiny, --train-bn; this resume gives --preset small, --freeze-bn "
            "(drop the options to keep the recorded values)",
        ),
        (
            {"proposals": "p.safetensors"},
            "RUN was trained with no --proposals; this resume gives --proposals",
        ),
        (
            {"weight_decay": 0.001},
            "RUN was trained with weight_decay 0.0001; this resume gives weight_decay 0.001 (drop",
        ),
    ],
)
def test_a_conflicting_option_is_one_line_naming_it(tmp_path, given, line):
    with pytest.raises(StrgError) as caught:
        merge_settings("RUN", recorded(tmp_path, lr=0.01), given)
    message = str(caught.value)
    assert message.startswith(line) and "\n" not in message


def test_plan_run_of_a_resume_uses_the_record(tmp_path):
    run = tmp_path / "run"
    spec = RunSpec(tmp_path / "data", "ssv2", "tiny", "i3d", run, boxes=tmp_path / "b.jsonl")
    options = TrainOptions(epochs=2, batch_size=4, lr=0.01, seed=3)
    write_settings(run, settings_of("proposals", spec, options))
    with pytest.raises(StrgError, match="nothing to resume in .*: no last/ checkpoint"):
        plan_run(run, {"format": "ssv2", "preset": "small"}, given=set(), resume=True)
    (run / "last").mkdir()
    cli_defaults = {"format": "ssv2", "preset": "small", "model": "strg", "task": "classes", "epochs": 5}
    task, got, got_options = plan_run(run, cli_defaults, given={"epochs"}, resume=True)
    assert task == "proposals" and got_options == dataclasses.replace(options, epochs=5)
    assert (got.data, got.preset, got.model, got.boxes, got.resume) == (
        spec.data,
        "tiny",
        "i3d",
        spec.boxes,
        True,
    )
    with pytest.raises(StrgError, match="trained with --preset tiny; this resume gives --preset small"):
        plan_run(run, cli_defaults, given={"preset"}, resume=True)
    # a new run takes what it is given; the RPN's own default learning rate
    task, new, new_options = plan_run(tmp_path / "new", {**cli_defaults, "task": "proposals", "data": "d"})
    assert task == "proposals" and new.preset == "small" and new_options.lr == PROPOSALS_LR
    with pytest.raises(StrgError, match="Missing option '--data'"):
        plan_run(tmp_path / "new", cli_defaults)


def test_a_run_folder_without_a_record_falls_back_to_its_checkpoint(tmp_path):
    cfg = preset("tiny").replace(architecture="i3d")
    torch.manual_seed(0)
    options = TrainOptions(epochs=3, lr=0.3)
    extra = {"task": "proposals", "options": dataclasses.asdict(options)}
    save_checkpoint(tmp_path, "last", build_model(cfg), None, None, None, TrainPosition(), extra)
    assert read_settings(tmp_path) == {"task": "proposals", **dataclasses.asdict(options)}
    with pytest.raises(StrgError, match="Missing option '--data': .* has no settings.json to take it from"):
        plan_run(tmp_path, {"task": "classes"}, given=set(), resume=True)
