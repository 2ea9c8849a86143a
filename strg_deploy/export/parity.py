"""`strg export --check`: the exported files against the torch model, on onnxruntime and OpenVINO.

For every runtime: each network on random inputs (every output compared: floats by the largest absolute
difference, the mask exactly), then the whole chain (rpn -> backbone -> head, the runtime's own
proposals feeding its head) against ``STRG.forward(clip)`` on random clips and on real videos. A row
passes when the float outputs agree within ``tolerance`` (1e-4 for fp32 logits), masks are equal and the
top-1 class is the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
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
from strg_deploy.models.strg import STRG

RUNTIMES = ("onnxruntime", "openvino")
TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class ParityRow:
    """One comparison: ``network`` (rpn, backbone, head or chain), ``runtime``, ``inputs`` (random or a
    video's name), the largest absolute difference of the float outputs, whether masks are equal, whether
    the top-1 classes agree (None for networks without logits), and whether the row passes."""

    network: str
    runtime: str
    inputs: str
    max_abs: float
    masks_equal: bool
    top1_equal: bool | None
    passed: bool


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
    """The three networks in a row: clips uint8 [B, 3, T, S, S] -> {"boxes" [B, T', N, 4], "mask"
    [B, T', N], "logits" [B, C]}: the RPN on every ``temporal_stride``-th frame, the backbone on the clip,
    the head on both."""
    batch, t, n = clips.shape[0], cfg.feature_frames, cfg.proposals.num_boxes
    frames = clips[:, :, :: cfg.backbone.temporal_stride].transpose(0, 2, 1, 3, 4)  # [B, T', 3, S, S]
    frames = np.ascontiguousarray(frames.reshape(-1, *frames.shape[2:]))  # as models.strg.rpn_frames
    proposals = networks["rpn"].run({"frames": frames})
    boxes = proposals["boxes"].reshape(batch, t, n, 4)
    mask = proposals["mask"].reshape(batch, t, n)
    features = networks["backbone"].run({"clip": clips})["features"]
    logits = networks["head"].run({"features": features, "boxes": boxes, "mask": mask})["logits"]
    return {"boxes": boxes, "mask": mask, "logits": logits}


def _compare(
    network: str, runtime: str, inputs: str, expected: dict, actual: dict, tolerance: float
) -> ParityRow:
    worst, masks_equal, top1 = 0.0, True, None
    for name, want in expected.items():
        got = np.asarray(actual[name])
        if got.shape != want.shape:
            raise StrgError(f"{runtime} {network}: output {name} has shape {got.shape}, torch {want.shape}")
        if want.dtype == np.bool_:
            masks_equal &= bool(np.array_equal(got, want))
        else:
            worst = max(worst, float(np.abs(got.astype(np.float64) - want).max(initial=0.0)))
    if "logits" in expected:
        top1 = bool(np.array_equal(actual["logits"].argmax(-1), expected["logits"].argmax(-1)))
    passed = worst <= tolerance and masks_equal and top1 is not False
    return ParityRow(network, runtime, inputs, worst, masks_equal, top1, passed)


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
    tolerance: float = TOLERANCE,
    threads: int = 0,
    on_row: Callable[[ParityRow], None] | None = None,
) -> list[ParityRow]:
    """Compare the export in ``folder`` with ``model`` (the checkpoint it came from) on every runtime of
    ``runtimes``: each network on random inputs (``batch`` clips), then the chain on ``batch`` random
    clips and on each video of ``videos`` (one clip each). Returns the rows (``on_row`` sees each)."""
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
    expected_chain = {}
    for name, clip in clips.items():
        with torch.no_grad():
            boxes, mask = model.propose(clip)
            logits = model.head(model.backbone(clip), boxes, mask)
        expected_chain[name] = {"boxes": boxes.numpy(), "mask": mask.numpy(), "logits": logits.numpy()}
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
            add(
                _compare(
                    network,
                    runtime,
                    "random",
                    torch_outputs(model, network, inputs[network]),
                    actual,
                    tolerance,
                )
            )
        for name, clip in clips.items():
            actual = run_chain(networks, clip.numpy(), cfg)
            add(_compare("chain", runtime, name, expected_chain[name], actual, tolerance))
    return rows
