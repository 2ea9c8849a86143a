"""What the two TensorRT plugins declare, as plain Python over any int-like (no tensorrt import).

:mod:`strg_deploy.plugins.registration` calls these functions with TensorRT's symbolic shape
expressions (``tensorrt.plugin.ShapeExpr``, a ``SymInt32``); the tests call them with ints. A
``ShapeExpr`` has no reflected operators and cannot be compared (``==`` builds another expression), so
every formula here uses only ``+``, ``-``, ``*`` and ``//`` with the dimension on the left, and the
consistency checks look only at dimensions whose value is known (:func:`known`).

``strg::FrameRoIAlignMax``: features FLOAT [B, C, T', H', W'], boxes FLOAT [B, T', N, 4],
    mask BOOL [B, T', N] -> nodes FLOAT [B, T', N, C].
``strg::SpaceTimeGraph``: boxes FLOAT [B, T', N, 4], mask BOOL [B, T', N]
    -> forward, backward FLOAT [B, T'-1, N, N].

Formats: the kernels read and write float32 only (no fp16 variant), the mask as one byte per element
(TensorRT's BOOL), all LINEAR. Under an fp16 build TensorRT 10 inserts the casts around the plugin.

Launches (:func:`roi_launch`, :func:`graph_launch`) follow :mod:`strg_deploy.plugins.launch`, the one
place that says how each kernel is launched, with one exception: ``SpaceTimeGraph`` with T' = 1. Its
outputs are empty and launch.py's grid is (0, ...), but an AOT plugin cannot skip its launch (TensorRT
launches the kernel itself and calls plugins with empty tensors, possibly null pointers: NVIDIA/TensorRT
issue #2833), and a zero grid is an invalid launch (``cuLaunchKernel``: ``CUDA_ERROR_INVALID_VALUE``). So
for T' = 1 the launch is one block per row block with the int32 arguments (T' = 2, N = 0): every load and
store of the kernel is masked by ``row < N`` and its column loop runs ``range(0, N)``, so it touches no
memory at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strg_deploy.contract.nodes import DOMAIN, ROI_ALIGN_MAX, SPACE_TIME_GRAPH
from strg_deploy.errors import StrgError
from strg_deploy.plugins import launch

FLOAT = "FLOAT"  # names of tensorrt.DataType members
BOOL = "BOOL"
LAYOUT = "LINEAR"
_AUTOTUNE_TYPE = {FLOAT: "FP32", BOOL: "BOOL"}  # tensorrt.plugin.AutoTuneCombination's spelling
PTX_MAX_CC = 80


@dataclass(frozen=True)
class TensorSpec:
    """One plugin input or output: its name, rank, TensorRT data type name and layout in words."""

    name: str
    rank: int
    dtype: str
    layout: str


ROI_INPUTS = (
    TensorSpec("features", 5, FLOAT, "[B, C, T', H', W']"),
    TensorSpec("boxes", 4, FLOAT, "[B, T', N, 4]"),
    TensorSpec("mask", 3, BOOL, "[B, T', N]"),
)
ROI_OUTPUTS = (TensorSpec("nodes", 4, FLOAT, "[B, T', N, C]"),)
GRAPH_INPUTS = (
    TensorSpec("boxes", 4, FLOAT, "[B, T', N, 4]"),
    TensorSpec("mask", 3, BOOL, "[B, T', N]"),
)
GRAPH_OUTPUTS = (
    TensorSpec("forward", 4, FLOAT, "[B, T'-1, N, N]"),
    TensorSpec("backward", 4, FLOAT, "[B, T'-1, N, N]"),
)
ROI_ID = f"{DOMAIN}::{ROI_ALIGN_MAX}"
GRAPH_ID = f"{DOMAIN}::{SPACE_TIME_GRAPH}"


# --- formats ---------------------------------------------------------------------------------------


def io_types(specs: tuple[TensorSpec, ...]) -> str:
    """The ``io_types`` string of ``tensorrt.plugin.AutoTuneCombination`` for inputs + outputs in order,
    e.g. ``"FP32, FP32, BOOL, FP32"``: one type per tensor, float32 only (the kernels have no fp16)."""
    return ", ".join(_AUTOTUNE_TYPE[spec.dtype] for spec in specs)


ROI_IO_TYPES = io_types(ROI_INPUTS + ROI_OUTPUTS)
GRAPH_IO_TYPES = io_types(GRAPH_INPUTS + GRAPH_OUTPUTS)


# --- checks ----------------------------------------------------------------------------------------


def known(dim: Any) -> int | None:
    """The value of a dimension when it is known: an int, or a ``ShapeExpr`` that is neither fake (the
    placeholders TensorRT passes while it asks only for data types) nor symbolic; None otherwise."""
    if isinstance(dim, int):
        return dim
    try:
        if getattr(dim, "is_fake", True) or not dim.is_constant:
            return None
        return int(dim.constant_value())
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None


def check_inputs(plugin: str, specs: tuple[TensorSpec, ...], shapes: list, dtypes: list[str]) -> None:
    """One StrgError line when the inputs' count, ranks or data types (names such as ``FLOAT``) differ
    from ``specs``."""
    if len(shapes) != len(specs) or len(dtypes) != len(specs):
        names = ", ".join(spec.name for spec in specs)
        raise StrgError(f"{plugin}: expected {len(specs)} inputs ({names}), got {len(shapes)}")
    for spec, shape, dtype in zip(specs, shapes, dtypes, strict=True):
        if len(shape) != spec.rank or dtype != spec.dtype:
            raise StrgError(
                f"{plugin}: input {spec.name} must be {spec.dtype} {spec.layout} (rank {spec.rank}), "
                f"got {dtype} of rank {len(shape)}"
            )


def _check_same(plugin: str, what: str, pairs: list[tuple[Any, Any]], got: list) -> None:
    for expected, actual in pairs:
        a, b = known(expected), known(actual)
        if a is not None and b is not None and a != b:
            raise StrgError(f"{plugin}: {what}, got {[known(d) for d in got]}")


def check_roi_inputs(features, boxes, mask, dtypes: list[str]) -> None:
    """Ranks and types of (features, boxes, mask), then the known dimensions: boxes [B, T', N, 4] on
    features [B, C, T', H', W'], mask [B, T', N]."""
    check_inputs(ROI_ID, ROI_INPUTS, [features, boxes, mask], dtypes)
    pairs = [(boxes[0], features[0]), (boxes[1], features[2]), (boxes[3], 4)]
    _check_same(ROI_ID, "boxes must be [B, T', N, 4] with B, T' of features", pairs, list(boxes))
    pairs = [(mask[i], boxes[i]) for i in range(3)]
    _check_same(ROI_ID, "mask must be [B, T', N] like boxes", pairs, list(mask))


def check_graph_inputs(boxes, mask, dtypes: list[str]) -> None:
    """Ranks and types of (boxes, mask), then the known dimensions: boxes [B, T', N, 4], mask [B, T', N]."""
    check_inputs(GRAPH_ID, GRAPH_INPUTS, [boxes, mask], dtypes)
    _check_same(GRAPH_ID, "boxes must be [B, T', N, 4]", [(boxes[3], 4)], list(boxes))
    pairs = [(mask[i], boxes[i]) for i in range(3)]
    _check_same(GRAPH_ID, "mask must be [B, T', N] like boxes", pairs, list(mask))


# --- output shapes ---------------------------------------------------------------------------------


def roi_output_shape(features, boxes) -> tuple:
    """nodes [B, T', N, C] from features [B, C, T', H', W'] and boxes [B, T', N, 4]."""
    return (boxes[0], boxes[1], boxes[2], features[1])


def graph_output_shape(boxes) -> tuple:
    """forward (and backward) [B, T'-1, N, N] from boxes [B, T', N, 4]; T'-1 is 0 when T' is 1."""
    return (boxes[0], boxes[1] - 1, boxes[2], boxes[2])


# --- launches --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """What an ``aot_impl`` returns besides the PTX: grid (x, y, z) in blocks, threads per block, the
    kernel's bound on dynamic shared memory in bytes (the launch passes the compiled kernel's own
    figure), and the int32 extra arguments in kernel order (int-likes)."""

    kernel: str
    grid: tuple
    block: int
    shared_mem: int
    extra_args: tuple


def roi_launch(features, boxes) -> Launch:
    """The RoI kernel's launch, exactly as launch.py gives it: grid (B*T'*N, ceil(C/16), 1), 64 threads,
    int32 arguments (C, T', H', W', N)."""
    spec = launch.ROI_SPEC
    return Launch(
        spec.name,
        launch.roi_grid(features, boxes),
        spec.block,
        spec.shared_mem,
        launch.roi_extra_args(features, boxes),
    )


def at_most_one(value):
    """min(value, 1) for an int-like ``value >= 0``, in ``+ - * //`` only: (2v) // (v + 1) is 0 for 0
    and 1 for every v >= 1 (2v < 2(v + 1) and 2v >= v + 1)."""
    return (value * 2) // (value + 1)


def graph_launch(boxes) -> Launch:
    """The graph kernel's launch: launch.py's for T' >= 2 (grid (B*(T'-1), ceil(N/16), 1), 128 threads,
    128 bytes of shared memory, int32 arguments (T', N)); for T' = 1 a launch that touches no memory,
    grid (1, ceil(N/16), 1) with arguments (2, 0) (module docstring)."""
    spec = launch.GRAPH_SPEC
    batch, frames, count = boxes[0], boxes[1], boxes[2]
    pairs = frames - 1
    some = at_most_one(pairs)  # 1 when there is a pair of frames, 0 when T' == 1
    grid = launch.graph_grid(boxes)
    grid = (batch * pairs + 1 - some, grid[1], grid[2])  # B*(T'-1), or 1 for T' == 1
    extra = (frames + 1 - some, count * some)  # (T', N), or (2, 0) for T' == 1
    return Launch(spec.name, grid, spec.block, spec.shared_mem, extra)


def ptx_cc(major: int, minor: int) -> int:
    """The compute capability to compile the kernels' PTX for, given the building GPU's.

    80 for every GPU from Ampere on: ``.target sm_80`` PTX, which the driver compiles for any newer GPU
    (cc 90 would give Hopper-only ``sm_90a`` PTX, and cc 100 and up need a newer PTX ISA than the pinned
    8.0); the GPU's own capability below that (Turing, cc 75), which sm_80 PTX could not run on."""
    return min(int(major) * 10 + int(minor), PTX_MAX_CC)
