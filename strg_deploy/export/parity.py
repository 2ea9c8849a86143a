"""`strg export --check`: the exported files against the torch model, on onnxruntime and OpenVINO.

For every runtime: each network on random inputs (every output compared: floats by the largest absolute
difference, the mask exactly), then the whole chain (rpn -> backbone -> head, the runtime's own
proposals feeding its head) against the torch model on random clips and on real videos.

Tolerances and the matching of tied proposals: :mod:`strg_deploy.engines.compare`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from strg_deploy.contract.networks import NETWORKS
from strg_deploy.data.clips import video_clip
from strg_deploy.engines.compare import ATOL, RTOL, TIE_TOLERANCE, Comparison, align_tied, compare_outputs
from strg_deploy.engines.pipeline import RUNTIMES, Pipeline
from strg_deploy.export.onnx import example_inputs
from strg_deploy.export.reference import torch_pipeline
from strg_deploy.models.strg import STRG

__all__ = ["ATOL", "RTOL", "RUNTIMES", "TIE_TOLERANCE", "check_export", "torch_outputs"]


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
    on_row: Callable[[Comparison], None] | None = None,
) -> list[Comparison]:
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
        ).numpy()
    }
    for video in videos:
        clips[Path(video).name] = video_clip(video, cfg.frames, cfg.size, cfg.span_seconds)[None]
    reference = torch_pipeline(model, folder)
    expected_chain = {name: reference.run(clip).as_dict() for name, clip in clips.items()}
    rows = []

    def add(row: Comparison) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for runtime in runtimes:
        # the files were just written and hashed by the export; their numbers are compared below
        pipeline = Pipeline.load(folder, runtime, threads=threads, check_files=False)
        for network in NETWORKS:
            feed = {k: v.numpy() for k, v in inputs[network].items()}
            actual = pipeline.run_network(network, feed)
            expected = torch_outputs(model, network, inputs[network])
            add(compare_outputs(network, runtime, "random", expected, actual, atol, rtol, tie))
        for name, clip in clips.items():
            actual = pipeline.run(clip).as_dict()
            expected = expected_chain[name]
            if align_tied(expected, actual, tie)[1]:  # the head saw the proposals in the runtime's order
                head = reference.networks["head"]
                features = reference.run_network("backbone", {"clip": clip})["features"]
                feed = {"features": features, "boxes": actual["boxes"], "mask": actual["mask"]}
                expected = {**expected, "logits": head.to_host(head.run(feed)["logits"])}
            add(compare_outputs("chain", runtime, name, expected, actual, atol, rtol, tie))
    return rows
