"""Space-time graphs, their banded products and the similarity graph, against dense references."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from strg_deploy.models.graphs import (
    box_iou_pairs,
    propagate_backward,
    propagate_forward,
    similarity_graph,
    space_time_graphs,
)


def random_boxes(*shape: int, size: float = 64.0) -> torch.Tensor:
    """Random valid boxes float [*shape, 4] inside a size x size image, clustered so that many overlap."""
    corner = torch.rand(*shape, 2) * size * 0.6
    extent = torch.rand(*shape, 2) * size * 0.4 + 1.0
    return torch.cat([corner, corner + extent], dim=-1)


def dense_space_time(boxes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Straightforward reference: dense (T*N) x (T*N) forward and backward graphs, one clip at a time."""
    batch, frames, count, _ = boxes.shape
    size = frames * count
    forward = torch.zeros(batch, size, size, dtype=torch.float64)
    for b in range(batch):
        for t in range(frames - 1):
            iou = box_iou(boxes[b, t].double(), boxes[b, t + 1].double())
            for i in range(count):
                for j in range(count):
                    if mask[b, t, i] and mask[b, t + 1, j]:
                        forward[b, t * count + i, (t + 1) * count + j] = iou[i, j]
    backward = forward.transpose(1, 2).clone()
    for graph in (forward, backward):
        for b in range(batch):
            for row in range(size):
                total = graph[b, row].sum()
                if total > 0:
                    graph[b, row] /= total
    return forward, backward


def banded_to_dense(forward: torch.Tensor, backward: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Place the [B, T-1, N, N] bands into dense [B, T*N, T*N] matrices."""
    batch, steps, count, _ = forward.shape
    size = (steps + 1) * count
    dense_f = torch.zeros(batch, size, size, dtype=forward.dtype)
    dense_b = torch.zeros(batch, size, size, dtype=backward.dtype)
    for t in range(steps):
        rows, cols = slice(t * count, (t + 1) * count), slice((t + 1) * count, (t + 2) * count)
        dense_f[:, rows, cols] = forward[:, t]
        dense_b[:, cols, rows] = backward[:, t]
    return dense_f, dense_b


def test_strg_md_test_vector():
    boxes = torch.tensor(
        [
            [[0, 0, 9, 9], [20, 20, 29, 29]],
            [[5, 5, 14, 14], [0, 0, 9, 9]],
            [[100, 100, 109, 109], [0, 0, 9, 9]],
        ],
        dtype=torch.float32,
    )[None]
    forward, backward = space_time_graphs(boxes, torch.ones(1, 3, 2, dtype=torch.bool))
    assert forward.shape == backward.shape == (1, 2, 2, 2)
    dense_f, dense_b = banded_to_dense(forward, backward)
    iou = 16 / 146
    a, b = iou / (1 + iou), 1 / (1 + iou)
    assert abs(a - 0.098765) < 1e-6 and abs(b - 0.901235) < 1e-6
    expected_f = torch.zeros(6, 6)
    expected_f[0, 2:4] = torch.tensor([a, b])
    expected_f[2, 5] = expected_f[3, 5] = 1
    expected_b = torch.zeros(6, 6)
    expected_b[2, 0] = expected_b[3, 0] = 1
    expected_b[5, 2:4] = torch.tensor([a, b])
    torch.testing.assert_close(dense_f[0], expected_f, atol=1e-6, rtol=0)
    torch.testing.assert_close(dense_b[0], expected_b, atol=1e-6, rtol=0)


def test_box_iou_pairs_matches_torchvision_and_is_nan_free():
    torch.manual_seed(0)
    a, b = random_boxes(7), random_boxes(5)
    torch.testing.assert_close(box_iou_pairs(a, b), box_iou(a, b))
    batched = box_iou_pairs(random_boxes(3, 2, 4), random_boxes(3, 2, 6))
    assert batched.shape == (3, 2, 4, 6)
    degenerate = torch.tensor([[0.0, 0, 0, 0], [3, 3, 3, 8], [1, 1, 5, 5]])
    iou = box_iou_pairs(degenerate, degenerate)
    assert not iou.isnan().any()
    assert iou[0, 0] == 0 and iou[1, 1] == 0 and iou[2, 2] == 1


def test_equals_dense_reference_on_random_boxes():
    torch.manual_seed(1)
    boxes = random_boxes(3, 5, 4)
    mask = torch.rand(3, 5, 4) > 0.25
    mask[1, 2] = False  # one frame without any proposal
    forward, backward = space_time_graphs(boxes, mask)
    assert forward.shape == backward.shape == (3, 4, 4, 4)
    expected_f, expected_b = dense_space_time(boxes, mask)
    dense_f, dense_b = banded_to_dense(forward, backward)
    torch.testing.assert_close(dense_f.double(), expected_f, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dense_b.double(), expected_b, atol=1e-6, rtol=1e-6)


def test_rows_sum_to_one_or_zero():
    torch.manual_seed(2)
    boxes = random_boxes(2, 6, 5)
    mask = torch.rand(2, 6, 5) > 0.3
    for graph in space_time_graphs(boxes, mask):
        sums = graph.sum(dim=-1)
        assert torch.all(((sums - 1).abs() < 1e-6) | (sums == 0))
        assert (graph >= 0).all()
        assert (sums > 0).any()


def test_padding_never_shifts_boxes_or_edges():
    torch.manual_seed(3)
    boxes = random_boxes(1, 4, 3)
    full = torch.ones(1, 4, 3, dtype=torch.bool)
    ref_f, ref_b = space_time_graphs(boxes, full)
    # The same boxes in slots 0, 2, 4 of 6; slots 1, 3, 5 padded with garbage coordinates.
    padded = torch.tensor([[-50.0, 1e6, 3.0, -7.0]]).expand(1, 4, 6, 4).clone()
    padded[:, :, 0::2] = boxes
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[:, :, 0::2] = True
    forward, backward = space_time_graphs(padded, mask)
    torch.testing.assert_close(forward[..., 0::2, 0::2], ref_f, rtol=0, atol=0)
    torch.testing.assert_close(backward[..., 0::2, 0::2], ref_b, rtol=0, atol=0)
    for graph in (forward, backward):
        assert (graph[..., 1::2, :] == 0).all() and (graph[..., :, 1::2] == 0).all()


def test_nan_free_when_frames_or_clips_are_all_padded():
    torch.manual_seed(4)
    boxes = random_boxes(2, 4, 3)
    boxes[0, 1] = float("nan")  # padded slots may hold anything
    boxes[1] = 0.0
    mask = torch.ones(2, 4, 3, dtype=torch.bool)
    mask[0, 1] = False
    mask[1] = False
    forward, backward = space_time_graphs(boxes, mask)
    for graph in (forward, backward):
        assert not graph.isnan().any()
        assert (graph[1] == 0).all()
        assert (graph[0, 0] == 0).all() and (graph[0, 1] == 0).all()  # both steps touching frame 1
    single = space_time_graphs(random_boxes(2, 1, 3), torch.ones(2, 1, 3, dtype=torch.bool))
    assert single[0].shape == (2, 0, 3, 3)


def test_batch_independence():
    torch.manual_seed(5)
    boxes = random_boxes(3, 4, 5)
    mask = torch.rand(3, 4, 5) > 0.2
    forward, backward = space_time_graphs(boxes, mask)
    for b in range(3):
        one_f, one_b = space_time_graphs(boxes[b : b + 1], mask[b : b + 1])
        torch.testing.assert_close(forward[b : b + 1], one_f, rtol=0, atol=0)
        torch.testing.assert_close(backward[b : b + 1], one_b, rtol=0, atol=0)


def test_propagation_equals_dense_products():
    torch.manual_seed(6)
    boxes = random_boxes(2, 5, 4)
    mask = torch.rand(2, 5, 4) > 0.2
    x = torch.randn(2, 5, 4, 3)
    forward, backward = space_time_graphs(boxes, mask)
    dense_f, dense_b = banded_to_dense(forward, backward)
    flat = x.reshape(2, 20, 3)
    torch.testing.assert_close(propagate_forward(forward, x).reshape(2, 20, 3), dense_f @ flat)
    torch.testing.assert_close(propagate_backward(backward, x).reshape(2, 20, 3), dense_b @ flat)
    assert (propagate_forward(forward, x)[:, -1] == 0).all()
    assert (propagate_backward(backward, x)[:, 0] == 0).all()


def make_phis(dim: int) -> tuple[nn.Linear, nn.Linear]:
    return nn.Linear(dim, dim, bias=False), nn.Linear(dim, dim, bias=False)


def test_similarity_graph_matches_softmax_over_valid_nodes():
    torch.manual_seed(7)
    phi, phi_prime = make_phis(6)
    x = torch.randn(2, 9, 6)
    mask = torch.rand(2, 9) > 0.3
    mask[:, 0] = True
    graph = similarity_graph(x, mask, phi, phi_prime)
    assert graph.shape == (2, 9, 9)
    for b in range(2):
        valid = mask[b].nonzero().squeeze(1)
        scores = phi(x[b, valid]) @ phi_prime(x[b, valid]).T
        expected = torch.zeros(9, 9)
        expected[valid[:, None], valid[None, :]] = torch.softmax(scores, dim=-1)
        torch.testing.assert_close(graph[b], expected)
    sums = graph.sum(dim=-1)
    torch.testing.assert_close(sums, mask.float())


@pytest.mark.parametrize("all_padded", [False, True])
def test_similarity_graph_gradients_reach_phi_and_stay_finite(all_padded):
    torch.manual_seed(8)
    phi, phi_prime = make_phis(4)
    x = torch.randn(2, 6, 4, requires_grad=True)
    mask = torch.rand(2, 6) > 0.3
    mask[0, :2] = True
    if all_padded:
        mask[1] = False
    graph = similarity_graph(x, mask, phi, phi_prime)
    assert not graph.isnan().any()
    if all_padded:
        assert (graph[1] == 0).all()
    (graph * torch.randn_like(graph)).sum().backward()
    for grad in (phi.weight.grad, phi_prime.weight.grad, x.grad):
        assert grad is not None and torch.isfinite(grad).all()
    assert phi.weight.grad.abs().sum() > 0 and phi_prime.weight.grad.abs().sum() > 0
