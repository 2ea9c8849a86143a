"""The training loop: epochs of SGD steps, validation per video, `last/` and `best/` checkpoints, resume.

``fit`` trains a model on a :class:`~strg_deploy.train.data.ClipDataset`. Every step is reproducible from
(seed, epoch, position): the shuffle order of an epoch comes from the seed and the epoch alone, the clip
of an item from (seed, epoch, item), and the checkpoint carries the model, optimiser, schedule and RNG
states, so a run stopped after any saved step and resumed ends with the weights of an uninterrupted run.
Metrics go to ``RUN_DIR/metrics.jsonl`` (one JSON object per epoch: validation metrics, the training
throughput in clips/s and the loader's share of the step time, i.e. time spent waiting for batches).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_write_text
from strg_deploy.processes import loader_worker_init
from strg_deploy.train.checkpoint import TrainPosition, load_checkpoint, remove_stale_saves, save_checkpoint
from strg_deploy.train.data import ClipDataset
from strg_deploy.train.metrics import VideoScores, evaluate
from strg_deploy.train.optim import make_optimizer, scaled_lr, warmup_cosine


@dataclass(frozen=True)
class TrainOptions:
    """Options of a run. ``lr`` is quoted for a batch of 8 and scaled linearly with ``batch_size``."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.02  # STRG from scratch (the accuracy study's sweep; I3D does better at 0.05)
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    max_grad_norm: float = 10.0
    workers: int = 2
    seed: int = 0
    freeze_bn: bool = False
    device: str = "auto"
    save_every: int = 0  # also save last/ every this many steps inside an epoch (0: at epoch ends only)
    max_steps: int | None = None  # stop (after saving last/) once this many steps ran in total
    amp: bool = True  # float16 autocast with gradient scaling on CUDA (never on the CPU: bf16 was 17x slower)
    max_unreadable: float = 0.1  # stop when more than this fraction of an epoch's videos cannot be read

    def __post_init__(self) -> None:
        """Check every option's type and range with the rules of the command-line flags; one StrgError
        names the first option that breaks them."""
        for name, (kind, low, high) in _OPTION_RULES.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            _check_option(name, value, kind, low, high)
        choose_device(self.device, check_available=False)  # the device's name; availability at fit time


# option -> (type, lowest, highest allowed value); None: no bound. The flags of `strg train` use the same.
_OPTION_RULES: dict[str, tuple[type, float | None, float | None]] = {
    "epochs": (int, 1, None),
    "batch_size": (int, 1, None),
    "lr": (float, 0.0, None),
    "weight_decay": (float, 0.0, None),
    "warmup_epochs": (float, 0.0, None),
    "max_grad_norm": (float, 0.0, None),
    "workers": (int, 0, None),
    "seed": (int, 0, 2**32 - 1),
    "freeze_bn": (bool, None, None),
    "device": (str, None, None),
    "save_every": (int, 0, None),
    "max_steps": (int, 1, None),
    "amp": (bool, None, None),
    "max_unreadable": (float, 0.0, 1.0),
}
_OPTIONAL = frozenset({"max_steps"})


def _finite(value: float) -> bool:
    """A finite number that fits a float (an integer of 400 digits does not)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _check_option(name: str, value: object, kind: type, low: float | None, high: float | None) -> None:
    """StrgError unless ``value`` is a ``kind`` (an int counts as a float, a bool as neither) within
    [low, high]; the learning rate must be above 0, not just at it."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    else:
        ok = isinstance(value, kind)
    described = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
    if not ok:
        raise StrgError(f"training option {name} must be {described}, got {value!r}")
    if low is not None and (value < low or (name == "lr" and value <= low)):
        bound = f"> {low}" if name == "lr" else f">= {low}"
        raise StrgError(f"training option {name} must be {bound}, got {value!r}")
    if high is not None and value > high:
        raise StrgError(f"training option {name} must be <= {high}, got {value!r}")


class EpochSampler(torch.utils.data.Sampler[int]):
    """The items of one epoch in an order fixed by (seed, epoch), from position ``start`` on.

    With ``world`` > 1 processes, global batch k (``batch_size`` items of the order) is cut into
    ``world`` equal parts and process ``rank`` gets part ``rank``: the processes together see exactly the
    batches a single process would, so averaged gradients equal the single-process ones.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        epoch: int,
        start: int = 0,
        shuffle: bool = True,
        *,
        batch_size: int = 1,
        rank: int = 0,
        world: int = 1,
    ):
        if batch_size % world:
            raise StrgError(f"the batch size {batch_size} does not split over {world} processes")
        self.size, self.seed, self.epoch, self.start, self.shuffle = size, seed, epoch, start, shuffle
        self.batch_size, self.rank, self.world = batch_size, rank, world

    def order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def indices(self) -> np.ndarray:
        order = self.order()[self.start :]
        if self.world == 1:
            return order
        batches = len(order) // self.batch_size
        parts = order[: batches * self.batch_size].reshape(batches, self.world, -1)
        return parts[:, self.rank].reshape(-1)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return len(self.indices())


def distributed() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) unless torch.distributed is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def choose_device(name: str, check_available: bool = True) -> torch.device:
    """``auto`` is CUDA when available, else the CPU; otherwise the named device (``cpu``, ``cuda``,
    ``cuda:K``). With ``check_available`` a CUDA device that this machine lacks is a StrgError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise StrgError(f"unknown device {name!r}: {err}; use auto, cpu, cuda or cuda:K") from None
    if device.type not in ("cpu", "cuda"):
        raise StrgError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:K")
    if check_available and device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise StrgError(f"device {name!r}: no CUDA GPU is available here; use --device cpu or auto")
        if device.index is not None and device.index >= count:
            raise StrgError(f"device {name!r}: this machine has {count} CUDA GPU(s): cuda:0..{count - 1}")
    return device


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _freeze_batch_norm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)


def _tensorboard(run_dir: Path):
    """A TensorBoard writer under RUN_DIR/tensorboard when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _check_unreadable(unreadable: int, seen: int, epoch: int, limit: float) -> None:
    if unreadable > limit * seen:
        raise StrgError(
            f"{unreadable} of the {seen} videos read in epoch {epoch + 1} could not be decoded "
            f"(more than max_unreadable = {limit:.0%}): check the data"
        )


def video_scores(
    model: nn.Module, dataset: ClipDataset, batch_size: int, workers: int, device
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (softmax, or sigmoid for multi-label data) of every view averaged per video:
    (video indices int64 [V], scores float64 [V, C]).

    Under torch.distributed every process scores its own share of the views (views rank, rank + world,
    ...) and the per-video sums are gathered, so all processes return the scores of the whole split.
    """
    rank, world = distributed()
    model.eval()
    scores = VideoScores()
    share = torch.utils.data.Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset
    loader = torch.utils.data.DataLoader(
        share, batch_size=batch_size, num_workers=workers, worker_init_fn=loader_worker_init()
    )
    with torch.inference_mode():
        for batch in loader:
            batch = _to(batch, device)
            logits = model(batch["clip"], batch.get("boxes"), batch.get("mask"))
            probabilities = logits.sigmoid() if dataset.cfg.multi_label else logits.softmax(-1)
            scores.add(batch["video"].cpu().numpy(), probabilities.float().cpu().numpy())
    if world > 1:
        states: list = [None] * world
        torch.distributed.all_gather_object(states, scores.state() if len(scores) else None)
        scores = VideoScores()
        for state in states:
            if state is not None:
                scores.merge_state(state)
    return scores.averaged()


def validate(model: nn.Module, dataset: ClipDataset, batch_size: int, workers: int, device) -> dict:
    """The dataset's metrics (see train.metrics) of :func:`video_scores`."""
    videos, averaged = video_scores(model, dataset, batch_size, workers, device)
    records = dataset.dataset.records
    targets = np.stack([dataset.dataset.targets(records[int(v)]) for v in videos])
    return evaluate(averaged, targets, dataset.cfg.multi_label, dataset.cfg.classes).to_dict()


def sum_over_ranks(values: list[float], world: int) -> list[float]:
    """Element-wise sum of per-process numbers over all processes (the values themselves when alone)."""
    if world == 1:
        return values
    total = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(total)  # gloo and NCCL both reduce float64 CPU/GPU tensors
    return total.tolist()


def _metrics_lines(run_dir: Path) -> list[str]:
    """The lines of ``run_dir/metrics.jsonl`` (none when it does not exist)."""
    path = run_dir / "metrics.jsonl"
    try:
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    except (OSError, UnicodeDecodeError) as err:
        raise StrgError(f"cannot read {path}: {err}") from None


def fit(
    model: nn.Module,
    train_set: ClipDataset,
    val_set: ClipDataset | None,
    run_dir: str | Path,
    options: TrainOptions = TrainOptions(),
    *,
    resume: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    extra: dict | None = None,
) -> TrainPosition:
    """Train ``model`` (its ``loss`` gives the objective) and write checkpoints under ``run_dir``.

    ``extra`` (JSON-able) is kept in every checkpoint's training state beside the options; a resumed
    run keeps what its checkpoint held and adds ``extra`` to it.

    on_step(global_step, total_steps, loss) is called after every step (progress bars), on_epoch(metrics)
    after every epoch with the line written to metrics.jsonl (rank 0 only for both). Returns the final
    position. With ``resume`` the run continues from ``run_dir/last``.
    """
    run_dir = Path(run_dir)
    rank, world = distributed()
    device = choose_device(options.device)
    steps_per_epoch = len(train_set) // options.batch_size
    if steps_per_epoch < 1:
        raise StrgError(f"{len(train_set)} training clips make no batch of {options.batch_size}")
    total = steps_per_epoch * options.epochs
    torch.manual_seed(options.seed)
    model.to(device)
    if options.freeze_bn:
        _freeze_batch_norm(model)
    if options.batch_size % world:
        raise StrgError(f"the batch size {options.batch_size} does not split over {world} processes")
    forward = model
    if world > 1:  # gradients averaged over the processes; rank 0 alone writes
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    optimizer = make_optimizer(
        model, scaled_lr(options.lr, options.batch_size), weight_decay=options.weight_decay
    )
    warmup = min(round(options.warmup_epochs * steps_per_epoch), total - 1)
    scheduler = warmup_cosine(optimizer, total, warmup)
    use_amp = options.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp) if use_amp else None
    position = TrainPosition(epoch=0, step=0, global_step=0, best_metric=None, seed=options.seed)
    saved_extra: dict = {}
    if resume:
        position, saved_extra, _ = load_checkpoint(run_dir / "last", model, optimizer, scheduler, scaler)
    extra = {**saved_extra, **(extra or {}), "options": dataclasses.asdict(options)}
    if rank == 0:
        remove_stale_saves(run_dir)
    # metrics.jsonl holds one line per finished epoch: a resumed run drops lines of epochs its checkpoint
    # had not finished (a kill between the line and the save) and the file is rewritten whole each epoch
    logged = _metrics_lines(run_dir)[: position.epoch] if resume else []

    def save(name: str) -> None:
        if rank == 0:
            save_checkpoint(run_dir, name, model, optimizer, scheduler, scaler, position, extra)

    def wait_for_rank0() -> None:
        if world > 1:
            torch.distributed.barrier()

    while position.epoch < options.epochs:
        epoch = position.epoch
        train_set.set_epoch(epoch)
        sampler = EpochSampler(
            len(train_set),
            options.seed,
            epoch,
            start=position.step * options.batch_size,
            batch_size=options.batch_size,
            rank=rank,
            world=world,
        )
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=options.batch_size // world,
            sampler=sampler,
            num_workers=options.workers,
            drop_last=True,
            worker_init_fn=loader_worker_init(),
        )
        model.train()
        if options.freeze_bn:
            _freeze_batch_norm(model)
        seen = unreadable = clips = 0
        waiting = computing = loss_sum = 0.0
        tick = epoch_start = time.perf_counter()
        for batch in loader:
            fetched = time.perf_counter()
            waiting += fetched - tick
            seen += len(batch["skipped"])  # each item counts its own video once: 1 if it was unreadable
            unreadable += int(batch["skipped"].sum())
            if seen >= 100:  # judged early only on enough videos; always at the epoch's end
                _check_unreadable(unreadable, seen, epoch, options.max_unreadable)
            batch = _to(batch, device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                logits = forward(batch["clip"], batch.get("boxes"), batch.get("mask"))
                loss = model.loss(logits.float(), batch["target"])
            if not torch.isfinite(loss):
                raise StrgError(f"the loss became {loss.item()} at step {position.global_step}: lower --lr")
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                if options.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                if options.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), options.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            tick = time.perf_counter()
            computing += tick - fetched
            clips += len(batch["skipped"])
            loss_sum += float(loss.detach()) * len(batch["skipped"])
            position = dataclasses.replace(
                position, step=position.step + 1, global_step=position.global_step + 1
            )
            if on_step is not None and rank == 0:
                on_step(position.global_step, total, float(loss.detach()))
            stop = options.max_steps is not None and position.global_step >= options.max_steps
            if stop or (options.save_every and position.step % options.save_every == 0):
                save("last")
            if stop:
                wait_for_rank0()
                return position
        seen, unreadable, clips, loss_sum, waiting, computing = sum_over_ranks(
            [seen, unreadable, clips, loss_sum, waiting, computing], world
        )
        _check_unreadable(unreadable, seen, epoch, options.max_unreadable)
        position = dataclasses.replace(position, epoch=epoch + 1, step=0)
        metrics = {
            "epoch": epoch + 1,
            "global_step": position.global_step,
            "lr": scheduler.get_last_lr()[0],
            "train_loss": loss_sum / max(clips, 1),  # mean over this epoch's clips (of a resumed part only)
            "unreadable_videos": int(unreadable),
            # clips of all processes per second of one process's time (processes run side by side)
            "train_clips_per_second": clips / max((waiting + computing) / world, 1e-9),
            "loader_share": waiting / max(waiting + computing, 1e-9),
        }
        improved = False
        if val_set is not None:
            metrics.update(validate(model, val_set, options.batch_size, options.workers, device))
            headline = metrics["headline"]
            improved = position.best_metric is None or headline > position.best_metric
            if improved:
                position = dataclasses.replace(position, best_metric=headline)
        metrics["epoch_seconds"] = time.perf_counter() - epoch_start  # training and validation, wall clock
        if rank == 0:
            logged.append(json.dumps(metrics))
            atomic_write_text(run_dir / "metrics.jsonl", "".join(line + "\n" for line in logged))
            board = _tensorboard(run_dir)
            if board is not None:
                for key, value in metrics.items():
                    if isinstance(value, (int, float)) and key not in ("epoch", "global_step"):
                        board.add_scalar(key, value, position.global_step)
                board.close()
            if on_epoch is not None:
                on_epoch(metrics)
        save("last")
        if improved or val_set is None:
            save("best")
        wait_for_rank0()
    return position
