"""The three networks of the model contract: their inputs and outputs, and which frames the RPN sees.

Torch-free: the torch model, the exporter and every runtime read the same names from here.

| network | inputs | outputs |
|---|---|---|
| rpn | frames uint8 [F, 3, S, S], F = B * T' | boxes float32 [F, N, 4], scores [F, N], mask bool [F, N] |
| backbone | clip uint8 [B, 3, T, S, S] | features float32 [B, D, T', H', W'] |
| head | features, boxes float32 [B, T', N, 4], mask bool [B, T', N] | logits float32 [B, C] |

Symbolic dimensions: ``F`` frames the RPN sees, ``B`` clips, ``T`` frames per clip, ``S`` the frame size,
``T'`` feature frames (``T / temporal_stride``), ``N`` proposals per frame, ``D`` the node dimension,
``H'`` = ``W'`` the feature map size, ``C`` classes. :func:`tensor_shapes` resolves them for a config.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from strg_deploy.config import ModelConfig

NETWORKS = ("rpn", "backbone", "head")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``name``, numpy ``dtype`` name and ``shape`` (ints and symbolic names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A network's ``name``, ``inputs`` and ``outputs`` in the order of the ONNX graph."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


SPECS = {
    "rpn": NetworkSpec(
        "rpn",
        (TensorSpec("frames", "uint8", ("F", 3, "S", "S")),),
        (
            TensorSpec("boxes", "float32", ("F", "N", 4)),
            TensorSpec("scores", "float32", ("F", "N")),
            TensorSpec("mask", "bool", ("F", "N")),
        ),
    ),
    "backbone": NetworkSpec(
        "backbone",
        (TensorSpec("clip", "uint8", ("B", 3, "T", "S", "S")),),
        (TensorSpec("features", "float32", ("B", "D", "T'", "H'", "W'")),),
    ),
    "head": NetworkSpec(
        "head",
        (
            TensorSpec("features", "float32", ("B", "D", "T'", "H'", "W'")),
            TensorSpec("boxes", "float32", ("B", "T'", "N", 4)),
            TensorSpec("mask", "bool", ("B", "T'", "N")),
        ),
        (TensorSpec("logits", "float32", ("B", "C")),),
    ),
}


def dimensions(cfg: ModelConfig, batch: int) -> dict[str, int]:
    """The symbolic dimensions of :data:`SPECS` for ``batch`` clips of ``cfg``."""
    return {
        "B": batch,
        "F": batch * cfg.feature_frames,
        "T": cfg.frames,
        "S": cfg.size,
        "T'": cfg.feature_frames,
        "N": cfg.proposals.num_boxes,
        "D": cfg.node_dim,
        "H'": cfg.feature_size,
        "W'": cfg.feature_size,
        "C": cfg.num_classes,
    }


def tensor_shapes(cfg: ModelConfig, network: str, batch: int) -> dict[str, tuple[int, ...]]:
    """{tensor name: concrete shape} of every input and output of ``network`` for ``batch`` clips."""
    dims = dimensions(cfg, batch)
    spec = SPECS[network]
    tensors = spec.inputs + spec.outputs
    return {t.name: tuple(d if isinstance(d, int) else dims[d] for d in t.shape) for t in tensors}


Frames = TypeVar("Frames", bound=Any)


def rpn_frames(clip: Frames, temporal_stride: int) -> Frames:
    """The frames the RPN sees: every ``temporal_stride``-th frame of each clip, stacked.

    clip [B, 3, T, H, W] (a numpy array or a torch tensor) -> frames [B * T', 3, H, W] with
    T' = T / temporal_stride; frame ``b * T' + t`` is input frame ``temporal_stride * t`` of clip ``b``
    (the frame whose boxes feature frame t uses). The result is contiguous.
    """
    frames = clip[:, :, ::temporal_stride].swapaxes(1, 2)
    frames = frames.reshape(-1, *frames.shape[2:])
    return np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames.contiguous()
