"""The training loop, for both tasks (the action model and the RPN): a tiny run trains and validates;
a run interrupted mid-epoch resumes to the same bytes; save_every, max_steps and mixed precision."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch

from strg_deploy.config import preset
from strg_deploy.data.datasets import read_box_tracks, read_something_something_v2
from strg_deploy.data.synthetic import generate
from strg_deploy.errors import StrgError
from strg_deploy.models.serialization import load_pretrained
from strg_deploy.models.state_dicts import read_state_dict
from strg_deploy.models.strg import build_model
from strg_deploy.train.data import ClipDataset, LoaderConfig
from strg_deploy.train.loop import ActionTask, EpochSampler, TrainOptions, fit, train_task
from strg_deploy.train.proposer import DETECTOR_FILE, ProposalTask, fit_proposer

OPTIONS = TrainOptions(epochs=2, batch_size=4, lr=0.05, workers=0, seed=7, warmup_epochs=0.5)
TASKS = ("classes", "proposals")
VOLATILE = {"train_clips_per_second", "train_frames_per_second", "loader_share", "epoch_seconds"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, videos_train=12, videos_validation=4, size=64, frames=16, workers=1, seed=1)
    train = read_something_something_v2(root, "train")
    val = read_something_something_v2(root, "validation")
    tracks = read_box_tracks(root / "boxes.jsonl")
    cfg = preset("tiny").with_classes(train.classes)
    return cfg, train, val, tracks


def datasets(data, cache):
    cfg, train, val, tracks = data
    return (
        ClipDataset(train, cfg, train=True, tracks=tracks, cache=cache, seed=OPTIONS.seed),
        ClipDataset(val, cfg, train=False, tracks=tracks, cache=cache, loader=LoaderConfig(temporal_clips=2)),
    )


def fresh_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def test_sampler_order_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(10, 3, 1), EpochSampler(10, 3, 1, start=4)
    assert sorted(a) == list(range(10)) and list(b) == list(a)[4:]
    assert list(EpochSampler(10, 3, 2)) != list(a)


def test_tiny_run_trains_validates_and_writes_checkpoints(data, tmp_path):
    cfg = data[0]
    train_set, val_set = datasets(data, tmp_path / "cache")
    model = fresh_model(cfg)
    before = [p.detach().clone() for p in model.head.parameters()]
    losses, reported = [], []
    position = fit(
        model,
        train_set,
        val_set,
        tmp_path / "run",
        OPTIONS,
        on_step=lambda step, total, loss: losses.append(loss),
        on_epoch=reported.append,
    )
    assert (position.epoch, position.global_step) == (2, 6)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2] and all(0.0 <= m["top1"] <= 1.0 for m in lines)
    assert lines == json.loads(json.dumps(reported))
    for epoch, line in enumerate(lines):  # the epoch's mean loss over equal batches; wall time covered
        assert line["train_loss"] == pytest.approx(sum(losses[3 * epoch : 3 * epoch + 3]) / 3, rel=1e-6)
        assert line["epoch_seconds"] > 0
    assert lines[0]["num_videos"] == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.head.parameters(), strict=True))
    reloaded = load_pretrained(tmp_path / "run" / "last")
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert load_pretrained(tmp_path / "run" / "best").cfg == cfg


def run_task(task, data, run_dir, options, *, resume=False, on_step=None, validation=True):
    """Train ``task`` ("classes": a fresh STRG; "proposals": the RPN) on fresh datasets; the model that
    a resume starts from has other weights (resuming must load them)."""
    cfg = data[0]
    train_set, val_set = datasets(data, run_dir.parent / "cache")
    if task == "proposals":
        return fit_proposer(cfg, train_set, val_set, run_dir, options, resume=resume, on_step=on_step)
    torch.manual_seed(123 if resume else 0)
    model = build_model(cfg)
    return fit(
        model, train_set, val_set if validation else None, run_dir, options, resume=resume, on_step=on_step
    )


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def saved_state(run_dir, name="last"):
    return torch.load(run_dir / name / "state.pt", weights_only=True)


def metrics_lines(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in lines]


class Killed(Exception):
    pass


def kill_at(global_step):
    def on_step(step, total, loss):
        if step == global_step:
            raise Killed

    return on_step


@pytest.mark.parametrize("task", TASKS)
def test_a_run_killed_mid_epoch_resumes_to_the_same_bytes(data, tmp_path, task):
    """Killed inside the second epoch (last/ saved every step), resumed: the same weights, checkpoints,
    metrics lines (the resumed epoch's training loss included) and, for the RPN, detector file."""
    run_task(task, data, tmp_path / "straight", OPTIONS)
    with pytest.raises(Killed):  # killed at step 6, before its save: last/ holds step 5 = epoch 2, step 2
        run_task(
            task, data, tmp_path / "parts", dataclasses.replace(OPTIONS, save_every=1), on_step=kill_at(6)
        )
    position = saved_state(tmp_path / "parts")["position"]
    assert (position["epoch"], position["step"], position["global_step"]) == (1, 2, 5)
    steps = []
    run_task(task, data, tmp_path / "parts", OPTIONS, resume=True, on_step=lambda *a: steps.append(a[:2]))
    assert steps == [(6, 6)]
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    for name in ("last", "best"):
        assert digest(parts / name / "model.safetensors") == digest(straight / name / "model.safetensors")
    assert metrics_lines(parts) == metrics_lines(straight) and len(metrics_lines(parts)) == 2
    if task == "proposals":
        assert digest(parts / DETECTOR_FILE) == digest(straight / DETECTOR_FILE)


@pytest.mark.parametrize("task", TASKS)
def test_save_every_max_steps_and_a_resume_of_an_older_checkpoint(data, tmp_path, task):
    run = tmp_path / "run"
    options = dataclasses.replace(OPTIONS, save_every=2)
    with pytest.raises(Killed):  # killed at step 3: the save of step 2 is there
        run_task(task, data, run, options, on_step=kill_at(3), validation=False)
    assert saved_state(run)["position"]["global_step"] == 2
    steps = []
    stopped = dataclasses.replace(OPTIONS, max_steps=4)
    run_task(task, data, run, stopped, resume=True, on_step=lambda *a: steps.append(a[0]), validation=False)
    state = saved_state(run)
    assert steps == [3, 4] and (state["position"]["epoch"], state["position"]["step"]) == (1, 1)
    assert len(metrics_lines(run)) == 1
    extra = json.loads(state["extra"])
    assert extra["task"] == task and extra["epoch_progress"]["clips"] == 4
    # a checkpoint written before the loop was shared: no task (the action model's), no epoch sums
    older = {k: v for k, v in extra.items() if k != "epoch_progress" and (task != "classes" or k != "task")}
    torch.save({**state, "extra": json.dumps(older)}, run / "last" / "state.pt")
    steps.clear()
    run_task(task, data, run, OPTIONS, resume=True, on_step=lambda *a: steps.append(a[0]), validation=False)
    assert steps == [5, 6] and [m["epoch"] for m in metrics_lines(run)] == [1, 2]
    other = "proposals" if task == "classes" else "classes"
    with pytest.raises(StrgError, match=f"is a checkpoint of --task {task}, not --task {other}"):
        run_task(other, data, run, OPTIONS, resume=True)


def first_conv(model):
    return next(m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))


def make_task(task, data, options, tmp_path):
    cfg = data[0]
    train_set, val_set = datasets(data, tmp_path / "cache")
    if task == "proposals":
        return ProposalTask(cfg, val_set, options), train_set
    return ActionTask(fresh_model(cfg), None, options), train_set


@pytest.mark.parametrize("dtype", [torch.bfloat16, None])
@pytest.mark.parametrize("task", TASKS)
def test_mixed_precision_autocasts_both_tasks(data, tmp_path, task, dtype):
    """CPU autocast (bfloat16) follows CUDA's casting rules: both tasks train under it, the weights and
    their checkpoint stay float32; without it the same steps compute in float32."""
    options = dataclasses.replace(OPTIONS, max_steps=2)
    trainer, train_set = make_task(task, data, options, tmp_path)
    seen, losses = [], []
    first_conv(trainer.model.backbone).register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    run = tmp_path / "run"
    train_task(trainer, train_set, run, options, cpu_autocast=dtype, on_step=lambda *a: losses.append(a[2]))
    assert set(seen) == {dtype or torch.float32}
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert saved_state(run)["scaler"] is None  # gradient scaling is for CUDA's float16
    weights = read_state_dict(run / "last" / "model.safetensors")
    floats = [w for w in weights.values() if w.is_floating_point()]
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in floats)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="mixed precision runs on CUDA only: needs a CUDA GPU"
)
@pytest.mark.parametrize("task", TASKS)
def test_cuda_mixed_precision_trains_and_saves_the_scaler(data, tmp_path, task):
    options = dataclasses.replace(OPTIONS, device="cuda", max_steps=2)
    trainer, train_set = make_task(task, data, options, tmp_path)
    seen = []
    first_conv(trainer.model.backbone).register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    train_task(trainer, train_set, tmp_path / "run", options)
    assert saved_state(tmp_path / "run")["scaler"] is not None and set(seen) == {torch.float16}
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_metrics_also_go_to_tensorboard(data, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging needs the tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = data[0]
    train_set, val_set = datasets(data, tmp_path / "cache")
    options = TrainOptions(**{**OPTIONS.__dict__, "epochs": 1})
    fit(fresh_model(cfg), train_set, val_set, tmp_path / "run", options)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"top1", "lr", "train_clips_per_second"} <= set(events.Tags()["scalars"])
    assert events.Scalars("top1")[0].step == 3
