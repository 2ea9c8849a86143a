"""``fusion="towers"`` against the public reproduction's graph network (github.com/jd730/STRG).

The reference below is written from the reproduction's ``rgcn_models.py`` (``RGCN.forward``, ``sim_GCN``,
``st_GCN``, ``sim_graph``), ``module/gcn.py`` (``GraphConvolution``: ``adj @ (x @ W)``, W [in, out]) and
``module/roi_graph.py`` (``get_st_graph``: dense [T*N, T*N] IoU graphs, rows normalised, NaN set to 0),
in plain dense torch, independently of :mod:`strg_deploy.models.gcn`. Every node is valid (the
reproduction has no padding); IoU is torchvision's (continuous coordinates), as in this package.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from strg_deploy.models.gcn import SpaceTimeGCN
from strg_deploy.models.graphs import space_time_graphs


def reproduction_st_graphs(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``get_st_graph``: boxes [B, T, N, 4] -> dense front and back graphs [B, T*N, T*N]."""
    batch, frames, count, _ = boxes.shape
    size = frames * count
    front = torch.zeros(batch, size, size, dtype=boxes.dtype)
    for b in range(batch):
        for t in range(frames - 1):
            iou = box_iou(boxes[b, t], boxes[b, t + 1])
            front[b, t * count : (t + 1) * count, (t + 1) * count : (t + 2) * count] = iou
    back = front.transpose(1, 2)
    front = front / front.sum(dim=-1, keepdim=True)
    back = back / back.sum(dim=-1, keepdim=True)
    return front.nan_to_num(0.0), back.nan_to_num(0.0)


def reproduction_rgcn(x, boxes, embed1, embed2, sim_weights, st_weights, st_back_weights):
    """``RGCN.forward`` up to ``sim_gcn + st_gcn`` (before the mean over nodes and dropout).

    x: [B, T, N, d]; embed1, embed2: ``nn.Linear`` weights [d, d]; *_weights: lists of [d, d] matrices
    in ``GraphConvolution``'s [in, out] layout -> [B, T*N, d].
    """
    front, back = reproduction_st_graphs(boxes)
    x = x.flatten(1, 2)
    sim_graph = torch.softmax((x @ embed1.T) @ (x @ embed2.T).transpose(1, 2), dim=-1)
    sim = x
    for w in sim_weights:
        sim = torch.relu(sim_graph @ (sim @ w))
    st = x
    for w, w_back in zip(st_weights, st_back_weights, strict=True):
        st = torch.relu(front @ (st @ w)) + torch.relu(back @ (st @ w_back))
    return sim + st


def copy_reproduction_weights(gcn: SpaceTimeGCN, layers: int, dim: int, seed: int):
    """Random reproduction-layout weights, copied into ``gcn`` (nn.Linear holds the transpose)."""
    gen = torch.Generator().manual_seed(seed)

    def weight():
        return torch.randn(dim, dim, generator=gen) * 0.6

    embed1, embed2 = weight(), weight()
    sim_w = [weight() for _ in range(layers)]
    st_w = [weight() for _ in range(layers)]
    st_back_w = [weight() for _ in range(layers)]
    similarity_tower, space_time_tower = gcn.towers
    with torch.no_grad():
        gcn.phi.weight.copy_(embed1)
        gcn.phi_prime.weight.copy_(embed2)
        for k in range(layers):
            similarity_tower[k].w_similarity.weight.copy_(sim_w[k].T)
            space_time_tower[k].w_forward.weight.copy_(st_w[k].T)
            space_time_tower[k].w_backward.weight.copy_(st_back_w[k].T)
    return embed1, embed2, sim_w, st_w, st_back_w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_towers_fusion_equals_the_reproduction(seed):
    torch.manual_seed(seed)
    batch, frames, count, dim, layers = 2, 4, 3, 8, 3
    corner = torch.rand(batch, frames, count, 2) * 20
    boxes = torch.cat([corner, corner + 12 + torch.rand(batch, frames, count, 2) * 8], dim=-1)
    mask = torch.ones(batch, frames, count, dtype=torch.bool)
    x = torch.randn(batch, frames, count, dim)
    gcn = SpaceTimeGCN(dim, layers=layers, fusion="towers")
    weights = copy_reproduction_weights(gcn, layers, dim, seed)
    forward, backward = space_time_graphs(boxes, mask)
    with torch.no_grad():
        ours = gcn(x, mask, forward, backward).flatten(1, 2)
    expected = reproduction_rgcn(x, boxes, *weights)
    assert expected.abs().max() > 0.5  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_towers_relu_is_applied_to_each_space_time_term():
    """One space-time layer, one node per frame: relu(a) + relu(b) where the old form gave relu(a + b)."""
    gcn = SpaceTimeGCN(1, layers=1, fusion="towers")
    _, space_time = gcn.towers
    with torch.no_grad():
        space_time[0].w_forward.weight.fill_(1.0)
        space_time[0].w_backward.weight.fill_(-1.0)
    boxes = torch.tensor([0.0, 0.0, 10.0, 10.0]).expand(1, 3, 1, 4)
    mask = torch.ones(1, 3, 1, dtype=torch.bool)
    x = torch.tensor([1.0, 2.0, 5.0]).view(1, 3, 1, 1)
    forward, backward = space_time_graphs(boxes, mask)
    out = space_time[0](x, mask, None, forward, backward).flatten()
    # frame 1: forward term x[2] = 5, backward term -x[0] = -1 -> relu(5) + relu(-1) = 5 (not 4)
    assert out.tolist() == [2.0, 5.0, 0.0]
