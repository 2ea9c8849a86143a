"""The reference sample `strg export` writes beside the ONNX files (:mod:`~strg_deploy.contract.reference`).

Two clips (the test clip of the first ``--video`` given, else a synthetic clip; and a second synthetic
clip) with the torch model's outputs of every network on them. ``strg verify`` compares a runtime with
them on the deployment machine, without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.contract.networks import NETWORKS, rpn_frames
from strg_deploy.contract.reference import REFERENCE_FILE, reference_entry, write_reference
from strg_deploy.data.clips import synthetic_clip, video_clip
from strg_deploy.engines.compare import ATOL, RTOL, TIE_TOLERANCE
from strg_deploy.engines.pipeline import Pipeline
from strg_deploy.models.strg import STRG


def torch_pipeline(model: STRG, source: Path) -> Pipeline:
    """The torch model's three networks as a :class:`Pipeline` (the reference chain)."""
    from strg_deploy.engines.torch_model import TorchNetwork

    activation = "sigmoid" if model.cfg.multi_label else "softmax"
    return Pipeline({n: TorchNetwork(model, n) for n in NETWORKS}, model.cfg, activation, source)


def reference_clips(model: STRG, videos: Sequence[str | Path] = ()) -> tuple[np.ndarray, list[str]]:
    """(clips uint8 [2, 3, T, S, S], their names): the first video's test clip (or synthetic clip 0),
    then synthetic clip 1."""
    cfg = model.cfg
    if videos:
        first = video_clip(videos[0], cfg.frames, cfg.size, cfg.span_seconds)
        names = [f"video {Path(videos[0]).name}", "synthetic 1"]
    else:
        first = synthetic_clip(cfg.frames, cfg.size, seed=0)
        names = ["synthetic 0", "synthetic 1"]
    return np.stack([first, synthetic_clip(cfg.frames, cfg.size, seed=1)]), names


def reference_outputs(model: STRG, clips: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The torch model's outputs of every network on ``clips`` [K, 3, T, S, S], as the reference file
    keeps them: the RPN's per frame [K * T', ...], the backbone's features, the head's logits."""
    cfg = model.cfg
    pipeline = torch_pipeline(model, Path("."))
    shape = (clips.shape[0], cfg.feature_frames, cfg.proposals.num_boxes)
    proposals = pipeline.run_network("rpn", {"frames": rpn_frames(clips, cfg.backbone.temporal_stride)})
    features = pipeline.run_network("backbone", {"clip": clips})["features"]
    head_inputs = {
        "features": features,
        "boxes": proposals["boxes"].reshape(*shape, 4),
        "mask": proposals["mask"].reshape(shape),
    }
    return {
        "rpn": proposals,
        "backbone": {"features": features},
        "head": pipeline.run_network("head", head_inputs),
    }


def write_reference_sample(
    model: STRG, folder: str | Path, videos: Sequence[str | Path] = ()
) -> dict[str, Any]:
    """Write ``reference.npz`` in ``folder`` and return the manifest's ``reference`` entry."""
    clips, names = reference_clips(model, videos)
    path = write_reference(Path(folder) / REFERENCE_FILE, clips, reference_outputs(model, clips))
    return reference_entry(path, names, ATOL, RTOL, TIE_TOLERANCE)
