"""Training checkpoints: round trips of weights, optimizer, scheduler, position and RNG; the atomic swap
of RUN_DIR/last under failures; configs from another preset; the backbone init of the two-stage recipe."""

from __future__ import annotations

import dataclasses
import errno
import os
import random

import numpy as np
import pytest
import torch

from strg_deploy.config import STAGE_BLOCKS, alternating_inflate, preset
from strg_deploy.errors import StrgError
from strg_deploy.models.serialization import load_pretrained
from strg_deploy.models.strg import build_model
from strg_deploy.train import checkpoint as ckpt
from strg_deploy.train.checkpoint import (
    TrainPosition,
    checkpoint_dir,
    has_checkpoint,
    load_backbone_init,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def tiny_i3d():
    return preset("tiny").replace(architecture="i3d")


def make_training(cfg, seed=0, lr=0.1, scale=1024.0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    return model, opt, sched, scaler


def train_steps(model, opt, sched, steps=3):
    cfg = model.cfg
    model.train()
    for _ in range(steps):
        clip = torch.randint(0, 256, (2, 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8)
        targets = torch.randint(0, cfg.num_classes, (2,))
        loss = model.loss(model(clip), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def leftovers(run_dir):
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))


def weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_train_position_round_trip_and_validation():
    pos = TrainPosition(epoch=3, step=7, global_step=55, best_metric=0.625, seed=11)
    assert TrainPosition.from_dict(pos.to_dict()) == pos
    assert TrainPosition.from_dict({"epoch": 1}) == TrainPosition(epoch=1)
    with pytest.raises(StrgError, match="unknown keys"):
        TrainPosition.from_dict({"epoch": 1, "sampler": 2})
    with pytest.raises(StrgError, match="step must be a non-negative integer"):
        TrainPosition.from_dict({"step": -1})


def test_round_trip_restores_everything(tmp_path, tiny_i3d):
    model, opt, sched, scaler = make_training(tiny_i3d, scale=512.0)
    train_steps(model, opt, sched, steps=2)
    pos = TrainPosition(epoch=1, step=2, global_step=2, best_metric=0.5, seed=7)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    folder = save_checkpoint(tmp_path, "last", model, opt, sched, scaler, pos, extra={"lr": 0.1, "tag": "x"})
    assert folder == tmp_path / "last"
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "state.pt"}
    assert leftovers(tmp_path) == []
    expected = (torch.rand(4), np.random.rand(3), random.random())

    # load into a fresh training set-up (other seed, other weights) after the RNG streams moved on
    model2, opt2, sched2, scaler2 = make_training(tiny_i3d, seed=99)
    assert not weights_equal(model, model2)
    torch.rand(10)
    np.random.rand(10)
    random.random()
    loaded = load_checkpoint(folder, model2, opt2, sched2, scaler2)

    assert loaded.position == pos
    assert loaded.extra == {"lr": 0.1, "tag": "x"}
    assert loaded.path == folder
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert weights_equal(model, model2)
    momentum = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    momentum2 = [opt2.state[p]["momentum_buffer"] for p in model2.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, momentum2, strict=True))
    assert sched2.last_epoch == sched.last_epoch == 2
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.05)
    assert scaler2.get_scale() == 512.0

    # the weights part is an ordinary pretrained folder
    assert weights_equal(load_pretrained(folder), model)


def test_resumed_training_matches_uninterrupted(tmp_path, tiny_i3d):
    model, opt, sched, scaler = make_training(tiny_i3d)
    train_steps(model, opt, sched, steps=2)
    save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=2))
    train_steps(model, opt, sched, steps=2)

    model2, opt2, sched2, _ = make_training(tiny_i3d, seed=5)
    load_checkpoint(tmp_path / "last", model2, opt2, sched2)
    train_steps(model2, opt2, sched2, steps=2)
    assert weights_equal(model, model2)


def test_restore_rng_false_leaves_streams_alone(tmp_path, tiny_i3d):
    model = build_model(tiny_i3d)
    save_checkpoint(tmp_path, "best", model, None, None, None, TrainPosition())
    torch.manual_seed(42)
    expected = torch.rand(3)
    fresh = build_model(tiny_i3d)
    torch.manual_seed(42)
    load_checkpoint(tmp_path / "best", fresh, restore_rng=False)
    assert torch.equal(torch.rand(3), expected)


def test_second_save_replaces_first(tmp_path, tiny_i3d):
    model, opt, sched, _ = make_training(tiny_i3d)
    save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=1))
    save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=2))
    assert leftovers(tmp_path) == []
    loaded = load_checkpoint(tmp_path / "last", build_model(tiny_i3d), restore_rng=False)
    assert loaded.position.global_step == 2


def test_interrupt_between_renames_puts_the_old_checkpoint_back(tmp_path, tiny_i3d, monkeypatch):
    model, opt, sched, _ = make_training(tiny_i3d)
    save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=1))
    real_rename = os.rename

    def rename(src, dst):
        if str(src).endswith(".tmp-" + str(os.getpid())):
            raise KeyboardInterrupt  # Ctrl-C (or SIGTERM, which the CLI turns into SystemExit)
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=2))
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    loaded = load_checkpoint(tmp_path / "last", build_model(tiny_i3d), restore_rng=False)
    assert loaded.position.global_step == 1


def test_kill_between_renames_recovers_from_old(tmp_path, tiny_i3d):
    model, opt, sched, _ = make_training(tiny_i3d)
    save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=1))
    # what kill -9 leaves between the two renames: last moved aside, the new folder complete beside it
    save_checkpoint(tmp_path, "best", model, opt, sched, None, TrainPosition(global_step=2))
    os.rename(tmp_path / "last", tmp_path / ".last.old")
    os.rename(tmp_path / "best", tmp_path / f".last.tmp-{2**22 + 1}")  # a pid no process has
    assert not (tmp_path / "last").exists()
    assert (tmp_path / ".last.old").is_dir()
    assert has_checkpoint(tmp_path, "last")
    assert checkpoint_dir(tmp_path, "last") == tmp_path / ".last.old"
    loaded = load_checkpoint(tmp_path / "last", build_model(tiny_i3d), restore_rng=False)
    assert loaded.position.global_step == 1
    # the next save removes the dead writer's folder and puts a new last in place
    save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=3))
    assert leftovers(tmp_path) == []
    loaded = load_checkpoint(tmp_path / "last", build_model(tiny_i3d), restore_rng=False)
    assert loaded.position.global_step == 3


def test_interrupted_weights_write_keeps_previous(tmp_path, tiny_i3d, monkeypatch):
    import safetensors.torch

    model, opt, sched, _ = make_training(tiny_i3d)
    save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=2))
    monkeypatch.undo()
    # an exception that is no OSError still happened before any rename: last is untouched
    model2 = build_model(tiny_i3d)
    loaded = load_checkpoint(tmp_path / "last", model2, restore_rng=False)
    assert loaded.position.global_step == 1
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("stage", ["state", "weights", "rename"])
def test_disk_full_during_save(tmp_path, tiny_i3d, monkeypatch, stage):
    import safetensors.torch

    model, opt, sched, _ = make_training(tiny_i3d)
    save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def disk_full(*args, **kwargs):
        raise full

    if stage == "weights":
        monkeypatch.setattr(safetensors.torch, "save", disk_full)
    elif stage == "state":
        monkeypatch.setattr(ckpt.os, "fsync", disk_full)  # the state.pt write
    else:
        real_rename = os.rename

        def rename(src, dst):
            if str(src).endswith(".tmp-" + str(os.getpid())):
                raise full
            real_rename(src, dst)

        monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(StrgError) as info:
        save_checkpoint(tmp_path, "last", model, opt, sched, None, TrainPosition(global_step=2))
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot save checkpoint {tmp_path / 'last'}")
    assert "No space left on device" in message
    assert leftovers(tmp_path) == []
    model2 = build_model(tiny_i3d)
    loaded = load_checkpoint(tmp_path / "last", model2, restore_rng=False)
    assert loaded.position.global_step == 1
    assert all(torch.equal(model2.state_dict()[k], v) for k, v in before.items())


def test_stale_old_beside_complete_last_is_ignored_and_removed(tmp_path, tiny_i3d):
    model = build_model(tiny_i3d)
    save_checkpoint(tmp_path, "last", model, None, None, None, TrainPosition(global_step=1))
    (tmp_path / ".last.old").mkdir()  # a removal that was cut short
    (tmp_path / ".last.tmp-999999").mkdir()  # a killed writer's folder
    assert checkpoint_dir(tmp_path) == tmp_path / "last"
    save_checkpoint(tmp_path, "last", model, None, None, None, TrainPosition(global_step=2))
    assert leftovers(tmp_path) == []
    assert load_checkpoint(tmp_path / "last", model, restore_rng=False).position.global_step == 2


def test_checkpoint_from_another_preset_names_both(tmp_path):
    small = build_model(preset("small").replace(architecture="i3d"))
    save_checkpoint(tmp_path, "best", small, None, None, None, TrainPosition())
    tiny = build_model(preset("tiny").replace(architecture="i3d"))
    with pytest.raises(StrgError, match="is for preset 'small', the model is 'tiny'") as info:
        load_checkpoint(tmp_path / "best", tiny)
    assert "backbone.width 16 vs 8" in str(info.value)


def test_checkpoint_with_other_classes_or_architecture(tmp_path, tiny_i3d):
    model = build_model(tiny_i3d)
    save_checkpoint(tmp_path, "best", model, None, None, None, TrainPosition())
    other = build_model(tiny_i3d.with_classes(["a", "b", "c"]))
    with pytest.raises(StrgError, match="does not fit the model's config .*classes"):
        load_checkpoint(tmp_path / "best", other)
    strg = build_model(preset("tiny"))
    with pytest.raises(StrgError, match="architecture 'i3d' vs 'strg'"):
        load_checkpoint(tmp_path / "best", strg)
    # inference-time proposal knobs do not block a resume
    relaxed = build_model(tiny_i3d.replace(span_seconds=3.0))
    load_checkpoint(tmp_path / "best", relaxed, restore_rng=False)


def test_missing_files_and_folders(tmp_path, tiny_i3d):
    model = build_model(tiny_i3d)
    with pytest.raises(StrgError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "last", model)
    with pytest.raises(StrgError, match="checkpoint folder not found"):
        checkpoint_dir(tmp_path, "best")
    assert not has_checkpoint(tmp_path)
    save_checkpoint(tmp_path, "last", model, None, None, None, TrainPosition())
    (tmp_path / "last" / "state.pt").unlink()
    with pytest.raises(StrgError, match="incomplete: state.pt is missing"):
        load_checkpoint(tmp_path / "last", model)
    with pytest.raises(StrgError, match="checkpoint name must be one of"):
        save_checkpoint(tmp_path, "latest", model, None, None, None, TrainPosition())


def test_corrupt_state_and_optimizer_mismatch(tmp_path, tiny_i3d):
    model, opt, sched, _ = make_training(tiny_i3d)
    save_checkpoint(tmp_path, "last", model, None, None, None, TrainPosition())
    with pytest.raises(StrgError, match="holds no optimizer state"):
        load_checkpoint(tmp_path / "last", model, opt)
    save_checkpoint(tmp_path, "last", model, opt, None, None, TrainPosition())
    other_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(StrgError, match="the optimizer state does not fit"):
        load_checkpoint(tmp_path / "last", model, other_opt)
    (tmp_path / "last" / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(StrgError, match="cannot read training state"):
        load_checkpoint(tmp_path / "last", model)


def test_extra_must_be_json(tmp_path, tiny_i3d):
    with pytest.raises(StrgError, match="JSON-able"):
        save_checkpoint(
            tmp_path, "last", build_model(tiny_i3d), None, None, None, TrainPosition(), {"x": {1, 2}}
        )
    assert not (tmp_path / "last").exists()


def test_backbone_init_from_i3d_run(tmp_path, tiny_i3d):
    torch.manual_seed(1)
    i3d = build_model(tiny_i3d)
    save_checkpoint(tmp_path, "best", i3d, None, None, None, TrainPosition())
    torch.manual_seed(2)
    strg = build_model(preset("tiny"))
    head_before = {k: v.clone() for k, v in strg.head.state_dict().items()}
    assert not weights_equal(strg.backbone, i3d.backbone)
    count = load_backbone_init(strg, tmp_path / "best")
    assert count == len(i3d.backbone.state_dict())
    assert weights_equal(strg.backbone, i3d.backbone)
    assert all(torch.equal(strg.head.state_dict()[k], v) for k, v in head_before.items())
    # the weights file itself works too
    load_backbone_init(strg, tmp_path / "best" / "model.safetensors")


def test_backbone_init_mismatch_names_keys(tmp_path, tiny_i3d):
    narrow = tiny_i3d.replace(backbone=dataclasses.replace(tiny_i3d.backbone, out_dim=16))
    save_checkpoint(tmp_path, "best", build_model(narrow), None, None, None, TrainPosition())
    strg = build_model(preset("tiny"))
    with pytest.raises(
        StrgError,
        match=r"backbone weights in .* does not fit the model: 2 shape mismatch: "
        r"backbone\.reduce\.weight \[16, 64, 1, 1, 1\] vs model \[32, 64, 1, 1, 1\]",
    ):
        load_backbone_init(strg, tmp_path / "best")

    deeper = tiny_i3d.replace(
        backbone=dataclasses.replace(
            tiny_i3d.backbone, depth=34, inflate=alternating_inflate(STAGE_BLOCKS[34])
        )
    )
    save_checkpoint(tmp_path / "deep", "best", build_model(deeper), None, None, None, TrainPosition())
    with pytest.raises(StrgError, match=r"\d+ unexpected: backbone\.resnet\.layer1\.2\."):
        load_backbone_init(strg, tmp_path / "deep" / "best")
    with pytest.raises(StrgError, match="holds no backbone"):
        empty = tmp_path / "empty.safetensors"
        import safetensors.torch

        safetensors.torch.save_file({"head.w": torch.zeros(1)}, str(empty))
        load_backbone_init(strg, empty)


FULL_DISK_SCRIPT = """
import resource, signal, sys
from pathlib import Path
import torch
from strg_deploy.config import preset
from strg_deploy.errors import StrgError
from strg_deploy.models.strg import build_model
from strg_deploy.train.checkpoint import TrainPosition, save_checkpoint

run = Path(sys.argv[1])
model = build_model(preset("tiny").replace(architecture="i3d"))
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
clip = torch.randint(0, 256, (1, 3, 8, 64, 64), dtype=torch.uint8)
model.loss(model(clip), torch.tensor([0])).backward()
opt.step()  # momentum buffers: state.pt becomes as large as the weights
save_checkpoint(run, "last", model, opt, None, None, TrainPosition(global_step=1))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    save_checkpoint(run, sys.argv[3], model, opt, None, None, TrainPosition(global_step=2))
except StrgError as err:
    print("StrgError:", err)
"""


@pytest.mark.parametrize(("name", "limit"), [("last", 4096), ("best", 4096), ("last", 1_100_000)])
def test_a_real_failed_write_during_save_is_one_error_and_leaves_nothing(tmp_path, name, limit):
    """A write that the kernel refuses (the file-size limit stands in for a full disk: the same failed
    write(2)) inside safetensors or torch.save: one StrgError, no temporary folder, the old checkpoint."""
    import subprocess
    import sys

    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(run), str(limit), name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"StrgError: cannot save checkpoint {run / name}: "), line
    assert "\n" not in line and ("too large" in line.lower() or "too big" in line.lower()), line
    assert leftovers(run) == []
    weights, state = ((run / "last" / file).stat().st_size for file in ("model.safetensors", "state.pt"))
    assert (weights > limit) if limit == 4096 else (weights < limit < state)  # safetensors / torch.save fails
    loaded = load_checkpoint(run / "last", build_model(preset("tiny").replace(architecture="i3d")))
    assert loaded.position.global_step == 1
