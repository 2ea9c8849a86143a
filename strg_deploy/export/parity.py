"""`strg export --check`: the exported files against the torch model, on onnxruntime and OpenVINO.

For every runtime: each network on random inputs (every output compared: floats by the largest absolute
difference, the mask exactly), then the whole chain (rpn -> backbone -> head, the runtime's own
proposals feeding its head) against the torch model on random clips and on real videos.

A float output passes when ``max |runtime - torch| <= atol + rtol * max |torch|`` (:data:`ATOL` 1e-4,
:data:`RTOL` 1e-5): the bound grows with the output's magnitude, since float32 sums over large values
(backbone features reach 100 and more) differ by more than 1e-4 between runtimes while agreeing to 1e-6
relative. Each row records its bound. A row passes when every float output is within its bound, masks
are equal and the top-1 class is the same.

Proposals whose torch scores tie (differ by at most :data:`TIE_TOLERANCE`) have no meaningful order:
the exported RPN and torch break exact ties the same way (by candidate index), but a runtime's score can
differ from torch's by a float32 step and turn a near-tie into a tie or the other way round. Within
each group of tied torch scores the runtime's proposals are matched to torch's as a set (each torch box
to the nearest unused runtime box) before comparing, and the row counts the proposals that moved
(``reordered``). When a chain's proposals moved, its logits are compared with torch's head on the
runtime's own proposals (the head received them in that order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from strg_deploy.config import ModelConfig
from strg_deploy.data.cache import duration_of, short_side_size
from strg_deploy.data.sampling import paper_times
from strg_deploy.data.transforms import center_crop
from strg_deploy.data.video import open_video
from strg_deploy.engines.base import Network
from strg_deploy.errors import StrgError
from strg_deploy.export.onnx import NETWORKS, example_inputs
from strg_deploy.models.strg import STRG, rpn_frames

RUNTIMES = ("onnxruntime", "openvino")
ATOL = 1e-4  # absolute part of every float output's bound
RTOL = 1e-5  # relative part, times the largest magnitude of the torch output
TIE_TOLERANCE = 1e-6  # torch scores this close are tied (a float32 step near 0.5 is 6e-8)
PROPOSALS = ("boxes", "scores", "mask")


@dataclasses.dataclass(frozen=True)
class ParityRow:
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


def load_network(runtime: str, path: Path, threads: int = 0) -> Network:
    """One exported file on ``runtime`` (onnxruntime or openvino)."""
    if runtime == "onnxruntime":
        from strg_deploy.engines.onnxruntime import OnnxRuntimeNetwork

        return OnnxRuntimeNetwork(path, threads=threads)
    if runtime == "openvino":
        from strg_deploy.engines.openvino import OpenVinoNetwork

        return OpenVinoNetwork(path, threads=threads)
    raise StrgError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def video_clip(path: str | Path, cfg: ModelConfig) -> np.ndarray:
    """The test clip of a video: ``cfg.frames`` frames spread over the middle ``cfg.span_seconds``, short
    side resized to ``cfg.size``, centre crop -> uint8 [3, T, S, S]."""
    with open_video(path, threads=1) as reader:
        duration = reader.duration or duration_of(reader.frame_times())
        times = paper_times(duration, cfg.frames, cfg.span_seconds)
        clip = reader.read_at(times, size=short_side_size(*reader.size, cfg.size))
    frames, _, _ = center_crop(clip.images, cfg.size)
    return np.ascontiguousarray(frames.transpose(3, 0, 1, 2))


def run_chain(networks: dict[str, Network], clips: np.ndarray, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The three networks in a row: clips uint8 [B, 3, T, S, S] -> {"boxes" [B, T', N, 4], "scores"
    [B, T', N], "mask" [B, T', N], "logits" [B, C]}: the RPN on every ``temporal_stride``-th frame, the
    backbone on the clip, the head on both."""
    batch, t, n = clips.shape[0], cfg.feature_frames, cfg.proposals.num_boxes
    frames = clips[:, :, :: cfg.backbone.temporal_stride].transpose(0, 2, 1, 3, 4)  # [B, T', 3, S, S]
    frames = np.ascontiguousarray(frames.reshape(-1, *frames.shape[2:]))  # as models.strg.rpn_frames
    proposals = networks["rpn"].run({"frames": frames})
    boxes = proposals["boxes"].reshape(batch, t, n, 4)
    scores = proposals["scores"].reshape(batch, t, n)
    mask = proposals["mask"].reshape(batch, t, n)
    features = networks["backbone"].run({"clip": clips})["features"]
    logits = networks["head"].run({"features": features, "boxes": boxes, "mask": mask})["logits"]
    return {"boxes": boxes, "scores": scores, "mask": mask, "logits": logits}


def _compare(
    network: str,
    runtime: str,
    inputs: str,
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    atol: float,
    rtol: float,
    tie: float,
) -> ParityRow:
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
    return ParityRow(network, runtime, inputs, output, worst, bound, masks_equal, top1, reordered, passed)


def torch_outputs(model: STRG, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The torch model's outputs of one network, by the ONNX output names."""
    with torch.no_grad():
        if network == "rpn":
            result = model.rpn(inputs["frames"])
            return {
                "boxes": result.boxes.numpy(),
                "scores": result.scores.numpy(),
                "mask": result.mask.numpy(),
            }
        if network == "backbone":
            return {"features": model.backbone(inputs["clip"]).numpy()}
        return {"logits": model.head(**inputs).numpy()}


def check_export(
    model: STRG,
    folder: str | Path,
    *,
    runtimes: Sequence[str] = RUNTIMES,
    videos: Sequence[Path] = (),
    batch: int = 2,
    atol: float = ATOL,
    rtol: float = RTOL,
    tie: float = TIE_TOLERANCE,
    threads: int = 0,
    on_row: Callable[[ParityRow], None] | None = None,
) -> list[ParityRow]:
    """Compare the export in ``folder`` with ``model`` (the checkpoint it came from) on every runtime of
    ``runtimes``: each network on random inputs (``batch`` clips), then the chain on ``batch`` random
    clips and on each video of ``videos`` (one clip each). Float outputs pass within
    ``atol + rtol * max |torch|``; proposals whose torch scores differ by at most ``tie`` compare as a
    set (module docstring). Returns the rows (``on_row`` sees each)."""
    folder = Path(folder)
    model = model.eval()
    cfg = model.cfg
    inputs = example_inputs(model, batch=batch, seed=1)  # not the export's tracing inputs
    g = torch.Generator().manual_seed(2)
    clips = {
        "random": torch.randint(
            0, 256, (batch, 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8, generator=g
        )
    }
    for video in videos:
        clips[Path(video).name] = torch.from_numpy(video_clip(video, cfg))[None]
    expected_chain, features = {}, {}
    for name, clip in clips.items():
        shape = (clip.shape[0], cfg.feature_frames, cfg.proposals.num_boxes)
        with torch.no_grad():
            proposals = model.rpn(rpn_frames(clip, cfg.backbone.temporal_stride))
            boxes = proposals.boxes.reshape(*shape, 4)
            scores, mask = proposals.scores.reshape(shape), proposals.mask.reshape(shape)
            features[name] = model.backbone(clip)
            logits = model.head(features[name], boxes, mask)
        expected_chain[name] = {
            "boxes": boxes.numpy(),
            "scores": scores.numpy(),
            "mask": mask.numpy(),
            "logits": logits.numpy(),
        }
    rows = []

    def add(row: ParityRow) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for runtime in runtimes:
        networks = {n: load_network(runtime, folder / f"{n}.onnx", threads) for n in NETWORKS}
        for network in NETWORKS:
            feed = {k: v.numpy() for k, v in inputs[network].items()}
            actual = networks[network].run(feed)
            expected = torch_outputs(model, network, inputs[network])
            add(_compare(network, runtime, "random", expected, actual, atol, rtol, tie))
        for name, clip in clips.items():
            actual = run_chain(networks, clip.numpy(), cfg)
            expected = expected_chain[name]
            if align_tied(expected, actual, tie)[1]:  # the head saw the proposals in the runtime's order
                with torch.no_grad():
                    logits = model.head(
                        features[name], torch.from_numpy(actual["boxes"]), torch.from_numpy(actual["mask"])
                    )
                expected = {**expected, "logits": logits.numpy()}
            add(_compare("chain", runtime, name, expected, actual, atol, rtol, tie))
    return rows
