"""Evaluation metrics: per-video score averaging, top-k and per-class accuracy, mAP (Charades protocol).

Everything here works on numpy arrays (callers convert tensors with ``tensor.cpu().numpy()``) and
returns plain Python floats, so it runs without torch. Accuracies and APs are fractions in [0, 1].

Protocol, as in the paper: each test video is seen through several views (temporal clips x spatial
crops); the scores of all views of a video are averaged and the video is scored once. The caller picks
the scores to average: softmax probabilities for single-label data, sigmoid probabilities for
multi-label data. Single-label data reports top-1, top-5 and per-class accuracy; multi-label data
reports mean average precision over the classes that have at least one positive video.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from strg_deploy.errors import StrgError, shape_error

__all__ = [
    "EvalResult",
    "VideoScores",
    "average_precision",
    "evaluate",
    "mean_average_precision",
    "mean_class_accuracy",
    "per_class_accuracy",
    "topk_accuracy",
]


# ----------------------------------------------------------------------------------------------------
# input checks


def _scores_2d(scores: Any, what: str = "scores") -> np.ndarray:
    """float64 [V, C] with V >= 1, C >= 1 and finite values, or StrgError."""
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise shape_error(what, "[V, C]", arr.shape)
    if arr.shape[0] == 0:
        raise StrgError(f"{what}: nothing to evaluate (0 videos)")
    if arr.shape[1] == 0:
        raise shape_error(what, "[V, C] with C >= 1", arr.shape)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise StrgError(f"{what}: expected real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise StrgError(f"{what}: contain NaN or infinite values")
    return arr


def _labels_1d(labels: Any, num_videos: int, num_classes: int, what: str = "labels") -> np.ndarray:
    """int64 [V] class indices in [0, num_classes), or StrgError."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != num_videos:
        raise shape_error(what, f"[{num_videos}]", arr.shape)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise StrgError(f"{what}: expected integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise StrgError(f"{what}: class indices must lie in [0, {num_classes}), got {arr.min()}..{arr.max()}")
    return arr


def _binary(targets: Any, shape: tuple[int, ...], what: str = "targets") -> np.ndarray:
    """bool array of the given shape from values in {0, 1}, or StrgError."""
    arr = np.asarray(targets)
    if arr.shape != shape:
        raise shape_error(what, str(list(shape)), arr.shape)
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise StrgError(f"{what}: expected 0/1 values, got dtype {arr.dtype}")
    if not np.isin(arr, (0, 1)).all():
        raise StrgError(f"{what}: expected only 0 and 1")
    return arr.astype(bool)


# ----------------------------------------------------------------------------------------------------
# per-video averaging


class VideoScores:
    """Accumulates the scores of test views and averages them per video.

    Call :meth:`add` for every evaluated batch of views (several views per video, in any order and over
    any number of batches), then :meth:`averaged` for the per-video mean. Scores are whatever the caller
    wants averaged: softmax probabilities for single-label data, sigmoid probabilities for multi-label.

    Targets may travel along (``add(..., targets=...)``): int [B] class indices for single-label data
    (all views of a video must agree) or {0, 1} [B, C] for multi-label data (a video's target is the
    union of its views' targets, so clip-level labels add up to the video's labels).

    For distributed evaluation, :meth:`state` gives per-video sums and counts as arrays that can be
    gathered across processes and fed to :meth:`merge_state` of one accumulator.
    """

    def __init__(self) -> None:
        self._num_classes: int | None = None
        self._targets_kind: str | None = None  # None (not yet known), "none", "single", "multi"
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._reduced: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None] | None = None

    def __len__(self) -> int:
        """Number of distinct videos seen so far."""
        return 0 if not self._chunks else int(self._reduce()[0].shape[0])

    @property
    def num_classes(self) -> int | None:
        """C, fixed by the first :meth:`add`; None before."""
        return self._num_classes

    def add(self, video_index: Any, scores: Any, targets: Any = None) -> None:
        """Add a batch of views.

        video_index: int [B] (the video each view belongs to); scores: float [B, C];
        targets (optional, the same for every call): int [B] or {0, 1} [B, C].
        """
        self._add(video_index, scores, np.ones(np.shape(video_index)[:1], np.int64), targets, "add")

    def _add(self, video_index: Any, sums: Any, counts: np.ndarray, targets: Any, what: str) -> None:
        idx = np.asarray(video_index)
        if idx.ndim != 1:
            raise shape_error(f"{what}: video_index", "[B]", idx.shape)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise StrgError(f"{what}: video_index must be integers, got dtype {idx.dtype}")
        batch = idx.shape[0]
        expected = f"[{batch}, {self._num_classes if self._num_classes is not None else 'C'}]"
        arr = np.asarray(sums)
        if arr.ndim != 2 or arr.shape[0] != batch or arr.shape[1] == 0:
            raise shape_error(f"{what}: scores", expected, arr.shape)
        if self._num_classes is not None and arr.shape[1] != self._num_classes:
            raise shape_error(f"{what}: scores", expected, arr.shape)
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all():
            raise StrgError(f"{what}: scores contain NaN or infinite values")
        num_classes = arr.shape[1]

        if targets is None:
            kind, tgt = "none", None
        else:
            tgt = np.asarray(targets)
            kind = "single" if tgt.ndim == 1 else "multi"
            if kind == "single":
                tgt = _labels_1d(tgt, batch, num_classes, f"{what}: targets")
            else:
                tgt = _binary(tgt, (batch, num_classes), f"{what}: targets")
        if self._targets_kind is not None and kind != self._targets_kind:
            raise StrgError(
                f"{what}: targets must be given the same way on every call "
                f"(first: {self._targets_kind}, now: {kind})"
            )
        self._num_classes = num_classes
        self._targets_kind = kind
        if batch:
            self._chunks.append((idx.astype(np.int64), arr, counts.astype(np.int64), tgt))
            self._reduced = None

    def _reduce(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(video ids int64 [V] sorted, sums float64 [V, C], counts int64 [V], targets or None)."""
        if self._reduced is not None:
            return self._reduced
        if not self._chunks:
            raise StrgError("no scores were added: nothing to evaluate")
        ids = np.concatenate([c[0] for c in self._chunks])
        unique, inverse = np.unique(ids, return_inverse=True)
        inverse = inverse.reshape(-1)
        sums = np.zeros((unique.shape[0], self._num_classes), np.float64)
        np.add.at(sums, inverse, np.concatenate([c[1] for c in self._chunks]))
        counts = np.bincount(inverse, weights=np.concatenate([c[2] for c in self._chunks]))
        counts = counts.astype(np.int64)
        targets = None
        if self._targets_kind == "single":
            views = np.concatenate([c[3] for c in self._chunks])
            low = np.full(unique.shape[0], np.iinfo(np.int64).max)
            high = np.full(unique.shape[0], -1)
            np.minimum.at(low, inverse, views)
            np.maximum.at(high, inverse, views)
            if (low != high).any():
                bad = unique[low != high][0]
                raise StrgError(
                    f"the views of video {bad} disagree on its label ({low[low != high][0]} "
                    f"and {high[low != high][0]})"
                )
            targets = low
        elif self._targets_kind == "multi":
            targets = np.zeros((unique.shape[0], self._num_classes), bool)
            np.logical_or.at(targets, inverse, np.concatenate([c[3] for c in self._chunks]))
        self._reduced = (unique, sums, counts, targets)
        return self._reduced

    def averaged(self) -> tuple[np.ndarray, np.ndarray]:
        """(video_ids int64 [V] ascending, scores float64 [V, C]): the mean score of each video's views."""
        ids, sums, counts, _ = self._reduce()
        return ids.copy(), sums / counts[:, None]

    def view_counts(self) -> np.ndarray:
        """int64 [V]: views added per video, aligned with :meth:`averaged`."""
        return self._reduce()[2].copy()

    def targets(self) -> np.ndarray:
        """Per-video targets aligned with :meth:`averaged`: int64 [V] or bool [V, C]."""
        targets = self._reduce()[3]
        if targets is None:
            raise StrgError("no targets were added with the scores")
        return targets.copy()

    def state(self) -> dict[str, np.ndarray]:
        """Per-video arrays to gather across processes: video [V], sum [V, C], count [V] (+ target)."""
        ids, sums, counts, targets = self._reduce()
        out = {"video": ids.copy(), "sum": sums.copy(), "count": counts.copy()}
        if targets is not None:
            out["target"] = targets.copy()
        return out

    def merge_state(self, state: dict[str, np.ndarray]) -> None:
        """Add the views summarised by another accumulator's :meth:`state` (e.g. from another rank)."""
        missing = {"video", "sum", "count"} - set(state)
        if missing:
            raise StrgError(f"merge_state: missing entries {sorted(missing)}")
        counts = np.asarray(state["count"])
        if counts.shape != np.shape(state["video"]):
            raise shape_error("merge_state: count", f"{list(np.shape(state['video']))}", counts.shape)
        if counts.size and counts.min() < 1:
            raise StrgError("merge_state: every video needs at least one view")
        self._add(state["video"], state["sum"], counts, state.get("target"), "merge_state")


# ----------------------------------------------------------------------------------------------------
# single-label metrics


def _topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """float64 [V]: P(true class ranks within the top k) under uniformly random tie-breaking."""
    true = scores[np.arange(scores.shape[0]), labels][:, None]
    greater = (scores > true).sum(axis=1)
    equal = (scores == true).sum(axis=1)  # includes the true class itself
    return np.clip((k - greater) / equal, 0.0, 1.0)


def topk_accuracy(scores: Any, labels: Any, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy for each k in ``ks``: {k: fraction of videos whose label is among the k best}.

    scores: float [V, C]; labels: int [V]. A k above C is capped at C (so top-5 of 3 classes is 1.0);
    the keys are the requested ks. Ties count fractionally: a label tied with e other classes just
    at the k-th place scores the chance that random tie-breaking keeps it in the top k (so constant
    scores give exactly k / C). Without ties this equals sklearn's ``top_k_accuracy_score``.
    """
    scores = _scores_2d(scores)
    labels = _labels_1d(labels, scores.shape[0], scores.shape[1])
    out: dict[int, float] = {}
    for k in ks:
        if int(k) < 1:
            raise StrgError(f"top-k accuracy needs k >= 1, got {k}")
        out[int(k)] = float(_topk_hits(scores, labels, min(int(k), scores.shape[1])).mean())
    return out


def per_class_accuracy(scores: Any, labels: Any, num_classes: int | None = None) -> np.ndarray:
    """float64 [C]: top-1 accuracy over the videos of each class (recall); NaN for classes without videos.

    scores: float [V, C]; labels: int [V]; num_classes defaults to C and must equal it when given.
    Ties count fractionally as in :func:`topk_accuracy`.
    """
    scores = _scores_2d(scores)
    num_classes = scores.shape[1] if num_classes is None else int(num_classes)
    if scores.shape[1] != num_classes:
        raise shape_error("scores", f"[V, {num_classes}]", scores.shape)
    labels = _labels_1d(labels, scores.shape[0], num_classes)
    hits = np.bincount(labels, weights=_topk_hits(scores, labels, 1), minlength=num_classes)
    totals = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, hits / np.maximum(totals, 1), np.nan)


def mean_class_accuracy(scores: Any, labels: Any, num_classes: int | None = None) -> float:
    """Mean of :func:`per_class_accuracy` over the classes that have at least one video."""
    return float(np.nanmean(per_class_accuracy(scores, labels, num_classes)))


# ----------------------------------------------------------------------------------------------------
# multi-label metrics


def average_precision(scores: Any, targets: Any) -> float:
    """Non-interpolated average precision of one class: sum_n (R_n - R_{n-1}) P_n.

    scores: float [V]; targets: {0, 1} [V]. The thresholds are the distinct scores in descending order,
    so tied scores enter together (exactly as sklearn's ``average_precision_score``). NaN when no
    target is positive (AP is undefined there; the Charades protocol leaves such classes out).
    """
    s = np.asarray(scores)
    if s.ndim != 1:
        raise shape_error("scores", "[V]", s.shape)
    s = _scores_2d(s[:, None])[:, 0]
    t = _binary(targets, s.shape)
    return _ap(s, t)


def _ap(scores: np.ndarray, targets: np.ndarray) -> float:
    positives = int(targets.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], targets[order]
    # last index of each run of equal scores = where a threshold admits all of its ties
    ends = np.r_[np.nonzero(np.diff(s))[0], s.shape[0] - 1]
    tp = np.cumsum(t)[ends].astype(np.float64)
    precision = tp / (ends + 1)
    recall = tp / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def mean_average_precision(scores: Any, targets: Any) -> tuple[float, np.ndarray]:
    """(mAP, per-class AP float64 [C]) by the Charades protocol.

    scores: float [V, C]; targets: {0, 1} [V, C]. A class without positive videos gets NaN and is left
    out of the mean; if no class has a positive the mAP is NaN.
    """
    s = _scores_2d(scores)
    t = _binary(targets, s.shape)
    per_class = np.array([_ap(s[:, c], t[:, c]) for c in range(s.shape[1])], dtype=np.float64)
    valid = ~np.isnan(per_class)
    return (float(per_class[valid].mean()) if valid.any() else math.nan), per_class


# ----------------------------------------------------------------------------------------------------
# the evaluation report


def _clean(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


@dataclass(frozen=True)
class EvalResult:
    """The metrics of one evaluation, per video.

    Single-label: top1, top5 (k capped at C), mean_class_accuracy, per_class (accuracy of each class).
    Multi-label: map, per_class (AP of each class). Values are fractions in [0, 1]; per-class NaN marks
    classes without videos (single-label) or without positives (multi-label). class_counts holds the
    videos (single-label) or positive videos (multi-label) of each class.
    """

    multi_label: bool
    class_names: tuple[str, ...]
    num_videos: int
    per_class: tuple[float, ...]
    class_counts: tuple[int, ...]
    top1: float | None = None
    top5: float | None = None
    mean_class_accuracy: float | None = None
    map: float | None = None

    @property
    def headline_name(self) -> str:
        """Name of the main number: "mAP" (multi-label) or "top1"."""
        return "mAP" if self.multi_label else "top1"

    @property
    def headline(self) -> float:
        """The main number: mAP for multi-label data, top-1 accuracy for single-label data."""
        value = self.map if self.multi_label else self.top1
        assert value is not None
        return value

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None); per-class values keyed by class name."""
        out: dict[str, Any] = {
            "multi_label": self.multi_label,
            "num_videos": self.num_videos,
            "headline_name": self.headline_name,
            "headline": _clean(self.headline),
        }
        if self.multi_label:
            out["map"] = _clean(self.map)
        else:
            out["top1"] = _clean(self.top1)
            out["top5"] = _clean(self.top5)
            out["mean_class_accuracy"] = _clean(self.mean_class_accuracy)
        out["per_class"] = {name: _clean(v) for name, v in zip(self.class_names, self.per_class, strict=True)}
        out["class_counts"] = dict(zip(self.class_names, self.class_counts, strict=True))
        return out


def evaluate(
    scores: Any,
    labels_or_targets: Any,
    multi_label: bool,
    class_names: Sequence[str] | None = None,
) -> EvalResult:
    """Score per-video predictions.

    scores: float [V, C] (per-video, e.g. from :meth:`VideoScores.averaged`); labels_or_targets:
    int [V] class indices (single-label) or {0, 1} [V, C] (multi-label); class_names: C names
    (default "0".."C-1").
    """
    s = _scores_2d(scores)
    num_videos, num_classes = s.shape
    if class_names is None:
        names = tuple(str(i) for i in range(num_classes))
    else:
        names = tuple(str(n) for n in class_names)
        if len(names) != num_classes:
            raise StrgError(
                f"class_names: expected {num_classes} names (scores have {num_classes} "
                f"classes), got {len(names)}"
            )
    if multi_label:
        t = _binary(labels_or_targets, s.shape)
        mean_ap, per_class = mean_average_precision(s, t)
        return EvalResult(
            multi_label=True,
            class_names=names,
            num_videos=num_videos,
            per_class=tuple(float(v) for v in per_class),
            class_counts=tuple(int(v) for v in t.sum(axis=0)),
            map=mean_ap,
        )
    labels = _labels_1d(labels_or_targets, num_videos, num_classes)
    top = topk_accuracy(s, labels, (1, 5))
    per_class = per_class_accuracy(s, labels, num_classes)
    return EvalResult(
        multi_label=False,
        class_names=names,
        num_videos=num_videos,
        per_class=tuple(float(v) for v in per_class),
        class_counts=tuple(int(v) for v in np.bincount(labels, minlength=num_classes)),
        top1=top[1],
        top5=top[5],
        mean_class_accuracy=float(np.nanmean(per_class)),
    )
