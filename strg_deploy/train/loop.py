"""The training loop, one for every task: epochs of SGD steps, validation, `last/` and `best/`
checkpoints, metrics, resume.

:func:`train_task` trains what a :class:`Task` supplies (the model, how a batch becomes a loss, how
validation measures it and which metric picks ``best/``): :class:`ActionTask` (:func:`fit`) for the
action model, ``train.proposer.ProposalTask`` (``fit_proposer``) for the RPN. Both get the same device
choice, DistributedDataParallel under torchrun, sampler, schedule, mixed precision, finite-loss check,
gradient clipping, ``save_every``/``max_steps``, unreadable-video accounting, metrics and checkpoints.

Every step is reproducible from (seed, epoch, position): the shuffle order of an epoch comes from the
seed and the epoch alone, the clip of an item from (seed, epoch, item), and the checkpoint carries the
model, optimiser, schedule, gradient scaler and RNG states and the sums of an epoch saved part-way, so
a run stopped after any saved step, mid-epoch included, and resumed ends with the weights and metrics
of an uninterrupted run. Metrics go to ``RUN_DIR/metrics.jsonl`` (one JSON object per epoch: the mean
training loss and its parts, validation metrics, the training throughput in clips/s and the loader's
share of the step time, i.e. time spent waiting for batches).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_write_text
from strg_deploy.processes import loader_worker_init
from strg_deploy.train.checkpoint import (
    TrainPosition,
    checkpoint_dir,
    checkpoint_extra,
    load_checkpoint,
    remove_stale_saves,
    save_checkpoint,
)
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


def _check_unreadable(unreadable: float, seen: float, epoch: int, limit: float) -> None:
    if unreadable > limit * seen:
        raise StrgError(
            f"{int(unreadable)} of the {int(seen)} videos read in epoch {epoch + 1} could not be decoded "
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


# ----------------------------------------------------------------------------------------------------
# The loop: one for every task


class Task:
    """What one training task gives :func:`train_task`: the model, how a batch becomes a loss, and how
    validation measures it. Subclasses set ``model`` and override the hooks they need.

    ``model`` is trained and checkpointed (it needs a ``cfg``, see save_checkpoint). ``best_metric`` is
    the key of :meth:`validate`'s metrics that picks ``best/`` (``higher_is_better`` its direction);
    None saves every epoch's weights as ``best/``. ``parts`` name the scalars :meth:`loss` returns beside
    the loss; each epoch's metrics line holds their means over the epoch's clips.
    """

    name: str = "classes"  # recorded in checkpoints: a run resumes only as the task it was
    best_metric: str | None = None
    higher_is_better: bool = True
    parts: tuple[str, ...] = ()
    model: nn.Module

    def objective(self) -> nn.Module:
        """The module whose forward :meth:`loss` runs (wrapped in DistributedDataParallel under torchrun,
        which averages the gradients of what runs inside its wrapped module's forward)."""
        return self.model

    def loss(self, objective: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """(scalar loss, {part: scalar}) of one batch already on the device, run under autocast."""
        raise NotImplementedError

    def start_epoch(self, epoch: int, done: int, steps: int, batch_at: Callable[[int], dict]) -> None:
        """Before epoch ``epoch`` trains from its step ``done`` on (> 0 for a run resumed mid-epoch) of
        ``steps``; ``batch_at(k)`` loads this process's batch k of the epoch, as the loader gives it."""

    def end_training(self) -> None:
        """After an epoch's last step, before :meth:`validate` (every process)."""

    def validate(self, device: torch.device) -> dict:
        """Validation metrics of the whole split on every process (JSON-able); {} without validation."""
        return {}

    def epoch_metrics(self, metrics: dict) -> dict:
        """More keys for an epoch's metrics line, given the line so far."""
        return {}

    def publish(self, run_dir: Path) -> None:
        """Rank 0, after each epoch's metrics line: write what the task delivers besides checkpoints."""


class Trained(NamedTuple):
    """What :func:`train_task` returns: where training stopped and the last finished epoch's metrics
    line ({} before the first)."""

    position: TrainPosition
    metrics: dict


PROGRESS_KEY = "epoch_progress"  # checkpoint extra: the sums of an epoch saved part-way (see _EpochSums)


@dataclass
class _EpochSums:
    """An epoch's running totals. Summed over the processes before a save inside the epoch (rank 0
    keeps them in the checkpoint, so a resumed epoch reports what an uninterrupted one would) and at the
    epoch's end. ``seconds`` is rank 0's wall time of the epoch before a resume (never summed)."""

    seen: float = 0.0  # videos read (each item counts its own video once)
    unreadable: float = 0.0
    clips: float = 0.0
    loss: float = 0.0  # sum of loss x clips
    waiting: float = 0.0  # seconds spent waiting for batches
    computing: float = 0.0
    seconds: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    _SUMMED = ("seen", "unreadable", "clips", "loss", "waiting", "computing")

    @classmethod
    def start(cls, parts: tuple[str, ...], saved: dict | None) -> _EpochSums:
        sums = cls(parts=dict.fromkeys(parts, 0.0))
        if saved:
            try:
                for key in (*cls._SUMMED, "seconds"):
                    setattr(sums, key, float(saved[key]))
                sums.parts.update({key: float(saved["parts"][key]) for key in parts})
            except (KeyError, TypeError, ValueError) as err:
                raise StrgError(f"checkpoint {PROGRESS_KEY} is malformed: {err}") from None
        return sums

    def reduced(self, world: int) -> _EpochSums:
        """The totals of all processes (a collective call under torch.distributed)."""
        values = sum_over_ranks([*(getattr(self, k) for k in self._SUMMED), *self.parts.values()], world)
        count = len(self._SUMMED)
        summed = dict(zip(self._SUMMED, values[:count], strict=True))
        parts = dict(zip(self.parts, values[count:], strict=True))
        return _EpochSums(**summed, seconds=self.seconds, parts=parts)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _batch_at(dataset: torch.utils.data.Dataset, sampler: EpochSampler, k: int, size: int) -> dict:
    """Batch ``k`` (``size`` items) of ``sampler``'s order, collated as a DataLoader collates it."""
    indices = sampler.indices()[k * size : (k + 1) * size]
    return torch.utils.data.default_collate([dataset[int(i)] for i in indices])


def _autocast_dtype(device: torch.device, amp: bool, cpu_autocast: torch.dtype | None) -> torch.dtype | None:
    """float16 on CUDA with ``amp``; on the CPU ``cpu_autocast`` (None: no autocast, bf16 made the small
    preset's step 17x slower here; the tests pass bfloat16, which follows the same casting rules)."""
    if not amp:
        return None
    return torch.float16 if device.type == "cuda" else cpu_autocast


def train_task(
    task: Task,
    train_set: torch.utils.data.Dataset,
    run_dir: str | Path,
    options: TrainOptions = TrainOptions(),
    *,
    resume: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    extra: dict | None = None,
    cpu_autocast: torch.dtype | None = None,
) -> Trained:
    """Train ``task.model`` on ``train_set`` (items as ClipDataset gives them, with ``skipped``) and write
    checkpoints and metrics under ``run_dir``; see the module docstring. Returns where it stopped.

    Per step: ``task.loss`` under autocast (float16 on CUDA with ``options.amp``, with gradient scaling),
    a finite-loss check, SGD with gradient clipping at ``options.max_grad_norm``, the warm-up + cosine
    schedule; ``last/`` every ``options.save_every`` steps and at ``options.max_steps`` (then it returns).
    Per epoch: ``task.end_training``, ``task.validate``, a line in metrics.jsonl (and TensorBoard),
    ``task.publish``, ``last/``, and ``best/`` when ``task.best_metric`` improved.

    ``extra`` (JSON-able) is kept in every checkpoint's training state beside the task's name and the
    options; a resumed run keeps what its checkpoint held and adds ``extra`` to it. on_step(global_step,
    total_steps, loss) is called after every step, on_epoch(metrics line) after every epoch (rank 0 only
    for both). With ``resume`` the run continues from ``run_dir/last``, mid-epoch included.
    """
    run_dir = Path(run_dir)
    rank, world = distributed()
    device = choose_device(options.device)
    steps_per_epoch = len(train_set) // options.batch_size
    if steps_per_epoch < 1:
        raise StrgError(f"{len(train_set)} training clips make no batch of {options.batch_size}")
    if options.batch_size % world:
        raise StrgError(f"the batch size {options.batch_size} does not split over {world} processes")
    total = steps_per_epoch * options.epochs
    local_batch = options.batch_size // world
    torch.manual_seed(options.seed)
    model = task.model.to(device)
    if options.freeze_bn:
        _freeze_batch_norm(model)
    objective = task.objective()
    if world > 1:  # gradients averaged over the processes; rank 0 alone writes
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device] if device.type == "cuda" else None
        )
    optimizer = make_optimizer(
        model, scaled_lr(options.lr, options.batch_size), weight_decay=options.weight_decay
    )
    warmup = min(round(options.warmup_epochs * steps_per_epoch), total - 1)
    scheduler = warmup_cosine(optimizer, total, warmup)
    amp_dtype = _autocast_dtype(device, options.amp, cpu_autocast)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    position = TrainPosition(seed=options.seed)
    saved_extra: dict = {}
    if resume:
        folder = checkpoint_dir(run_dir, "last")
        trained_as = checkpoint_extra(folder).get("task", "classes")  # none: from before the RPN's task
        if trained_as != task.name:
            raise StrgError(f"{folder} is a checkpoint of --task {trained_as}, not --task {task.name}")
        position, saved_extra, _ = load_checkpoint(folder, model, optimizer, scheduler, scaler)
    progress = saved_extra.pop(PROGRESS_KEY, None)
    extra = {**saved_extra, **(extra or {}), "task": task.name, "options": dataclasses.asdict(options)}
    if rank == 0:
        remove_stale_saves(run_dir)
    # metrics.jsonl holds one line per finished epoch: a resumed run drops lines of epochs its checkpoint
    # had not finished (a kill between the line and the save) and the file is rewritten whole each epoch
    logged = _metrics_lines(run_dir)[: position.epoch] if resume else []
    last_metrics = _parse_line(run_dir, logged[-1]) if logged else {}

    def save(name: str, sums: _EpochSums | None = None) -> None:
        """Write ``name``; inside an epoch (``sums``, reduced over the processes) with its totals."""
        state = extra if sums is None else {**extra, PROGRESS_KEY: sums.to_dict()}
        if rank == 0:
            save_checkpoint(run_dir, name, model, optimizer, scheduler, scaler, position, state)

    def wait_for_rank0() -> None:
        if world > 1:
            torch.distributed.barrier()

    def reached_max_steps() -> bool:
        return options.max_steps is not None and position.global_step >= options.max_steps

    if reached_max_steps():
        return Trained(position, last_metrics)
    while position.epoch < options.epochs:
        epoch = position.epoch
        train_set.set_epoch(epoch)
        sampler = functools.partial(
            EpochSampler,
            len(train_set),
            options.seed,
            epoch,
            batch_size=options.batch_size,
            rank=rank,
            world=world,
        )
        batch_at = functools.partial(_batch_at, train_set, sampler(), size=local_batch)
        task.start_epoch(epoch, position.step, steps_per_epoch, batch_at)
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=local_batch,
            sampler=sampler(start=position.step * options.batch_size),
            num_workers=options.workers,
            drop_last=True,
            worker_init_fn=loader_worker_init(),
            generator=torch.Generator().manual_seed(options.seed),  # leaves the global RNG alone
        )
        model.train()
        if options.freeze_bn:
            _freeze_batch_norm(model)
        sums = _EpochSums.start(task.parts, progress if rank == 0 else None)
        progress = None
        tick = epoch_start = time.perf_counter()
        for batch in loader:
            fetched = time.perf_counter()
            sums.waiting += fetched - tick
            count = len(batch["skipped"])
            sums.seen += count  # each item counts its own video once: 1 if it was unreadable
            sums.unreadable += int(batch["skipped"].sum())
            if sums.seen >= 100:  # judged early only on enough videos; always at the epoch's end
                _check_unreadable(sums.unreadable, sums.seen, epoch, options.max_unreadable)
            batch = _to(batch, device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, parts = task.loss(objective, batch)
            loss = loss.float()
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
            sums.computing += tick - fetched
            value = float(loss.detach())
            sums.clips += count
            sums.loss += value * count
            for key in task.parts:
                sums.parts[key] += float(parts[key].detach()) * count
            position = dataclasses.replace(
                position, step=position.step + 1, global_step=position.global_step + 1
            )
            if on_step is not None and rank == 0:
                on_step(position.global_step, total, value)
            stop = reached_max_steps()
            if stop or (options.save_every and position.step % options.save_every == 0):
                sums.seconds += time.perf_counter() - epoch_start
                epoch_start = time.perf_counter()
                save("last", sums.reduced(world))
            if stop:
                wait_for_rank0()
                return Trained(position, last_metrics)
        task.end_training()
        totals = sums.reduced(world)
        _check_unreadable(totals.unreadable, totals.seen, epoch, options.max_unreadable)
        position = dataclasses.replace(position, epoch=epoch + 1, step=0)
        clips = max(totals.clips, 1)
        metrics = {
            "epoch": epoch + 1,
            "global_step": position.global_step,
            "lr": scheduler.get_last_lr()[0],
            "train_loss": totals.loss / clips,  # mean over this epoch's clips
            **{key: value / clips for key, value in totals.parts.items()},
            "unreadable_videos": int(totals.unreadable),
            # clips of all processes per second of one process's time (processes run side by side)
            "train_clips_per_second": totals.clips / max((totals.waiting + totals.computing) / world, 1e-9),
            "loader_share": totals.waiting / max(totals.waiting + totals.computing, 1e-9),
        }
        metrics.update(task.validate(device))
        improved = task.best_metric is None
        if task.best_metric is not None:
            value, best = metrics[task.best_metric], position.best_metric
            improved = best is None or (value > best if task.higher_is_better else value < best)
            if improved:
                position = dataclasses.replace(position, best_metric=value)
        metrics.update(task.epoch_metrics(metrics))
        # training and validation, wall clock (with the part before a resume)
        metrics["epoch_seconds"] = sums.seconds + time.perf_counter() - epoch_start
        logged.append(json.dumps(metrics))
        last_metrics = json.loads(logged[-1])
        if rank == 0:
            atomic_write_text(run_dir / "metrics.jsonl", "".join(line + "\n" for line in logged))
            _to_tensorboard(run_dir, metrics, position.global_step)
            if on_epoch is not None:
                on_epoch(metrics)
            task.publish(run_dir)
        save("last")
        if improved:
            save("best")
        wait_for_rank0()
    return Trained(position, last_metrics)


def _parse_line(run_dir: Path, line: str) -> dict:
    try:
        metrics = json.loads(line)
    except ValueError as err:
        raise StrgError(f"{run_dir / 'metrics.jsonl'} holds a line that is not JSON: {err}") from None
    return metrics if isinstance(metrics, dict) else {}


def _to_tensorboard(run_dir: Path, metrics: dict, step: int) -> None:
    """The metrics line's numbers as TensorBoard scalars at ``step`` (when tensorboard is installed)."""
    board = _tensorboard(run_dir)
    if board is None:
        return
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and key not in ("epoch", "global_step"):
            board.add_scalar(key, value, step)
    board.close()


# ----------------------------------------------------------------------------------------------------
# The action model


class ActionTask(Task):
    """STRG, I3D or the frame control on action labels: the model's own ``loss`` (cross-entropy, or
    binary cross-entropy for multi-label data) of its logits; validation per video (:func:`validate`),
    ``best/`` by its ``headline`` metric (top-1 or mAP); without ``val_set`` every epoch is ``best/``."""

    name = "classes"

    def __init__(self, model: nn.Module, val_set: ClipDataset | None, options: TrainOptions) -> None:
        self.model, self.val_set, self.options = model, val_set, options
        self.best_metric = "headline" if val_set is not None else None

    def loss(self, objective: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """clip uint8 [B, 3, T, S, S] (boxes [B, T', N, 4], mask [B, T', N]), target -> the loss."""
        logits = objective(batch["clip"], batch.get("boxes"), batch.get("mask"))
        return self.model.loss(logits.float(), batch["target"]), {}

    def validate(self, device: torch.device) -> dict:
        if self.val_set is None:
            return {}
        return validate(self.model, self.val_set, self.options.batch_size, self.options.workers, device)


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
    cpu_autocast: torch.dtype | None = None,
) -> TrainPosition:
    """Train the action model ``model`` (:class:`ActionTask`) with :func:`train_task`; returns the final
    position. See :func:`train_task` for the callbacks, ``extra``, ``resume`` and ``cpu_autocast``."""
    task = ActionTask(model, val_set, options)
    trained = train_task(
        task,
        train_set,
        run_dir,
        options,
        resume=resume,
        on_step=on_step,
        on_epoch=on_epoch,
        extra=extra,
        cpu_autocast=cpu_autocast,
    )
    return trained.position
