"""How each plugin kernel is launched: the one place that says so (plain Python: no triton, no tensorrt).

For each kernel of :mod:`strg_deploy.plugins.kernels` a :class:`KernelSpec` gives the parameter list in
TensorRT's AOT order (input pointers, int32 scalars, output pointers), the warps and the most shared
memory the kernel takes (a launch passes the compiled kernel's own figure, Triton's ``metadata.shared``);
functions give, for concrete input shapes, the grid and block (:func:`roi_launch_params`,
:func:`graph_launch_params`), the int32 scalars in kernel order (:func:`roi_extra_args`,
:func:`graph_extra_args`), and the compile-time constants (:func:`roi_constexprs` from the node's
attributes, :func:`graph_constexprs`).

The formulas themselves (:func:`roi_grid`, :func:`graph_grid` and the extra arguments) use only ``+``,
``-``, ``*`` and ``//`` with the shape on the left, so the plugin registration can apply them to
TensorRT's symbolic shape expressions (``tensorrt.plugin.ShapeExpr``) as well as to ints.

``FrameRoIAlignMax``: features [B, C, T', H', W'], boxes [B, T', N, 4], mask [B, T', N]
    -> nodes [B, T', N, C];
    grid (B * T' * N, ceil(C / 16), 1), 64 threads, int32 scalars (C, T', H', W', N); the lanes hold
    the OUTPUT_SIZE^2 bins padded to a power of two, and the program takes its 16 channels one after
    another; the max over the bins reduces across the two warps in shared memory (8 bytes from 7 x 7
    bins on, none below; launch.py bounds it at 1 KiB).
``SpaceTimeGraph``: boxes [B, T', N, 4], mask [B, T', N] -> forward, backward [B, T'-1, N, N].
    grid (B * (T' - 1), ceil(N / 16), 1), 128 threads, 128 bytes of shared memory, int32 scalars (T', N).
    With T' = 1 the grid is empty (the outputs have no elements): launch nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from strg_deploy.errors import StrgError

INT32_MAX = 2**31 - 1

ROI_KERNEL = "frame_roi_align_max_kernel"
GRAPH_KERNEL = "space_time_graph_kernel"
ROI_INT_ARGS = ("channels", "frames", "height", "width", "count")
GRAPH_INT_ARGS = ("frames", "count")

ROI_BLOCK_C = 16
ROI_NUM_WARPS = 2
GRAPH_BLOCK_R = 16
GRAPH_BLOCK_C = 64
GRAPH_NUM_WARPS = 4


@dataclass(frozen=True)
class KernelSpec:
    """One kernel's calling convention. inputs/outputs: (name, Triton pointer type) in kernel order;
    int_args: names of the int32 scalars between them; shared_mem: the most dynamic shared memory (bytes)
    the kernel takes for any attribute set: a launch passes the compiled kernel's own figure, at most
    this (Triton sizes the shared memory per compilation, e.g. with the number of RoI bins)."""

    name: str
    inputs: tuple[tuple[str, str], ...]
    int_args: tuple[str, ...]
    outputs: tuple[tuple[str, str], ...]
    num_warps: int
    shared_mem: int

    @property
    def block(self) -> int:
        """Threads per block: num_warps * 32 (the PTX entry requires exactly this many: ``.reqntid``)."""
        return self.num_warps * 32

    def signature(self, constexprs: dict[str, object]) -> dict[str, str]:
        """The signature for ``triton.compiler.ASTSource``: every runtime parameter typed explicitly (no
        value or alignment specialisation), then the compile-time constants marked ``constexpr``."""
        runtime = [*self.inputs, *((name, "i32") for name in self.int_args), *self.outputs]
        return {**dict(runtime), **{name: "constexpr" for name in constexprs}}


ROI_SPEC = KernelSpec(
    name=ROI_KERNEL,
    inputs=(("features", "*fp32"), ("boxes", "*fp32"), ("mask", "*i8")),
    int_args=ROI_INT_ARGS,
    outputs=(("nodes", "*fp32"),),
    num_warps=ROI_NUM_WARPS,
    shared_mem=1024,  # 0 or 8 bytes for 1 x 1 to 16 x 16 bins (Triton 3.5-3.8, cc 75 to 90)
)
GRAPH_SPEC = KernelSpec(
    name=GRAPH_KERNEL,
    inputs=(("boxes", "*fp32"), ("mask", "*i8")),
    int_args=GRAPH_INT_ARGS,
    outputs=(("forward", "*fp32"), ("backward", "*fp32")),
    num_warps=GRAPH_NUM_WARPS,
    shared_mem=128,  # the row sums reduce across the 4 warps (Triton 3.8, cc 80 and 90)
)
SPECS = {ROI_KERNEL: ROI_SPEC, GRAPH_KERNEL: GRAPH_SPEC}


@dataclass(frozen=True)
class LaunchParams:
    """grid (x, y, z) in blocks, block threads (x only), dynamic shared memory in bytes (the kernel's
    bound; the plugin launches with the compiled kernel's own figure)."""

    grid: tuple[int, int, int]
    block: int
    shared_mem: int


def roi_constexprs(spatial_scale: float, output_size: int, sampling_ratio: int) -> dict[str, object]:
    """The compile-time constants of the RoI kernel from the node's attributes (plus the channels per
    program and the bins padded to a power of two)."""
    if not spatial_scale > 0 or int(output_size) < 1 or int(sampling_ratio) < 1:
        raise StrgError(
            "FrameRoIAlignMax: spatial_scale must be positive and output_size, sampling_ratio at least 1 "
            f"(got {spatial_scale}, {output_size}, {sampling_ratio})"
        )
    return {
        "SPATIAL_SCALE": float(spatial_scale),
        "OUTPUT_SIZE": int(output_size),
        "SAMPLING_RATIO": int(sampling_ratio),
        "BLOCK_C": ROI_BLOCK_C,
        "BLOCK_BINS": 1 << (int(output_size) ** 2 - 1).bit_length(),
    }


def graph_constexprs() -> dict[str, object]:
    """The compile-time constants of the graph kernel (its tile; the node has no numeric attributes)."""
    return {"BLOCK_R": GRAPH_BLOCK_R, "BLOCK_C": GRAPH_BLOCK_C}


def roi_grid(features_shape, boxes_shape) -> tuple:
    """Grid (B * T' * N, ceil(C / BLOCK_C), 1): one program per box and block of channels."""
    batch, channels = features_shape[0], features_shape[1]
    frames, count = boxes_shape[1], boxes_shape[2]
    return (batch * frames * count, (channels + (ROI_BLOCK_C - 1)) // ROI_BLOCK_C, 1)


def roi_extra_args(features_shape, boxes_shape) -> tuple:
    """The int32 scalars of the RoI kernel in kernel order: (C, T', H', W', N)."""
    _, channels, frames, height, width = features_shape
    return (channels, frames, height, width, boxes_shape[2])


def graph_grid(boxes_shape) -> tuple:
    """Grid (B * (T' - 1), ceil(N / BLOCK_R), 1): one program per pair of frames and block of rows."""
    batch, frames, count = boxes_shape[0], boxes_shape[1], boxes_shape[2]
    return (batch * (frames - 1), (count + (GRAPH_BLOCK_R - 1)) // GRAPH_BLOCK_R, 1)


def graph_extra_args(boxes_shape) -> tuple:
    """The int32 scalars of the graph kernel in kernel order: (T', N)."""
    return (boxes_shape[1], boxes_shape[2])


def roi_launch_params(features_shape, boxes_shape) -> LaunchParams:
    """Launch of the RoI kernel for concrete shapes features [B, C, T', H', W'], boxes [B, T', N, 4]."""
    features_shape, boxes_shape = _dims(features_shape, 5, "features"), _dims(boxes_shape, 4, "boxes")
    batch, channels, frames, height, width = features_shape
    if boxes_shape[:2] != (batch, frames) or boxes_shape[3] != 4:
        raise StrgError(
            f"FrameRoIAlignMax: boxes {list(boxes_shape)} do not fit features {list(features_shape)}"
        )
    _int32("nodes", batch * frames * boxes_shape[2] * channels)  # features use 64-bit offsets
    _int32("boxes", batch * frames * boxes_shape[2] * 4)
    grid = tuple(int(v) for v in roi_grid(features_shape, boxes_shape))
    return LaunchParams(grid, ROI_SPEC.block, ROI_SPEC.shared_mem)


def graph_launch_params(boxes_shape) -> LaunchParams:
    """Launch of the graph kernel for concrete boxes [B, T', N, 4] (an empty grid when T' == 1)."""
    batch, frames, count, corners = _dims(boxes_shape, 4, "boxes")
    if corners != 4:
        raise StrgError(f"SpaceTimeGraph: boxes must be [B, T', N, 4], got {list(boxes_shape)}")
    _int32("forward", batch * (frames - 1) * count * count)
    _int32("boxes", batch * frames * count * 4)
    grid = tuple(int(v) for v in graph_grid(boxes_shape))
    return LaunchParams(grid, GRAPH_SPEC.block, GRAPH_SPEC.shared_mem)


def _dims(shape, rank: int, name: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if len(dims) != rank or any(d < 1 for d in dims):
        raise StrgError(f"{name}: expected {rank} positive dimensions, got {list(dims)}")
    return dims


def _int32(name: str, elements: int) -> None:
    """The kernels index these tensors with int32: refuse shapes that would overflow it."""
    if elements > INT32_MAX:
        raise StrgError(f"{name}: {elements} elements exceed the kernels' int32 indexing (2**31 - 1)")
