"""The whole model: STRG = rpn -> backbone -> head, the I3D baseline, weights on disk, the summary."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.config import preset
from strg_deploy.contract.networks import rpn_frames
from strg_deploy.errors import StrgError
from strg_deploy.models.backbone import Backbone
from strg_deploy.models.serialization import load_pretrained, save_pretrained
from strg_deploy.models.strg import I3D, STRG, SingleFrame, build_model
from strg_deploy.models.summary import summarize


@pytest.fixture(scope="module")
def tiny():
    return preset("tiny")


@pytest.fixture(scope="module")
def strg(tiny):
    torch.manual_seed(0)
    return STRG(tiny).eval()


def random_clip(cfg, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8, generator=g)


def test_rpn_frames_takes_every_stride_th_frame(tiny):
    clip = random_clip(tiny)
    frames = rpn_frames(clip, 2)
    assert frames.shape == (2 * tiny.feature_frames, 3, tiny.size, tiny.size)
    assert torch.equal(frames[tiny.feature_frames + 1], clip[1, :, 2])
    assert torch.equal(frames[3], clip[0, :, 6])


def test_forward_equals_rpn_then_backbone_then_head(strg, tiny):
    clip = random_clip(tiny)
    with torch.inference_mode():
        logits = strg(clip)
        proposals = strg.rpn(rpn_frames(clip, tiny.backbone.temporal_stride))
        shape = (2, tiny.feature_frames, tiny.proposals.num_boxes)
        boxes, mask = proposals.boxes.reshape(*shape, 4), proposals.mask.reshape(shape)
        chained = strg.head(strg.backbone(clip), boxes, mask)
    assert logits.shape == (2, tiny.num_classes)
    torch.testing.assert_close(logits, chained, rtol=0, atol=0)
    assert torch.isfinite(logits).all()


def test_given_boxes_skip_the_rpn(strg, tiny):
    calls = []
    hook = strg.rpn.register_forward_hook(lambda *_: calls.append(1))
    clip = random_clip(tiny, batch=1)
    boxes = torch.tensor([4.0, 4.0, 40.0, 40.0]).expand(1, tiny.feature_frames, tiny.proposals.num_boxes, 4)
    mask = torch.ones(1, tiny.feature_frames, tiny.proposals.num_boxes, dtype=torch.bool)
    try:
        with torch.inference_mode():
            logits = strg(clip, boxes, mask)
    finally:
        hook.remove()
    assert calls == [] and logits.shape == (1, tiny.num_classes)
    with pytest.raises(StrgError, match="both boxes and mask"):
        strg(clip, boxes)


def test_training_reaches_backbone_and_head_but_not_the_frozen_rpn(tiny):
    torch.manual_seed(0)
    model = STRG(tiny).train()
    assert not any(p.requires_grad for p in model.rpn.parameters())
    loss = model.loss(model(random_clip(tiny)), torch.tensor([1, 3]))
    loss.backward()
    assert all(p.grad is None for p in model.rpn.parameters())
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable), [
        n for n, p in trainable if p.grad is None
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("architecture", "fusion"), [("strg", "sum"), ("strg", "towers"), ("i3d", "sum")])
def test_trains_under_autocast(tiny, dtype, architecture, fusion):
    """Mixed precision (what `strg train` uses on CUDA, float16 with gradient scaling) runs forward and
    backward; autocast on the CPU follows the same casting rules, so this needs no GPU. The graph head's
    in-place products once mixed a float32 graph with float16 features here."""
    cfg = tiny.replace(architecture=architecture)
    cfg = cfg.replace(head=dataclasses.replace(cfg.head, fusion=fusion))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    clip = torch.randint(0, 256, (2, 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8)
    corner = torch.rand(2, cfg.feature_frames, cfg.proposals.num_boxes, 2) * cfg.size / 2
    boxes = torch.cat([corner, corner + cfg.size / 4], dim=-1)
    mask = torch.ones(boxes.shape[:-1], dtype=torch.bool)
    given = (boxes, mask) if architecture == "strg" else (None, None)
    with torch.autocast("cpu", dtype=dtype):
        logits = model(clip, *given)
    assert logits.dtype == dtype and logits.shape == (2, cfg.num_classes)
    model.loss(logits.float(), torch.tensor([0, 1])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_clip_shape_names_expected_and_actual(strg, tiny):
    clip = torch.zeros(1, 3, 7, tiny.size, tiny.size, dtype=torch.uint8)
    with pytest.raises(StrgError, match=r"\[B, 3, 8, 64, 64\].*\[1, 3, 7, 64, 64\]"):
        strg(clip)


def test_i3d_backbone_initialises_strg(tiny):
    torch.manual_seed(1)
    i3d = build_model(tiny.replace(architecture="i3d"))
    assert isinstance(i3d, I3D)
    strg = build_model(tiny)
    assert isinstance(strg, STRG)
    backbone_state = {
        k.removeprefix("backbone."): v for k, v in i3d.state_dict().items() if k.startswith("backbone.")
    }
    strg.backbone.load_state_dict(backbone_state, strict=True)
    clip = random_clip(tiny, batch=1)
    i3d.eval(), strg.eval()
    with torch.inference_mode():
        torch.testing.assert_close(strg.backbone(clip), i3d.backbone(clip))
        assert i3d(clip).shape == (1, tiny.num_classes)


def test_single_frame_control_has_no_temporal_kernels_and_ignores_frame_order(tiny):
    torch.manual_seed(0)
    model = build_model(tiny.replace(architecture="frame"))
    assert isinstance(model, SingleFrame)
    assert all(m.kernel_size[0] == 1 for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    clip = random_clip(tiny, batch=3)
    model.eval()
    with torch.no_grad():
        logits = model(clip)
        reversed_logits = model(clip.flip(2))
        one = model.frame_logits(clip[1, :, 3:4].unsqueeze(0))
        every = torch.stack([model.frame_logits(clip[1:2, :, t : t + 1]) for t in range(tiny.frames)])
    assert logits.shape == (3, tiny.num_classes)
    torch.testing.assert_close(reversed_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(every.mean(0)[0], logits[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one[0], every[3, 0], atol=1e-5, rtol=1e-5)
    model.train()  # training picks one frame per clip; BN and dropout held fixed to compare values
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d | torch.nn.Dropout):
            module.eval()
    torch.manual_seed(1)
    pick = torch.randint(tiny.frames, (3,))
    torch.manual_seed(1)
    with torch.no_grad():
        train_logits = model(clip)
        expected = model.frame_logits(clip[torch.arange(3), :, pick].unsqueeze(2))
    torch.testing.assert_close(train_logits, expected)
    assert not torch.allclose(train_logits, logits, atol=1e-3)


def test_losses_follow_the_label_kind(tiny):
    logits = torch.randn(3, tiny.num_classes)
    single = build_model(tiny).loss(logits, torch.tensor([0, 2, 1]))
    torch.testing.assert_close(single, torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 1])))
    multi_cfg = tiny.with_classes(tiny.classes, multi_label=True)
    targets = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]])
    multi = build_model(multi_cfg.replace(architecture="i3d")).loss(logits, targets)
    torch.testing.assert_close(multi, torch.nn.functional.binary_cross_entropy_with_logits(logits, targets))


def test_weights_round_trip(strg, tiny, tmp_path):
    save_pretrained(strg, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_pretrained(tmp_path / "run")
    assert loaded.cfg == tiny and not loaded.training
    clip = random_clip(tiny)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(clip), strg(clip), rtol=0, atol=0)


def test_weights_for_another_config_are_refused(strg, tmp_path):
    save_pretrained(strg, tmp_path / "run")
    other = preset("tiny").replace(classes=("a", "b"))
    with pytest.raises(
        StrgError,
        match=r"2 shape mismatch: head.classifier.weight \[4, 64\] vs model \[2, 64\]",
    ):
        load_pretrained(tmp_path / "run", cfg=other)
    with pytest.raises(StrgError, match="checkpoint folder not found"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "run" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StrgError, match="cannot read weights file .*model.safetensors"):
        load_pretrained(tmp_path / "run")


def test_paper_backbone_costs_153_gmacs():
    """The I3D-R50 trunk (conv1..res5) of the paper preset: 27,223,872 parameters, ~153 GMACs a clip."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        backbone = Backbone(preset("paper-r50"))
        clip = torch.zeros(1, 3, 32, 224, 224, dtype=torch.uint8)
        with FlopCounterMode(display=False) as counter:
            res5 = backbone.resnet(backbone.normalise(clip))
    assert tuple(res5.shape) == (1, 2048, 16, 14, 14)
    assert sum(p.numel() for p in backbone.resnet.parameters()) == 27_223_872
    assert counter.get_total_flops() / 2 == pytest.approx(152.47e9, rel=1e-3)


def test_summary_counts_add_up(tiny):
    summary = summarize(tiny)
    model = build_model(tiny)
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    by_stage = {(r.network, r.stage): r for r in summary.stages}
    assert by_stage[("backbone", "reduce")].output == [1, tiny.node_dim, 4, 4, 4]
    assert by_stage[("head", "classifier")].output == [1, tiny.num_classes]
    networks = {n.network: n for n in summary.networks}
    assert set(networks) == {"rpn", "backbone", "head"}
    backbone_stages = sum(r.flops for r in summary.stages if r.network == "backbone")
    assert backbone_stages == networks["backbone"].flops > 0
    trunk_params, _ = summary.trunk
    assert trunk_params == sum(p.numel() for p in model.backbone.resnet.parameters())


def test_summary_command_json(tiny):
    result = CliRunner().invoke(app, ["model", "summary", "--preset", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["preset"] == "tiny" and data["flop_convention"] == "a multiply-add counts as 2 FLOPs"
    assert data["total_params"] == sum(n["params"] for n in data["networks"])
