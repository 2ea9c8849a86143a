"""Triton kernels for the two custom nodes, ``strg::FrameRoIAlignMax`` and ``strg::SpaceTimeGraph``.

Both compute exactly what the torch references compute (``strg_deploy.models.roi.frame_roi_align_max``
and ``strg_deploy.models.graphs.space_time_graphs``); :mod:`strg_deploy.plugins.launch` says how each is
launched (grid, block, shared memory, the int32 arguments, the compile-time constants) and
:mod:`strg_deploy.plugins.ptx` compiles them ahead of time to PTX.

The calling convention (TensorRT's ahead-of-time plugins, ``@tensorrt.plugin.aot_impl``)
---------------------------------------------------------------------------------------
TensorRT launches an AOT plugin kernel with its parameters in this order: the input pointers, then the
int32 scalars the plugin declared as ``SymIntExprs`` (the "extra arguments", expressions of the input
shapes), then the output pointers. Node attributes are not serialised into the engine and cannot be
passed at run time, so every attribute becomes a ``tl.constexpr``: a constant baked into the PTX (one
compiled kernel per attribute set). This is the convention of NVIDIA's sample
``samples/python/quickly_deployable_plugins`` (``circ_pad_kernel``: input ``X``, thirteen int32 scalars,
output ``Y``, ``BLOCK_SIZE: tl.constexpr``; its requirements pin ``triton==3.5.0``), whose ``aot_impl``
builds ``triton.compiler.ASTSource(fn, signature={name: "*fp32" | "i32"}, constexprs={...})`` and returns
``(metadata.name, asm["ptx"], KernelLaunchParams(grid, block_x = num_warps * 32, shared_mem =
metadata.shared), SymIntExprs)``.

What Triton 3.8 adds to the compiled entry (observed in the PTX, asserted by tests/test_plugin_ptx.py):
two hidden trailing ``.u64`` pointer parameters after the last declared one, the global scratch and the
profile scratch buffers (Triton's own launcher passes null for both when a kernel needs no scratch).
These kernels use neither: the compile metadata reports ``global_scratch_size == 0`` and
``profile_scratch_size == 0``, so the pointers are never dereferenced and whatever a launcher puts there
is harmless. (What TensorRT itself passes in those slots could not be checked here: no TensorRT, no GPU.)
The entry also carries ``.reqntid num_warps * 32``: the block must have exactly that many threads.

Specialisation: Triton's JIT specialises an int argument equal to 1 (it becomes a constant and leaves
the signature) or divisible by 16 (an alignment hint), and pointers by their 16-byte alignment, so the
compiled signature would depend on the shapes of the first launch. An AOT kernel must have one fixed
signature whatever the shapes, so (1) ``ptx.compile_kernel`` passes an explicit signature with every
scalar typed ``i32`` and no ``attrs`` (no value or alignment specialisation), and (2) the kernels are
declared with ``do_not_specialize`` and ``do_not_specialize_on_alignment`` for every runtime argument,
so that a JIT launch (interpreter or GPU) compiles the same code as the AOT path.

Data types: features, boxes and outputs are float32; ``mask`` is TensorRT's bool, one byte per element,
read through an ``*i8`` pointer (non-zero means a real box). Offsets into the features use 64-bit
arithmetic; the other tensors are indexed with int32 (fewer than 2**31 elements each).
"""

from __future__ import annotations

import triton
import triton.language as tl

from strg_deploy.plugins import launch
from strg_deploy.plugins.launch import GRAPH_INT_ARGS, ROI_INT_ARGS

TINY = tl.constexpr(1.1754943508222875e-38)  # float32 tiny: the clamp of IoU unions and row sums

_ROI_RUNTIME = ["features", "boxes", "mask", *ROI_INT_ARGS, "nodes"]
_GRAPH_RUNTIME = ["boxes", "mask", *GRAPH_INT_ARGS, "forward", "backward"]


@triton.jit(do_not_specialize=_ROI_RUNTIME, do_not_specialize_on_alignment=_ROI_RUNTIME)
def frame_roi_align_max_kernel(
    features,  # float32 [B, C, T', H', W']
    boxes,  # float32 [B, T', N, 4]: x1, y1, x2, y2 in input pixels
    mask,  # int8 (bool) [B, T', N]
    channels,  # int32 C
    frames,  # int32 T'
    height,  # int32 H'
    width,  # int32 W'
    count,  # int32 N
    nodes,  # float32 [B, T', N, C] (output)
    SPATIAL_SCALE: tl.constexpr,
    OUTPUT_SIZE: tl.constexpr,
    SAMPLING_RATIO: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_BINS: tl.constexpr,
):
    """RoIAlign (average bins, aligned=True) of one box on its own feature frame, max over the bins.

    Program (box, channel block): axis 0 is the box index ``(b * T' + t) * N + n`` (grid B * T' * N),
    axis 1 the block of ``BLOCK_C`` channels, taken one after another. The lanes hold the
    OUTPUT_SIZE^2 bins (padded to BLOCK_BINS, a power of two), the only axis of every tensor here, so
    whatever layout Triton picks, one load instruction reads neighbouring bins of ONE channel, inside one
    H' x W' plane: 3-6 sectors per load rather than 32 when the lanes are channels a plane apart
    (benchmarks/roi_access.py). The sample positions and weights do not depend on the channel and are
    computed once per program. Each bin averages SAMPLING_RATIO^2 bilinear samples (torchvision's rule:
    a sample outside [-1, H'] x [-1, W'] is zero, coordinates below 0 are raised to 0, the low corner is
    clamped to the last row/column); the max over the bins is a reduction across the lanes, so no
    [bins, C] intermediate is written. A padded box (mask 0) writes zeros.
    """
    box = tl.program_id(0)
    first_c = tl.program_id(1) * BLOCK_C
    keep = tl.load(mask + box) != 0

    x1 = tl.load(boxes + box * 4 + 0) * SPATIAL_SCALE - 0.5
    y1 = tl.load(boxes + box * 4 + 1) * SPATIAL_SCALE - 0.5
    x2 = tl.load(boxes + box * 4 + 2) * SPATIAL_SCALE - 0.5
    y2 = tl.load(boxes + box * 4 + 3) * SPATIAL_SCALE - 0.5
    bin_h = (y2 - y1) / OUTPUT_SIZE
    bin_w = (x2 - x1) / OUTPUT_SIZE

    frame = box // count  # b * T' + t
    b = frame // frames
    t = frame - b * frames
    plane = height * width
    base = features + (b.to(tl.int64) * channels * frames + t) * plane  # features[b, 0, t, 0, 0]
    h_f = height.to(tl.float32)
    w_f = width.to(tl.float32)

    bins = tl.arange(0, BLOCK_BINS)
    in_bin = bins < OUTPUT_SIZE * OUTPUT_SIZE
    ph = (bins // OUTPUT_SIZE).to(tl.float32)
    pw = (bins % OUTPUT_SIZE).to(tl.float32)
    channel_stride = frames.to(tl.int64) * plane  # 64-bit: C * T' * H' * W' may pass 2**31
    last_c = tl.minimum(first_c + BLOCK_C, channels)
    for c in range(first_c, last_c):
        plane_c = base + c * channel_stride  # features[b, c, t, 0, 0]
        total = tl.zeros([BLOCK_BINS], tl.float32)
        for iy in tl.static_range(SAMPLING_RATIO):
            y = y1 + ph * bin_h + (iy + 0.5) * bin_h / SAMPLING_RATIO
            for ix in tl.static_range(SAMPLING_RATIO):
                x = x1 + pw * bin_w + (ix + 0.5) * bin_w / SAMPLING_RATIO
                inside = in_bin & keep & (y >= -1.0) & (y <= h_f) & (x >= -1.0) & (x <= w_f)
                yc = tl.minimum(tl.maximum(y, 0.0), h_f)  # the upper clamp only guards the int cast
                xc = tl.minimum(tl.maximum(x, 0.0), w_f)
                y_low = yc.to(tl.int32)
                x_low = xc.to(tl.int32)
                last_y = y_low >= height - 1
                last_x = x_low >= width - 1
                y_low = tl.where(last_y, height - 1, y_low)
                x_low = tl.where(last_x, width - 1, x_low)
                y_high = tl.where(last_y, y_low, y_low + 1)
                x_high = tl.where(last_x, x_low, x_low + 1)
                ly = tl.where(last_y, 0.0, yc - y_low.to(tl.float32))
                lx = tl.where(last_x, 0.0, xc - x_low.to(tl.float32))
                hy = 1.0 - ly
                hx = 1.0 - lx
                v1 = tl.load(plane_c + (y_low * width + x_low), mask=inside, other=0.0)
                v2 = tl.load(plane_c + (y_low * width + x_high), mask=inside, other=0.0)
                v3 = tl.load(plane_c + (y_high * width + x_low), mask=inside, other=0.0)
                v4 = tl.load(plane_c + (y_high * width + x_high), mask=inside, other=0.0)
                total += hy * hx * v1 + hy * lx * v2 + ly * hx * v3 + ly * lx * v4
        average = tl.where(in_bin, total / (SAMPLING_RATIO * SAMPLING_RATIO), float("-inf"))
        best = tl.max(average, axis=0)
        tl.store(nodes + box * channels + c, tl.where(keep, best, 0.0))


@triton.jit
def _normalised_iou_rows(
    boxes,
    mask,
    row_frame,  # index of the frame whose boxes are the rows (b * T' + t)
    col_frame,  # index of the frame whose boxes are the columns
    count,  # N
    out,  # pointer to the [N, N] block to write
    offs_r,  # [BLOCK_R] row indices
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Write rows ``offs_r`` of IoU(row boxes, column boxes) / row sum into ``out`` (a [N, N] block).

    Masked boxes become the empty box at the origin (no intersection with anything), so they get no
    edges; sums are clamped at TINY so a row without overlap stays zero.
    """
    in_r = offs_r < count
    r = row_frame * count + offs_r
    keep_r = in_r & (tl.load(mask + r, mask=in_r, other=0) != 0)
    ax1 = tl.where(keep_r, tl.load(boxes + r * 4 + 0, mask=in_r, other=0.0), 0.0)[:, None]
    ay1 = tl.where(keep_r, tl.load(boxes + r * 4 + 1, mask=in_r, other=0.0), 0.0)[:, None]
    ax2 = tl.where(keep_r, tl.load(boxes + r * 4 + 2, mask=in_r, other=0.0), 0.0)[:, None]
    ay2 = tl.where(keep_r, tl.load(boxes + r * 4 + 3, mask=in_r, other=0.0), 0.0)[:, None]
    area_a = (ax2 - ax1) * (ay2 - ay1)

    sums = tl.zeros([BLOCK_R], tl.float32)
    for sweep in tl.static_range(2):  # sweep 0: row sums; sweep 1: normalise and store
        for start in range(0, count, BLOCK_C):
            offs_j = start + tl.arange(0, BLOCK_C)
            in_j = offs_j < count
            c = col_frame * count + offs_j
            keep_c = in_j & (tl.load(mask + c, mask=in_j, other=0) != 0)
            bx1 = tl.where(keep_c, tl.load(boxes + c * 4 + 0, mask=in_j, other=0.0), 0.0)[None, :]
            by1 = tl.where(keep_c, tl.load(boxes + c * 4 + 1, mask=in_j, other=0.0), 0.0)[None, :]
            bx2 = tl.where(keep_c, tl.load(boxes + c * 4 + 2, mask=in_j, other=0.0), 0.0)[None, :]
            by2 = tl.where(keep_c, tl.load(boxes + c * 4 + 3, mask=in_j, other=0.0), 0.0)[None, :]
            inter_w = tl.maximum(tl.minimum(ax2, bx2) - tl.maximum(ax1, bx1), 0.0)
            inter_h = tl.maximum(tl.minimum(ay2, by2) - tl.maximum(ay1, by1), 0.0)
            inter = inter_w * inter_h
            union = area_a + (bx2 - bx1) * (by2 - by1) - inter
            iou = inter / tl.maximum(union, TINY)  # [BLOCK_R, BLOCK_C]
            if sweep == 0:
                sums += tl.sum(tl.where(in_j[None, :], iou, 0.0), axis=1)
            else:
                value = iou / tl.maximum(sums, TINY)[:, None]
                where = offs_r[:, None] * count + offs_j[None, :]
                tl.store(out + where, value, mask=in_r[:, None] & in_j[None, :])


@triton.jit(do_not_specialize=_GRAPH_RUNTIME, do_not_specialize_on_alignment=_GRAPH_RUNTIME)
def space_time_graph_kernel(
    boxes,  # float32 [B, T', N, 4]
    mask,  # int8 (bool) [B, T', N]
    frames,  # int32 T'
    count,  # int32 N
    forward,  # float32 [B, T'-1, N, N] (output)
    backward,  # float32 [B, T'-1, N, N] (output)
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """The banded IoU graphs of one pair of neighbouring frames, BLOCK_R rows of each.

    Program (pair, row block): axis 0 is the pair ``b * (T'-1) + t`` (grid B * (T'-1)), axis 1 the block
    of BLOCK_R rows (grid ceil(N / BLOCK_R)). ``forward[b, t, i, :]`` is the IoU of box i of frame t with
    every box of frame t+1, normalised over j; ``backward[b, t, j, :]`` is the IoU of box j of frame t+1
    with every box of frame t, normalised over i (IoU is symmetric, so this is the reference's
    column-normalised IoU, transposed). Columns are swept in blocks of BLOCK_C, twice (sums, then values).
    """
    pair = tl.program_id(0)
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    first = pair + pair // (frames - 1)  # frame b * T' + t of the pair's first frame
    block = forward + pair * count * count
    _normalised_iou_rows(boxes, mask, first, first + 1, count, block, offs_r, BLOCK_R, BLOCK_C)
    block = backward + pair * count * count
    _normalised_iou_rows(boxes, mask, first + 1, first, count, block, offs_r, BLOCK_R, BLOCK_C)


def run_frame_roi_align_max(features, boxes, mask_bytes, nodes, spatial_scale, output_size, sampling_ratio):
    """Launch :func:`frame_roi_align_max_kernel` as :mod:`~strg_deploy.plugins.launch` says, on tensors
    Triton takes (torch tensors on a GPU, or on the CPU under ``TRITON_INTERPRET=1``): features float32
    [B, C, T', H', W'], boxes float32 [B, T', N, 4], mask_bytes int8 [B, T', N] (a bool mask viewed as
    bytes, as TensorRT passes it) -> writes nodes float32 [B, T', N, C]."""
    params = launch.roi_launch_params(features.shape, boxes.shape)
    frame_roi_align_max_kernel[params.grid](
        features,
        boxes,
        mask_bytes,
        *launch.roi_extra_args(features.shape, boxes.shape),
        nodes,
        num_warps=params.block // 32,
        **launch.roi_constexprs(spatial_scale, output_size, sampling_ratio),
    )


def run_space_time_graph(boxes, mask_bytes, forward, backward):
    """Launch :func:`space_time_graph_kernel` as :mod:`~strg_deploy.plugins.launch` says (nothing when
    T' == 1): boxes float32 [B, T', N, 4], mask_bytes int8 [B, T', N] -> writes forward and backward
    float32 [B, T'-1, N, N]."""
    params = launch.graph_launch_params(boxes.shape)
    if params.grid[0] == 0:
        return
    space_time_graph_kernel[params.grid](
        boxes,
        mask_bytes,
        *launch.graph_extra_args(boxes.shape),
        forward,
        backward,
        num_warps=params.block // 32,
        **launch.graph_constexprs(),
    )
