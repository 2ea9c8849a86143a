"""The I3D ResNet backbone: layout, parameter count, shapes, stages, input checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from strg_deploy.config import STAGE_BLOCKS, BackboneConfig, alternating_inflate, preset
from strg_deploy.errors import StrgError
from strg_deploy.models.backbone import Backbone, I3DResNet


def _r18(**changes) -> BackboneConfig:
    inflate = alternating_inflate(STAGE_BLOCKS[18])
    cfg = BackboneConfig(depth=18, width=8, conv1_kernel=(3, 7, 7), inflate=inflate)
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="module")
def r50() -> I3DResNet:
    torch.manual_seed(0)
    return I3DResNet(preset("paper-r50").backbone).eval()


def test_paper_r50_has_exactly_the_kinetics_parameter_count(r50):
    assert sum(p.numel() for p in r50.parameters()) == 27_223_872


def test_paper_r50_res5_shape_at_full_size():
    model = I3DResNet(preset("paper-r50").backbone).to("meta")
    out = model(torch.empty(1, 3, 32, 224, 224, device="meta"))
    assert tuple(out.shape) == (1, 2048, 16, 14, 14)


def test_paper_r50_runs_on_cpu_at_small_size(r50):
    with torch.no_grad():
        out = r50(torch.randn(1, 3, 4, 64, 64))
    assert tuple(out.shape) == (1, 2048, 2, 4, 4)
    assert torch.isfinite(out).all()


def test_kinetics_layout_kernels(r50):
    model = r50
    assert tuple(model.conv1.weight.shape) == (64, 3, 5, 7, 7)
    assert model.conv1.stride == (1, 2, 2) and model.conv1.padding == (2, 3, 3)
    for stage, pattern in enumerate(((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))):
        layer = getattr(model, f"layer{stage + 1}")
        assert [blk.conv1.kernel_size for blk in layer] == [(3, 1, 1) if i else (1, 1, 1) for i in pattern]
        assert all(blk.conv2.kernel_size == (1, 3, 3) for blk in layer)
    # torchvision "v1.5": the stride sits on the 3x3 convolution; res5 keeps stride 1.
    assert model.layer2[0].conv2.stride == (1, 2, 2) and model.layer2[0].conv1.stride == (1, 1, 1)
    assert model.layer4[0].conv2.stride == (1, 1, 1)
    assert model.layer4[0].downsample[0].stride == (1, 1, 1)


def test_basic_block_inflation():
    model = I3DResNet(_r18())
    assert [blk.conv1.kernel_size for blk in model.layer2] == [(3, 3, 3), (1, 3, 3)]
    assert [blk.conv1.kernel_size for blk in model.layer4] == [(1, 3, 3), (3, 3, 3)]
    assert all(blk.conv2.kernel_size == (1, 3, 3) for blk in model.layer3)
    assert model.layer1[0].downsample is None and model.layer4[0].downsample is not None


@pytest.mark.parametrize("name, expected", [("tiny", (2, 32, 4, 4, 4)), ("small", (1, 128, 8, 7, 7))])
def test_preset_backbone_shapes(name, expected):
    torch.manual_seed(0)
    cfg = preset(name)
    model = Backbone(cfg).eval()
    clip = torch.randint(0, 256, (expected[0], 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8)
    with torch.no_grad():
        out = model(clip)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == expected
    assert expected[1:] == (cfg.node_dim, cfg.feature_frames, cfg.feature_size, cfg.feature_size)


@pytest.mark.parametrize(
    "changes, frames, expected_t",
    [
        ({"temporal_pool": 2}, 8, 4),
        ({"temporal_pool": 3}, 8, 4),
        ({"temporal_pool": 3}, 6, 3),
        ({"temporal_pool": 0}, 6, 6),
        ({"res5_dilation": 2}, 4, 2),
    ],
)
def test_small_config_shapes(changes, frames, expected_t):
    torch.manual_seed(0)
    model = I3DResNet(_r18(**changes)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, frames, 48, 32))
    assert tuple(out.shape) == (2, 64, expected_t, 3, 2)


def test_named_stages_compose_to_forward():
    torch.manual_seed(0)
    for cfg in (_r18(), BackboneConfig(width=4, conv1_kernel=(3, 7, 7)), _r18(temporal_pool=0)):
        model = I3DResNet(cfg).eval()
        x = torch.randn(1, 3, 4, 32, 32)
        names = [name for name, _ in model.named_stages()]
        pool = ["pool2"] if cfg.temporal_pool else []
        assert names == ["conv1", "res2", *pool, "res3", "res4", "res5"]
        with torch.no_grad():
            y = x
            for _, stage in model.named_stages():
                y = stage(y)
            torch.testing.assert_close(y, model(x), rtol=0, atol=0)
        stage_params = sum(p.numel() for _, s in model.named_stages() for p in s.parameters())
        assert stage_params == sum(p.numel() for p in model.parameters())


def test_backbone_normalises_inside_the_graph():
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = Backbone(cfg).eval()
    clip = torch.randint(0, 256, (1, 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8)
    mean = torch.tensor(cfg.backbone.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(cfg.backbone.std).view(1, 3, 1, 1, 1)
    with torch.no_grad():
        expected = model.reduce(model.resnet((clip.float() / 255 - mean) / std))
        torch.testing.assert_close(model(clip), expected)
        torch.testing.assert_close(model.forward_normalised((clip.float() / 255 - mean) / std), expected)
    assert "mean" not in model.state_dict() and "reduce.bias" in model.state_dict()
    assert model.reduce.kernel_size == (1, 1, 1)


@pytest.mark.parametrize(
    "shape, expected_in_message",
    [
        ((1, 3, 6, 64, 64), "[1, 3, 6, 64, 64]"),
        ((1, 3, 8, 64, 48), "[1, 3, 8, 64, 48]"),
        ((1, 1, 8, 64, 64), "[1, 1, 8, 64, 64]"),
        ((3, 8, 64, 64), "[3, 8, 64, 64]"),
    ],
)
def test_bad_clip_shape_raises_with_both_shapes(shape, expected_in_message):
    model = Backbone(preset("tiny"))
    with pytest.raises(StrgError) as info:
        model(torch.zeros(shape, dtype=torch.uint8))
    message = str(info.value)
    assert "[B, 3, 8, 64, 64]" in message and expected_in_message in message


def test_bad_clip_dtype_raises():
    model = Backbone(preset("tiny"))
    with pytest.raises(StrgError, match="uint8.*float32"):
        model(torch.zeros(1, 3, 8, 64, 64))


def test_invalid_config_raises():
    cfg = preset("tiny")
    backbone = dataclasses.replace(cfg.backbone, inflate=((1,), (1,), (1,), (1,)))
    bad = dataclasses.replace(cfg, backbone=backbone)
    with pytest.raises(StrgError, match="inflate"):
        Backbone(bad)
