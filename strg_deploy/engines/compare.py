"""Comparing a runtime's outputs with reference outputs (torch's, live or recorded in an export).

A float output passes when ``max |runtime - reference| <= atol + rtol * max |reference|`` (:data:`ATOL`
1e-4, :data:`RTOL` 1e-5): the bound grows with the output's magnitude, since float32 sums over large
values (backbone features reach 100 and more) differ by more than 1e-4 between runtimes while agreeing to
1e-6 relative. Each row records its bound. A row passes when every float output is within its bound,
masks are equal and the top-1 class is the same.

Proposals whose reference scores tie (differ by at most :data:`TIE_TOLERANCE`) have no meaningful order:
the exported RPN and torch break exact ties the same way (by candidate index), but a runtime's score can
differ by a float32 step and turn a near-tie into a tie or the other way round. Within each group of tied
reference scores the runtime's proposals are matched to the reference's as a set (each reference box to
the nearest unused runtime box) before comparing, and the row counts the proposals that moved
(``reordered``). The head is invariant to the order of a frame's proposals (its graphs and pooling do not
depend on it), up to float rounding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from strg_deploy.errors import StrgError

ATOL = 1e-4  # absolute part of every float output's bound
RTOL = 1e-5  # relative part, times the largest magnitude of the reference output
TIE_TOLERANCE = 1e-6  # reference scores this close are tied (a float32 step near 0.5 is 6e-8)
PROPOSALS = ("boxes", "scores", "mask")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One comparison: ``network`` (rpn, backbone, head or chain), ``runtime``, ``inputs`` (random or a
    video's name); ``output``, the float output nearest its bound, with its largest absolute difference
    ``max_abs`` and its bound ``tolerance`` (atol + rtol * max |torch|); whether masks are equal, whether
    the top-1 classes agree (None for networks without logits), how many proposals were matched across
    tied scores (``reordered``), and whether the row passes."""

    network: str
    runtime: str
    inputs: str
    output: str
    max_abs: float
    tolerance: float
    masks_equal: bool
    top1_equal: bool | None
    reordered: int
    passed: bool


def tolerance_for(reference: np.ndarray, atol: float = ATOL, rtol: float = RTOL) -> float:
    """The bound of one output: ``atol + rtol * max |reference|``."""
    return atol + rtol * float(np.abs(reference).max(initial=0.0))


def _tie_groups(scores: np.ndarray, positions: np.ndarray, tie: float) -> list[np.ndarray]:
    """Split ``positions`` (in output order) into runs whose consecutive ``scores`` differ by <= tie."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.abs(np.diff(scores[positions])) > tie) + 1
    return np.split(positions, breaks)


def align_tied(
    want: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], tie: float = TIE_TOLERANCE
) -> tuple[dict[str, np.ndarray], int]:
    """The runtime's proposals put in torch's order where torch's scores tie.

    want (torch), got (runtime): {"boxes" [..., N, 4], "scores" [..., N], "mask" [..., N], ...}. In each
    frame the valid proposals form groups of consecutive torch scores that differ by at most ``tie``;
    within a group each torch box takes the nearest (largest coordinate difference) unused runtime box
    of the group's positions. Returns (a copy of ``got`` with boxes, scores and mask reordered, the
    number of proposals that moved). Frames whose masks differ are left as they are.
    """
    n = want["scores"].shape[-1]
    w_boxes, w_scores = want["boxes"].reshape(-1, n, 4), want["scores"].reshape(-1, n)
    w_mask = want["mask"].reshape(-1, n)
    fields = {
        "boxes": np.asarray(got["boxes"]).reshape(-1, n, 4),
        "scores": np.asarray(got["scores"]).reshape(-1, n),
        "mask": np.asarray(got["mask"]).reshape(-1, n),
    }
    aligned = {k: v.copy() for k, v in fields.items()}
    moved = 0
    for f in range(w_boxes.shape[0]):
        if not np.array_equal(w_mask[f], fields["mask"][f]):
            continue
        for group in _tie_groups(w_scores[f], np.flatnonzero(w_mask[f]), tie):
            free = list(group)
            picks = []
            for j in group:
                k = min(free, key=lambda k: float(np.abs(fields["boxes"][f, k] - w_boxes[f, j]).max()))
                free.remove(k)
                picks.append(k)
            moved += int(np.sum(np.asarray(picks) != group))
            for name, value in fields.items():
                aligned[name][f, group] = value[f, picks]
    out = dict(got)
    out.update({k: v.reshape(np.shape(got[k])) for k, v in aligned.items()})
    return out, moved


def compare_outputs(
    network: str,
    runtime: str,
    inputs: str,
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    atol: float,
    rtol: float,
    tie: float,
) -> Comparison:
    """One row: every output of ``expected`` (torch) against ``actual`` (the runtime), proposals aligned
    across tied scores first (:func:`align_tied`)."""
    for name, want in expected.items():
        got = np.shape(actual[name])
        if got != want.shape:
            raise StrgError(f"{runtime} {network}: output {name} has shape {got}, torch {want.shape}")
    reordered = 0
    if set(PROPOSALS) <= set(expected):
        actual, reordered = align_tied(expected, actual, tie)
    output, worst, bound, ratio = "", 0.0, atol, -1.0
    within, masks_equal, top1 = True, True, None
    for name, want in expected.items():
        got = np.asarray(actual[name])
        if want.dtype == np.bool_:
            masks_equal &= bool(np.array_equal(got, want))
            continue
        diff = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
        tolerance = tolerance_for(want, atol, rtol)
        within &= diff <= tolerance  # False for NaN
        share = diff / tolerance if np.isfinite(diff) else np.inf
        if share > ratio:
            output, worst, bound, ratio = name, diff, tolerance, share
    if "logits" in expected:
        top1 = bool(np.array_equal(np.asarray(actual["logits"]).argmax(-1), expected["logits"].argmax(-1)))
    passed = within and masks_equal and top1 is not False
    return Comparison(network, runtime, inputs, output, worst, bound, masks_equal, top1, reordered, passed)
