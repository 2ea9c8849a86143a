"""Starting weights: ImageNet 2D inflation, Kinetics checkpoints in MMAction2 and PySlowFast layouts."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

from strg_deploy.config import STAGE_BLOCKS, BackboneConfig, alternating_inflate, preset
from strg_deploy.errors import StrgError
from strg_deploy.models.backbone import Backbone, I3DResNet
from strg_deploy.models.weights import (
    inflate_2d_state_dict,
    load_imagenet_2d,
    load_kinetics_i3d,
    mmaction_to_ours,
    ours_to_mmaction,
    ours_to_slowfast,
    read_state_dict,
    slowfast_to_ours,
)

R18_INFLATE = alternating_inflate(STAGE_BLOCKS[18])


def _randomise_bn(model: nn.Module) -> None:
    """Random BN affine parameters and running statistics, so BN is not the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)


@pytest.fixture(scope="module")
def resnet18() -> torchvision.models.ResNet:
    """A torchvision ResNet-18 with random weights and random BN statistics, in eval mode."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    _randomise_bn(net)
    return net.eval()


def _stages_2d(net: torchvision.models.ResNet) -> list[nn.Module]:
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return [stem, net.layer1, net.layer2, net.layer3, net.layer4]


def _stages_3d(model: I3DResNet) -> list[nn.Module]:
    """conv1, res2 + pool2, res3, res4, res5: aligned with the 2D stem, layer1..layer4."""
    stages = dict(model.named_stages())
    return [stages["conv1"], nn.Sequential(stages["res2"], stages["pool2"])] + [
        stages[name] for name in ("res3", "res4", "res5")
    ]


def _run(stages: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for stage in stages:
            x = stage(x)
            outs.append(x)
    return outs


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    assert scale > 0.1
    assert (actual - expected).abs().max().item() <= 1e-4 * scale


def test_inflated_r18_keeps_the_2d_function_away_from_the_clip_ends(resnet18):
    """Real (zero) temporal padding: compare the time steps whose receptive field stays inside the clip.

    Temporal reach in input frames: conv1 (kt 5) +-2, res2 (two 3x3x3 blocks) +-2, pool2 maps feature
    step t to frames 2t, 2t + 1; res3, res4, res5 (one 3x3x3 block each) +-1 feature step each. So res4's
    step t sees frames [2t - 8, 2t + 9] and res5's [2t - 10, 2t + 11]: with T = 24, res4 is exact for
    t in 4..7 and res5 for t in 5..6. The 2D reference's layer4 runs at stride 1 like res5 (same weights,
    no dilation, as BackboneConfig.res5_dilation = 1).
    """
    net = copy.deepcopy(resnet18)
    net.layer4[0].conv1.stride = (1, 1)
    net.layer4[0].downsample[0].stride = (1, 1)
    cfg = BackboneConfig(depth=18, width=64, conv1_kernel=(5, 7, 7), inflate=R18_INFLATE)
    model = I3DResNet(cfg)
    model.load_state_dict(inflate_2d_state_dict(net.state_dict(), model), strict=True)
    model.eval()

    frame = torch.randn(1, 3, 32, 32)
    clip = frame.unsqueeze(2).expand(1, 3, 24, 32, 32).contiguous()
    ref = _run(_stages_2d(net), frame)
    out = _run(_stages_3d(model), clip)
    assert out[4].shape[2] == 12
    for stage, steps in ((0, range(2, 22)), (3, range(4, 8)), (4, range(5, 7))):
        for t in steps:
            _assert_close(out[stage][:, :, t], ref[stage])
    # The ends do see the zero padding: the comparison above is not vacuous.
    assert (out[4][:, :, 0] - ref[4]).abs().max() > 1e-2


def _replicate_time_padding(model: nn.Module) -> None:
    """Test-only: pad time by repeating the end frames instead of zeros, in every Conv3d."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d) and m.padding[0] > 0:
            pt = m.padding[0]
            m.padding = (0, *m.padding[1:])
            m.register_forward_pre_hook(
                lambda _m, args, pt=pt: (F.pad(args[0], (0, 0, 0, 0, pt, pt), mode="replicate"),)
            )


def test_inflated_r50_with_dilated_res5_matches_torchvision_dilated_resnet50():
    """Replicate temporal padding makes every time step exact. res5_dilation = 2 follows torchvision's
    replace_stride_with_dilation (the first block's 3x3 convolution keeps dilation 1)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
    _randomise_bn(net)
    net.eval()
    model = I3DResNet(BackboneConfig(res5_dilation=2))
    model.load_state_dict(inflate_2d_state_dict(net.state_dict(), model), strict=True)
    model.eval()
    assert model.layer4[0].conv2.dilation == (1, 1, 1) and model.layer4[1].conv2.dilation == (1, 2, 2)
    _replicate_time_padding(model)

    frame = torch.randn(1, 3, 64, 64)
    clip = frame.unsqueeze(2).expand(1, 3, 2, 64, 64).contiguous()
    ref = _run(_stages_2d(net), frame)
    out = _run(_stages_3d(model), clip)
    assert tuple(out[4].shape) == (1, 2048, 1, 4, 4)
    for stage in range(5):
        for t in range(out[stage].shape[2]):
            _assert_close(out[stage][:, :, t], ref[stage])


def test_inflation_divides_by_the_temporal_size(resnet18):
    net = resnet18
    model = I3DResNet(BackboneConfig(depth=18, width=64, conv1_kernel=(3, 7, 7), inflate=R18_INFLATE))
    state = inflate_2d_state_dict(net.state_dict(), model)
    w2d = net.state_dict()["conv1.weight"]
    assert tuple(state["conv1.weight"].shape) == (64, 3, 3, 7, 7)
    for t in range(3):
        torch.testing.assert_close(state["conv1.weight"][:, :, t], w2d / 3)
    w2d = net.state_dict()["layer2.1.conv1.weight"]
    torch.testing.assert_close(state["layer2.1.conv1.weight"][:, :, 0], w2d)
    assert "fc.weight" not in state


def test_inflation_rejects_a_state_dict_that_does_not_fit(resnet18):
    model = I3DResNet(BackboneConfig(depth=18, width=64, conv1_kernel=(3, 7, 7), inflate=R18_INFLATE))
    state = dict(resnet18.state_dict())
    del state["layer1.0.conv1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["bn1.weight"] = torch.zeros(3)
    with pytest.raises(StrgError) as info:
        inflate_2d_state_dict(state, model)
    message = str(info.value)
    assert "1 missing: layer1.0.conv1.weight" in message
    assert "1 unexpected: layer5.0.conv1.weight" in message
    assert "1 shape mismatch: bn1.weight [3] vs model [64]" in message
    with pytest.raises(StrgError, match="missing: layer1.0.conv3.weight"):
        inflate_2d_state_dict(resnet18.state_dict(), I3DResNet(SMALL_R50))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_imagenet_2d_from_file(tmp_path, suffix, resnet18):
    net = resnet18
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)
    cfg = dataclasses.replace(preset("tiny"), backbone=BackboneConfig(depth=18, inflate=R18_INFLATE))
    backbone = Backbone(cfg)
    report = load_imagenet_2d(backbone, path)
    assert report.layout == "torchvision-2d" and sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert report.loaded == len(net.state_dict()) - 2
    state = backbone.resnet.state_dict()
    key = "layer3.0.downsample.1.running_var"
    torch.testing.assert_close(state[key], net.state_dict()[key])
    torch.testing.assert_close(state["conv1.weight"].sum(2), net.state_dict()["conv1.weight"])


def test_read_state_dict_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(StrgError, match="nope.pth does not exist"):
        read_state_dict(missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(StrgError, match="cannot read weights file .*garbage.pth"):
        read_state_dict(garbage)
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(StrgError, match="garbage.safetensors"):
        read_state_dict(bad_st)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(StrgError, match="holds no state dict"):
        read_state_dict(empty)
    with pytest.raises(StrgError, match="nope.pth"):
        load_kinetics_i3d(I3DResNet(BackboneConfig(width=4)), missing)


def test_read_state_dict_unwraps_checkpoints(tmp_path):
    tensors = {"a.weight": torch.ones(2), "b.bias": torch.zeros(1)}
    for i, wrapped in enumerate(
        [
            tensors,
            {"state_dict": tensors, "meta": {"epoch": 3}},
            {"model_state": tensors, "epoch": 3, "cfg": "yaml"},
            {"model": {f"module.{k}": v for k, v in tensors.items()}},
        ]
    ):
        path = tmp_path / f"ckpt{i}.pyth"
        torch.save(wrapped, path)
        got = read_state_dict(path)
        assert set(got) == set(tensors)
        torch.testing.assert_close(got["a.weight"], tensors["a.weight"])


# ------------------------------------------------------------------------- Kinetics checkpoints

SMALL_R50 = BackboneConfig(width=4, conv1_kernel=(5, 7, 7))


def _random_model(cfg: BackboneConfig, seed: int) -> I3DResNet:
    torch.manual_seed(seed)
    model = I3DResNet(cfg)
    _randomise_bn(model)
    return model


def _mmaction_checkpoint(model: I3DResNet) -> dict:
    state = {ours_to_mmaction(k): v.clone() for k, v in model.state_dict().items()}
    state["cls_head.fc_cls.weight"] = torch.randn(400, model.out_channels)
    state["cls_head.fc_cls.bias"] = torch.randn(400)
    return {"meta": {"epoch": 100, "mmaction_version": "1.2.0"}, "state_dict": state}


def _slowfast_checkpoint(model: I3DResNet) -> dict:
    state = {
        ours_to_slowfast(k): v.clone()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")  # Caffe2-converted checkpoints carry none
    }
    state["head.projection.weight"] = torch.randn(400, model.out_channels)
    state["head.projection.bias"] = torch.randn(400)
    return {"epoch": 196, "model_state": state, "cfg": "MODEL:\n  ARCH: i3d\n"}


def test_public_key_names():
    assert ours_to_mmaction("conv1.weight") == "backbone.conv1.conv.weight"
    assert ours_to_mmaction("bn1.running_mean") == "backbone.conv1.bn.running_mean"
    assert ours_to_mmaction("layer1.0.bn1.running_mean") == "backbone.layer1.0.conv1.bn.running_mean"
    assert ours_to_mmaction("layer1.0.downsample.0.weight") == "backbone.layer1.0.downsample.conv.weight"
    assert ours_to_mmaction("layer3.5.downsample.1.bias", prefix="") == "layer3.5.downsample.bn.bias"
    assert ours_to_slowfast("conv1.weight") == "s1.pathway0_stem.conv.weight"
    assert ours_to_slowfast("bn1.running_var") == "s1.pathway0_stem.bn.running_var"
    assert ours_to_slowfast("layer1.0.downsample.0.weight") == "s2.pathway0_res0.branch1.weight"
    assert ours_to_slowfast("layer1.0.downsample.1.bias") == "s2.pathway0_res0.branch1_bn.bias"
    assert ours_to_slowfast("layer4.2.conv3.weight") == "s5.pathway0_res2.branch2.c.weight"
    assert ours_to_slowfast("layer2.1.bn2.weight") == "s3.pathway0_res1.branch2.b_bn.weight"
    key = "backbone.layer2.3.conv2.bn.num_batches_tracked"
    assert mmaction_to_ours(key) == "layer2.3.bn2.num_batches_tracked"
    assert mmaction_to_ours("layer2.3.conv2.conv.weight") == "layer2.3.conv2.weight"
    assert mmaction_to_ours("cls_head.fc_cls.weight") is None
    assert slowfast_to_ours("s4.pathway0_res5.branch2.a_bn.running_mean") == "layer3.5.bn1.running_mean"
    assert slowfast_to_ours("s2.pathway0_res0.branch1.weight") == "layer1.0.downsample.0.weight"
    assert slowfast_to_ours("head.projection.weight") is None
    assert slowfast_to_ours("s6.pathway0_res0.branch1.weight") is None


@pytest.mark.parametrize("layout", ["mmaction2", "pyslowfast"])
@pytest.mark.parametrize("cfg", [SMALL_R50, BackboneConfig(depth=18, width=4, inflate=R18_INFLATE)])
def test_kinetics_checkpoint_loads_exactly(tmp_path, layout, cfg):
    source = _random_model(cfg, seed=1)
    checkpoint = _mmaction_checkpoint(source) if layout == "mmaction2" else _slowfast_checkpoint(source)
    path = tmp_path / "i3d_r50_kinetics400.pth"
    torch.save(checkpoint, path)
    fresh = _random_model(cfg, seed=2)
    report = load_kinetics_i3d(fresh, path)
    assert report.layout == layout
    head = "cls_head.fc_cls" if layout == "mmaction2" else "head.projection"
    assert report.ignored == (f"{head}.weight", f"{head}.bias")
    expected = source.state_dict()
    got = fresh.state_dict()
    for key, value in expected.items():
        if layout == "pyslowfast" and key.endswith("num_batches_tracked"):
            assert got[key].item() == 7  # absent from the file: the model's own value stays
        else:
            assert torch.equal(got[key], value), key


def test_kinetics_checkpoint_in_safetensors_without_prefix(tmp_path):
    source = _random_model(SMALL_R50, seed=1)
    state = {ours_to_mmaction(k, prefix=""): v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "i3d.safetensors"
    save_file(state, str(path))
    backbone = Backbone(dataclasses.replace(preset("tiny"), backbone=SMALL_R50))
    report = load_kinetics_i3d(backbone, path)
    assert report.layout == "mmaction2" and report.ignored == ()
    assert torch.equal(backbone.resnet.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_kinetics_checkpoint_keys_that_do_not_fit_are_named(tmp_path):
    source = _random_model(SMALL_R50, seed=1)
    checkpoint = _mmaction_checkpoint(source)
    state = checkpoint["state_dict"]
    del state["backbone.layer2.1.conv2.conv.weight"]
    state["backbone.layer3.0.non_local_block.g.conv.weight"] = torch.zeros(1)
    state["backbone.conv1.conv.weight"] = torch.zeros(4, 3, 1, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(checkpoint, path)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    with pytest.raises(StrgError) as info:
        load_kinetics_i3d(source, path)
    message = str(info.value)
    assert str(path) in message
    assert "1 missing: backbone.layer2.1.conv2.conv.weight" in message
    assert "1 unexpected: backbone.layer3.0.non_local_block.g.conv.weight" in message
    assert "backbone.conv1.conv.weight [4, 3, 1, 7, 7] vs model [4, 3, 5, 7, 7]" in message
    assert all(torch.equal(before[k], v) for k, v in source.state_dict().items())  # nothing half-loaded

    slowfast = _slowfast_checkpoint(source)
    del slowfast["model_state"]["s3.pathway0_res0.branch1_bn.running_mean"]
    torch.save(slowfast, path)
    with pytest.raises(StrgError, match="1 missing: s3.pathway0_res0.branch1_bn.running_mean"):
        load_kinetics_i3d(source, path)


def test_kinetics_checkpoint_of_another_architecture_is_refused(tmp_path):
    r18 = _random_model(BackboneConfig(depth=18, width=4, inflate=R18_INFLATE), seed=1)
    path = tmp_path / "r18.pth"
    torch.save(_mmaction_checkpoint(r18), path)
    with pytest.raises(StrgError) as info:
        load_kinetics_i3d(I3DResNet(SMALL_R50), path)
    message = str(info.value)
    assert "missing: backbone.layer1.0.conv3.conv.weight" in message
    mismatch = "backbone.layer1.0.conv1.conv.weight [4, 4, 3, 3, 3] vs model [4, 4, 3, 1, 1]"
    assert f"shape mismatch: {mismatch}" in message


def test_unknown_layout_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.blocks.0.weight": torch.zeros(2)}, path)
    with pytest.raises(StrgError, match="cannot tell the checkpoint's key layout.*encoder.blocks.0.weight"):
        load_kinetics_i3d(I3DResNet(SMALL_R50), path)
