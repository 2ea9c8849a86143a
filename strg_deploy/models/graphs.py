"""The graphs of STRG: IoU space-time graphs between neighbouring frames and the similarity graph.

A clip has T frames of N region proposals each (padded to N, with a boolean mask). Node ``t * N + i``
is box i of frame t. The space-time graphs only link frame t to frame t + 1, so they are kept as
bands of N x N blocks beside the diagonal, never as dense (T*N) x (T*N) matrices:

- ``forward[b, t, i, j]``: edge from box i of frame t to box j of frame t + 1,
- ``backward[b, t, j, i]``: edge from box j of frame t + 1 to box i of frame t,

both IoU-weighted with each node's edges normalised to sum 1 (nodes without overlap keep no edges).
:func:`propagate_forward` and :func:`propagate_backward` multiply node features by these bands.

Boxes use continuous coordinates (x1, y1, x2, y2), area (x2 - x1) * (y2 - y1), as in
``torchvision.ops.box_iou``. Everything is batched tensor code: it traces, exports and runs on any device.
"""

from __future__ import annotations

import torch
from torch import nn

from strg_deploy.models.custom_nodes import space_time_graph_node


def box_iou_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box of ``a`` with every box of ``b`` (no gradient flows to the boxes).

    a: float [..., N, 4], b: float [..., M, 4] (x1, y1, x2, y2; leading dimensions broadcast)
    -> float [..., N, M]. Pairs whose union is not positive (zero-area or padded boxes) get 0, never NaN:
    such pairs never intersect, so their intersection (0) is divided by a tiny positive number instead.
    """
    ax1, ay1, ax2, ay2 = a.detach().movedim(-1, 0).contiguous()[..., :, None]
    bx1, by1, bx2, by2 = b.detach().movedim(-1, 0).contiguous()[..., None, :]
    inter, _ = _iou_in_place(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
    return inter


def _iou_in_place(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU [..., N, M] from coordinate planes [..., N, 1] and [..., 1, M], plus a spare [..., N, M] buffer.

    The N x M passes run in place on three fresh buffers (the IoU, the spare and one freed here): large
    fresh buffers cost page faults, which can cost more than the arithmetic.
    """
    tiny = torch.finfo(ax1.dtype).tiny
    inter = torch.minimum(ax2, bx2)
    spare = torch.maximum(ax1, bx1)
    inter.sub_(spare).clamp_(min=0)  # intersection width
    height = torch.minimum(ay2, by2)
    height.sub_(spare.copy_(ay1.expand_as(spare)).clamp_(min=by1)).clamp_(min=0)
    inter.mul_(height)
    union = height.copy_((ax2 - ax1) * (ay2 - ay1)).add_((bx2 - bx1) * (by2 - by1)).sub_(inter)
    return inter.div_(union.clamp_(min=tiny)), spare


def space_time_graphs(boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward and backward space-time graphs, as bands of N x N blocks.

    boxes: float [B, T, N, 4] (x1, y1, x2, y2 in any consistent unit), mask: bool [B, T, N]
    -> (forward, backward), each float [B, T-1, N, N]:

    - ``forward[b, t, i, j]`` = IoU(box i of frame t, box j of frame t+1), each row i normalised over j,
    - ``backward[b, t, j, i]`` = the same IoU, each row j normalised over i.

    Padded nodes (mask False) have no edges, whatever their coordinates; a node that overlaps nothing
    in the neighbouring frame keeps an all-zero row. No self-loops, no edges within a frame, no NaN.
    The graphs are constants with respect to the boxes (no gradient flows to box coordinates);
    ``backward`` is returned as a transposed view of a [B, T-1, N, N] tensor.
    """
    if torch.onnx.is_in_onnx_export():  # one custom node; its body (or a TensorRT plugin) computes this
        return space_time_graph_node(boxes, mask)
    tiny = torch.finfo(boxes.dtype).tiny
    # A padded box becomes the empty box at the origin: it intersects nothing, so it gets no edge.
    boxes = torch.where(mask[..., None], boxes.detach(), 0.0)
    planes = boxes.movedim(-1, 0).contiguous()  # [4, B, T, N]
    ax1, ay1, ax2, ay2 = planes[:, :, :-1, :, None]
    bx1, by1, bx2, by2 = planes[:, :, 1:, None, :]
    iou, spare = _iou_in_place(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2)
    forward = spare.copy_(iou).div_(iou.sum(dim=-1, keepdim=True).clamp_(min=tiny))
    backward = iou.div_(iou.sum(dim=-2, keepdim=True).clamp_(min=tiny))
    return forward, backward.transpose(-1, -2)


def normalise_rows(weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Divide weights by their sums along ``dim`` (rows by default); all-zero rows stay zero. Same shape."""
    total = weights.sum(dim=dim, keepdim=True)
    return weights / total.clamp(min=torch.finfo(total.dtype).tiny)


def propagate_forward(forward: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Aggregate features along forward edges: out[:, t] = forward[:, t] @ x[:, t+1], zero for the last frame.

    forward: float [B, T-1, N, N], x: float [B, T, N, d] -> float [B, T, N, d]
    (the dense equivalent is G_forward @ x.reshape(B, T*N, d)).
    """
    return nn.functional.pad(torch.matmul(forward, x[:, 1:]), (0, 0, 0, 0, 0, 1))


def propagate_backward(backward: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Aggregate features along backward edges: out[:, t+1] = backward[:, t] @ x[:, t], zero for frame 0.

    backward: float [B, T-1, N, N], x: float [B, T, N, d] -> float [B, T, N, d]
    (the dense equivalent is G_backward @ x.reshape(B, T*N, d)).
    """
    return nn.functional.pad(torch.matmul(backward, x[:, :-1]), (0, 0, 0, 0, 1, 0))


def similarity_graph(
    x: torch.Tensor, mask: torch.Tensor, phi: nn.Module, phi_prime: nn.Module
) -> torch.Tensor:
    """The similarity graph G[b, i, j] = softmax over valid j of phi(x_i) . phi'(x_j).

    x: float [B, M, d] node features with M = T*N (flatten [B, T, N, d] first), mask: bool [B, M],
    phi, phi_prime: modules d -> d' (``nn.Linear(d, d, bias=False)`` in STRG) -> float [B, M, M].

    Padded nodes receive no weight (their columns are zero) and send none (their rows are zero); a clip
    without any valid node gives an all-zero graph, never NaN. Gradients flow into phi and phi'.
    """
    scores = torch.matmul(phi(x), phi_prime(x).transpose(-1, -2))
    # A finite fill keeps softmax NaN-free (also in backward) when a row has no valid column.
    scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
    graph = torch.softmax(scores, dim=-1)
    return torch.where(mask[:, :, None] & mask[:, None, :], graph, 0.0)
