"""Graph convolutions and the graph head: shapes, masking, gradients, dense equivalence, losses."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from strg_deploy.config import preset
from strg_deploy.errors import StrgError
from strg_deploy.models.gcn import GraphConvLayer, SpaceTimeGCN
from strg_deploy.models.graphs import space_time_graphs
from strg_deploy.models.head import GraphHead, classification_loss


def tiny(**head_changes):
    cfg = preset("tiny")
    if head_changes:
        cfg = cfg.replace(head=dataclasses.replace(cfg.head, **head_changes))
    return cfg


def head_inputs(cfg, batch: int = 2, seed: int = 0):
    """features [B, d, T', H', W'], boxes [B, T', N, 4] inside the clip, mask [B, T', N] (some padded)."""
    gen = torch.Generator().manual_seed(seed)
    frames, count = cfg.feature_frames, cfg.proposals.num_boxes
    features = torch.randn(batch, cfg.node_dim, frames, cfg.feature_size, cfg.feature_size, generator=gen)
    corner = torch.rand(batch, frames, count, 2, generator=gen) * cfg.size * 0.6
    extent = torch.rand(batch, frames, count, 2, generator=gen) * cfg.size * 0.4 + 4
    boxes = torch.cat([corner, corner + extent], dim=-1)
    mask = torch.rand(batch, frames, count, generator=gen) > 0.3
    mask[:, :, 0] = True
    return features, torch.where(mask[..., None], boxes, 0.0), mask


def test_logits_shape_on_tiny_preset():
    cfg = tiny()
    torch.manual_seed(0)
    head = GraphHead(cfg).eval()
    logits = head(*head_inputs(cfg, batch=3))
    assert logits.shape == (3, cfg.num_classes)
    assert torch.isfinite(logits).all()


def test_padded_nodes_do_not_change_logits():
    cfg = tiny()
    torch.manual_seed(1)
    head = GraphHead(cfg).eval()
    features, boxes, mask = head_inputs(cfg)
    expected = head(features, boxes, mask)
    garbage = torch.tensor([1e6, -4e5, -30.0, 9e5])
    # Garbage coordinates in the padded slots.
    noisy = torch.where(mask[..., None], boxes, garbage)
    torch.testing.assert_close(head(features, noisy, mask), expected, rtol=0, atol=0)
    # Three more padded slots per frame, appended.
    extra = garbage.expand(*boxes.shape[:2], 3, 4)
    wide_boxes = torch.cat([boxes, extra], dim=2)
    wide_mask = torch.cat([mask, torch.zeros(*mask.shape[:2], 3, dtype=torch.bool)], dim=2)
    torch.testing.assert_close(head(features, wide_boxes, wide_mask), expected, rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_parameter():
    cfg = tiny()
    torch.manual_seed(2)
    head = GraphHead(cfg).train()
    logits = head(*head_inputs(cfg))
    classification_loss(logits, torch.tensor([0, 3]), multi_label=False).backward()
    names = [name for name, _ in head.named_parameters()]
    assert "gcn.phi.weight" in names and "gcn.phi_prime.weight" in names
    for graph in ("similarity", "forward", "backward"):
        assert f"gcn.towers.0.0.w_{graph}.weight" in names
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_towers_fusion_runs_and_learns():
    cfg = tiny(fusion="towers", residual=True, layer_norm=True)
    torch.manual_seed(3)
    head = GraphHead(cfg)
    assert len(head.gcn.towers) == 2
    assert head.gcn.towers[0][0].graphs == ("similarity",)
    assert head.gcn.towers[1][0].graphs == ("forward", "backward")
    assert all(layer.separate_relu for tower in head.gcn.towers for layer in tower)
    logits = head(*head_inputs(cfg))
    assert logits.shape == (2, cfg.num_classes)
    logits.sum().backward()
    assert head.gcn.phi.weight.grad.abs().sum() > 0
    assert head.gcn.towers[1][-1].w_backward.weight.grad.abs().sum() > 0


def test_no_nan_when_every_node_is_padded():
    cfg = tiny()
    torch.manual_seed(4)
    head = GraphHead(cfg).eval()
    features, boxes, mask = head_inputs(cfg)
    mask[1] = False
    nodes = head.nodes(features, boxes, mask)
    forward, backward = head.graphs(boxes, mask)
    pooled = head.reason(nodes, mask, forward, backward)
    assert torch.isfinite(pooled).all() and (pooled[1] == 0).all()
    mask[:] = False
    head.train()
    logits = head(features, boxes, mask)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_forward_equals_its_parts():
    cfg = tiny()
    torch.manual_seed(5)
    head = GraphHead(cfg).eval()
    features, boxes, mask = head_inputs(cfg)
    nodes = head.nodes(features, boxes, mask)
    assert nodes.shape == (2, cfg.feature_frames, cfg.proposals.num_boxes, cfg.node_dim)
    forward, backward = head.graphs(boxes, mask)
    pooled = head.reason(nodes, mask, forward, backward)
    assert pooled.shape == (2, cfg.node_dim)
    torch.testing.assert_close(head.classify(pooled, features), head(features, boxes, mask))


def test_bad_shapes_raise_strg_error():
    cfg = tiny()
    head = GraphHead(cfg)
    features, boxes, mask = head_inputs(cfg)
    with pytest.raises(StrgError, match=rf"\[B, {cfg.node_dim}, {cfg.feature_frames}, H', W'\]"):
        head(features[:, :-1], boxes, mask)
    with pytest.raises(StrgError, match="expected shape"):
        head(features[:, :, :-1], boxes[:, :-1], mask[:, :-1])
    with pytest.raises(StrgError, match="expected shape"):
        head(features, boxes[:1], mask[:1])
    with pytest.raises(StrgError, match="expected shape"):
        head(features, boxes, mask[:, :, :-1])


def test_graph_conv_layer_equals_dense_sum_over_graphs():
    torch.manual_seed(6)
    batch, frames, count, dim = 2, 4, 3, 5
    corner = torch.rand(batch, frames, count, 2) * 20
    boxes = torch.cat([corner, corner + 15], dim=-1)
    mask = torch.rand(batch, frames, count) > 0.25
    x = torch.randn(batch, frames, count, dim) * mask[..., None]
    gcn = SpaceTimeGCN(dim, layers=1)
    layer = gcn.towers[0][0]
    forward, backward = space_time_graphs(boxes, mask)
    similarity = gcn.similarity(x, mask)
    size = frames * count
    dense_f = torch.zeros(batch, size, size)
    dense_b = torch.zeros(batch, size, size)
    for t in range(frames - 1):
        rows, cols = slice(t * count, (t + 1) * count), slice((t + 1) * count, (t + 2) * count)
        dense_f[:, rows, cols] = forward[:, t]
        dense_b[:, cols, rows] = backward[:, t]
    flat = x.reshape(batch, size, dim)
    z = sum(
        g @ flat @ getattr(layer, f"w_{name}").weight.T
        for g, name in ((similarity, "similarity"), (dense_f, "forward"), (dense_b, "backward"))
    )
    expected = (torch.relu(z) * mask.reshape(batch, size, 1)).reshape(x.shape)
    torch.testing.assert_close(gcn(x, mask, forward, backward), expected)


@pytest.mark.parametrize("residual", [False, True])
def test_padded_nodes_stay_zero_after_every_layer(residual):
    torch.manual_seed(7)
    layer = GraphConvLayer(4, residual=residual, layer_norm=True)
    with torch.no_grad():
        layer.norm.bias.fill_(0.5)  # a LayerNorm bias would otherwise lift padded rows
    x = torch.randn(1, 3, 2, 4)
    mask = torch.tensor([[[True, False], [False, False], [True, True]]])
    similarity = torch.softmax(torch.randn(1, 6, 6), dim=-1)
    forward, backward = torch.rand(1, 2, 2, 2), torch.rand(1, 2, 2, 2)
    out = layer(x, mask, similarity, forward, backward)
    assert (out[~mask] == 0).all() and (out[mask] != 0).any()


def test_bad_layer_options_raise():
    with pytest.raises(StrgError):
        GraphConvLayer(4, graphs=("temporal",))
    with pytest.raises(StrgError):
        SpaceTimeGCN(4, fusion="late")
    with pytest.raises(StrgError):
        SpaceTimeGCN(4, layers=0)


def test_losses_equal_torch_functional():
    torch.manual_seed(8)
    logits = torch.randn(3, 5)
    labels = torch.tensor([4, 0, 2])
    torch.testing.assert_close(
        classification_loss(logits, labels, multi_label=False), nn.functional.cross_entropy(logits, labels)
    )
    targets = (torch.rand(3, 5) > 0.5).float()
    torch.testing.assert_close(
        classification_loss(logits, targets, multi_label=True),
        nn.functional.binary_cross_entropy_with_logits(logits, targets),
    )
    with pytest.raises(StrgError, match="expected shape"):
        classification_loss(logits, targets, multi_label=False)
    with pytest.raises(StrgError, match="expected shape"):
        classification_loss(logits, labels, multi_label=True)
    with pytest.raises(StrgError, match="integer"):
        classification_loss(logits, labels.float(), multi_label=False)


@pytest.mark.parametrize("fusion", ["sum", "towers"])
def test_gcn_gradients_match_finite_differences(fusion):
    torch.manual_seed(9)
    gcn = SpaceTimeGCN(3, layers=2, fusion=fusion, residual=True).double()
    corner = torch.rand(2, 3, 2, 2, dtype=torch.float64) * 10
    boxes = torch.cat([corner, corner + 8], dim=-1)
    mask = torch.tensor(
        [[[True, True], [True, False], [True, True]], [[False, True], [True, True], [False, False]]]
    )
    forward, backward = space_time_graphs(boxes, mask)
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gcn(x, mask, forward, backward), (x,))


@pytest.mark.parametrize(("batch", "frames"), [(1, 1), (1, 2), (3, 1)])
def test_gcn_handles_single_clip_and_single_frame(batch, frames):
    torch.manual_seed(10)
    gcn = SpaceTimeGCN(4, layers=2)
    boxes = torch.tensor([0.0, 0.0, 5.0, 5.0]).expand(batch, frames, 2, 4)
    mask = torch.ones(batch, frames, 2, dtype=torch.bool)
    forward, backward = space_time_graphs(boxes, mask)
    out = gcn(torch.randn(batch, frames, 2, 4), mask, forward, backward)
    assert out.shape == (batch, frames, 2, 4) and torch.isfinite(out).all()


def test_towers_head_exports_and_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    from strg_deploy.export.onnx import ExportOptions, example_inputs, export_network
    from strg_deploy.models.strg import build_model

    torch.manual_seed(11)
    model = build_model(tiny(fusion="towers", residual=True, layer_norm=True).with_classes(["a", "b", "c"]))
    proto = export_network(model.eval(), "head", ExportOptions(max_batch=2))
    inputs = example_inputs(model, seed=3)["head"]
    (logits,) = ort.InferenceSession(proto.SerializeToString()).run(
        None, {k: v.numpy() for k, v in inputs.items()}
    )
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model.head(**inputs), rtol=1e-5, atol=1e-5)
