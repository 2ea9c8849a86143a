"""Weights to start the networks from, each read from a local file.

The I3D ResNet:

- :func:`load_imagenet_2d`: a 2D ImageNet ResNet state dict in torchvision's layout (resnet18/34/50),
  inflated: a 2D kernel [O, I, kh, kw] becomes [O, I, kt, kh, kw] = w / kt repeated kt times, so on a
  clip of identical frames the 3D network computes what the 2D network computes on the frame. BN
  parameters and statistics are copied; ``fc.*`` is dropped.
- :func:`load_kinetics_i3d`: a Kinetics-400 I3D ResNet checkpoint in MMAction2's or PySlowFast's key
  layout (detected from the keys), mapped to ours; classifier heads are ignored and reported.

The ``rpn`` network (:class:`~strg_deploy.models.proposals.RegionProposer`):

- :func:`load_detector_weights`: the backbone and RPN head of a torchvision Faster R-CNN state dict
  (ResNet-50-FPN or MobileNetV3-Large-FPN), keys mapped by :func:`detector_state_for_proposer`.

I3D key mapping (ours = torchvision's names; S = stage 1..4, B = block, N = conv 1..3, X = weight, bias,
running_mean, running_var, num_batches_tracked):

=======================  ===================================  ===========================================
ours                     MMAction2 (``ResNet3d``)             PySlowFast (``ResNet``, pathway 0)
=======================  ===================================  ===========================================
conv1.X                  backbone.conv1.conv.X                s1.pathway0_stem.conv.X
bn1.X                    backbone.conv1.bn.X                  s1.pathway0_stem.bn.X
layerS.B.convN.X         backbone.layerS.B.convN.conv.X       s{S+1}.pathway0_res{B}.branch2.{a,b,c}.X
layerS.B.bnN.X           backbone.layerS.B.convN.bn.X         s{S+1}.pathway0_res{B}.branch2.{a,b,c}_bn.X
layerS.B.downsample.0.X  backbone.layerS.B.downsample.conv.X  s{S+1}.pathway0_res{B}.branch1.X
layerS.B.downsample.1.X  backbone.layerS.B.downsample.bn.X    s{S+1}.pathway0_res{B}.branch1_bn.X
(ignored, classifier)    cls_head.*, data_preprocessor.*      head.*
=======================  ===================================  ===========================================

MMAction2 keys may also come without the ``backbone.`` prefix (a bare backbone state dict). Files are
read by :func:`read_state_dict`: ``.safetensors``, or a torch file (``.pth``, ``.pt``, ``.pyth``) read
with ``weights_only=True`` and unwrapped from ``{"state_dict": ...}`` (MMAction2), ``{"model_state": ...}``
(PySlowFast) or ``{"model": ...}``; a ``module.`` prefix on every key (DDP) is removed.

A ``num_batches_tracked`` buffer the file lacks keeps the model's value, one the model lacks is dropped.
Every other key that does not fit raises :class:`StrgError` listing the missing, unexpected and
mismatched keys (counts, and the first few of each, in the file's own names).

Note on depth 18/34: MMAction2's inflated basic block has a 3x3x3 second convolution where ours (and
PySlowFast's) is 1x3x3, so its R18/R34 checkpoints report shape mismatches here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from strg_deploy.errors import StrgError
from strg_deploy.models.backbone import Backbone, I3DResNet
from strg_deploy.models.proposals import RegionProposer
from strg_deploy.models.state_dicts import check_fit, fit_error, read_state_dict

MMACTION2 = "mmaction2"
PYSLOWFAST = "pyslowfast"
TORCHVISION_2D = "torchvision-2d"


@dataclass(frozen=True)
class LoadReport:
    """What a load did: the file's layout, how many tensors it set, which file keys it ignored."""

    layout: str
    loaded: int
    ignored: tuple[str, ...] = ()


def _resnet(model: nn.Module) -> I3DResNet:
    """The I3DResNet itself, also when given the Backbone that holds it."""
    if isinstance(model, Backbone):
        return model.resnet
    if not isinstance(model, I3DResNet):
        raise TypeError(f"expected an I3DResNet or a Backbone, got {type(model).__name__}")
    return model


def _is_step_counter(key: str) -> bool:
    return key.endswith(".num_batches_tracked")


# ----------------------------------------------------------------------------------- ImageNet 2D


def inflate_2d_state_dict(state_2d: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """A torchvision 2D ResNet state dict inflated to ``model``'s full state dict.

    A 2D kernel [O, I, kh, kw] becomes w / kt repeated over the model's temporal size kt; BN tensors are
    copied; ``fc.*`` is dropped. Spatial kernel sizes and every other shape must match exactly.
    Raises StrgError listing missing, unexpected and mismatched keys.
    """
    target = _resnet(model).state_dict()
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[str] = []
    unexpected = [k for k in state_2d if k not in target and not k.startswith("fc.")]
    for key, ref in target.items():
        if key not in state_2d:
            if _is_step_counter(key):
                out[key] = ref.clone()
            else:
                missing.append(key)
            continue
        w = state_2d[key]
        if ref.dim() == 5 and w.dim() == 4 and tuple(w.shape) == tuple(ref.shape[:2] + ref.shape[3:]):
            kt = ref.shape[2]
            out[key] = w.to(ref.dtype).unsqueeze(2).expand_as(ref) / kt
        elif w.shape == ref.shape:
            out[key] = w.to(ref.dtype).clone()
        else:
            mismatched.append(f"{key} {list(w.shape)} vs model {list(ref.shape)}")
    if missing or unexpected or mismatched:
        raise fit_error("2D ResNet state dict", missing, unexpected, mismatched)
    return out


def load_imagenet_2d(model: nn.Module, path: str | Path) -> LoadReport:
    """Initialise ``model`` (I3DResNet, or a Backbone's) from a torchvision 2D ResNet weights file."""
    resnet = _resnet(model)
    state_2d = read_state_dict(path)
    try:
        state = inflate_2d_state_dict(state_2d, resnet)
    except StrgError as err:
        raise StrgError(f"{path}: {err}") from None
    resnet.load_state_dict(state, strict=True)
    ignored = tuple(k for k in state_2d if k.startswith("fc."))
    return LoadReport(TORCHVISION_2D, len(state_2d) - len(ignored), ignored)


# ------------------------------------------------------------------------------- Kinetics 3D I3D

_MM_TO_OURS = [
    (re.compile(r"conv1\.conv\.(\w+)"), r"conv1.\1"),
    (re.compile(r"conv1\.bn\.(\w+)"), r"bn1.\1"),
    (re.compile(r"(layer\d+\.\d+)\.conv(\d)\.conv\.(\w+)"), r"\1.conv\2.\3"),
    (re.compile(r"(layer\d+\.\d+)\.conv(\d)\.bn\.(\w+)"), r"\1.bn\2.\3"),
    (re.compile(r"(layer\d+\.\d+)\.downsample\.conv\.(\w+)"), r"\1.downsample.0.\2"),
    (re.compile(r"(layer\d+\.\d+)\.downsample\.bn\.(\w+)"), r"\1.downsample.1.\2"),
]
_OURS_TO_MM = [
    (re.compile(r"conv1\.(\w+)"), r"conv1.conv.\1"),
    (re.compile(r"bn1\.(\w+)"), r"conv1.bn.\1"),
    (re.compile(r"(layer\d+\.\d+)\.conv(\d)\.(\w+)"), r"\1.conv\2.conv.\3"),
    (re.compile(r"(layer\d+\.\d+)\.bn(\d)\.(\w+)"), r"\1.conv\2.bn.\3"),
    (re.compile(r"(layer\d+\.\d+)\.downsample\.0\.(\w+)"), r"\1.downsample.conv.\2"),
    (re.compile(r"(layer\d+\.\d+)\.downsample\.1\.(\w+)"), r"\1.downsample.bn.\2"),
]
_BRANCH2 = {"a": "1", "b": "2", "c": "3"}
_CONV_INDEX = {v: k for k, v in _BRANCH2.items()}
_SF_STEM = re.compile(r"s1\.pathway0_stem\.(conv|bn)\.(\w+)")
_SF_BLOCK = re.compile(r"s(\d)\.pathway0_res(\d+)\.(branch1|branch1_bn|branch2\.([abc])(_bn)?)\.(\w+)")
_OURS_BLOCK = re.compile(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)\.(\w+)")


def _apply(rules: list[tuple[re.Pattern, str]], key: str) -> str | None:
    for pattern, replacement in rules:
        m = pattern.fullmatch(key)
        if m:
            return m.expand(replacement)
    return None


def mmaction_to_ours(key: str) -> str | None:
    """Our key for an MMAction2 ResNet3d key (with or without ``backbone.``); None if it has none."""
    return _apply(_MM_TO_OURS, key.removeprefix("backbone."))


def ours_to_mmaction(key: str, prefix: str = "backbone.") -> str:
    """MMAction2's key for one of ours (the inverse of :func:`mmaction_to_ours`)."""
    mapped = _apply(_OURS_TO_MM, key)
    if mapped is None:
        raise ValueError(f"no MMAction2 name for {key!r}")
    return prefix + mapped


def slowfast_to_ours(key: str) -> str | None:
    """Our key for a PySlowFast (single pathway) ResNet key; None if it has none."""
    m = _SF_STEM.fullmatch(key)
    if m:
        return f"{'conv1' if m[1] == 'conv' else 'bn1'}.{m[2]}"
    m = _SF_BLOCK.fullmatch(key)
    if not m or not 2 <= int(m[1]) <= 5:
        return None
    block = f"layer{int(m[1]) - 1}.{m[2]}"
    if m[3] == "branch1":
        return f"{block}.downsample.0.{m[6]}"
    if m[3] == "branch1_bn":
        return f"{block}.downsample.1.{m[6]}"
    kind = "bn" if m[5] else "conv"
    return f"{block}.{kind}{_BRANCH2[m[4]]}.{m[6]}"


def ours_to_slowfast(key: str) -> str:
    """PySlowFast's key for one of ours (the inverse of :func:`slowfast_to_ours`)."""
    for name, theirs in (("conv1.", "s1.pathway0_stem.conv."), ("bn1.", "s1.pathway0_stem.bn.")):
        if key.startswith(name) and key.count(".") == 1:
            return theirs + key.removeprefix(name)
    m = _OURS_BLOCK.fullmatch(key)
    if not m:
        raise ValueError(f"no PySlowFast name for {key!r}")
    block = f"s{int(m[1]) + 1}.pathway0_res{m[2]}"
    part = m[3]
    if part == "downsample.0":
        branch = "branch1"
    elif part == "downsample.1":
        branch = "branch1_bn"
    else:
        branch = f"branch2.{_CONV_INDEX[part[-1]]}{'_bn' if part.startswith('bn') else ''}"
    return f"{block}.{branch}.{m[4]}"


_IGNORED = {MMACTION2: ("cls_head.", "data_preprocessor."), PYSLOWFAST: ("head.",)}


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    """``"mmaction2"`` or ``"pyslowfast"`` from the keys; StrgError when neither fits."""
    keys = list(state)
    if any(k.startswith(("s1.pathway0_stem.", "s2.pathway0_res")) for k in keys):
        return PYSLOWFAST
    if any(re.match(r"(backbone\.)?(conv1|layer\d+\.\d+\.conv\d)\.conv\.weight$", k) for k in keys):
        return MMACTION2
    shown = ", ".join(keys[:5])
    raise StrgError(
        f"cannot tell the checkpoint's key layout (MMAction2 'backbone.conv1.conv.weight' or PySlowFast "
        f"'s1.pathway0_stem.conv.weight'); its first keys: {shown}"
    )


def map_kinetics_state_dict(
    state: Mapping[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """An MMAction2 or PySlowFast I3D state dict mapped to ``model``'s full state dict, and a report.

    Raises StrgError listing the keys that do not fit (in the file's names).
    """
    target = _resnet(model).state_dict()
    layout = detect_layout(state)
    to_ours: Callable[[str], str | None]
    if layout == MMACTION2:
        to_ours = mmaction_to_ours
        prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""

        def to_theirs(key: str) -> str:
            return ours_to_mmaction(key, prefix)
    else:
        to_ours, to_theirs = slowfast_to_ours, ours_to_slowfast
    out: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    mismatched: dict[str, str] = {}
    for key, value in state.items():
        ours = to_ours(key)
        if ours is None:
            (ignored if key.startswith(_IGNORED[layout]) else unexpected).append(key)
        elif ours not in target:
            if not _is_step_counter(ours):
                unexpected.append(key)
        elif value.shape != target[ours].shape:
            mismatched[ours] = f"{key} {list(value.shape)} vs model {list(target[ours].shape)}"
        else:
            out[ours] = value
    loaded = len(out)
    missing = []
    for key, ref in target.items():
        if key in out or key in mismatched:
            continue
        if _is_step_counter(key):
            out[key] = ref.clone()
        else:
            missing.append(to_theirs(key))
    if missing or unexpected or mismatched:
        raise fit_error(f"{layout} checkpoint", missing, unexpected, list(mismatched.values()))
    return out, LoadReport(layout, loaded, tuple(ignored))


def load_kinetics_i3d(model: nn.Module, path: str | Path) -> LoadReport:
    """Initialise ``model`` (I3DResNet, or a Backbone's) from a Kinetics I3D checkpoint file in
    MMAction2's or PySlowFast's layout; the report lists the classifier keys it ignored."""
    resnet = _resnet(model)
    checkpoint = read_state_dict(path)
    try:
        state, report = map_kinetics_state_dict(checkpoint, resnet)
    except StrgError as err:
        raise StrgError(f"{path}: {err}") from None
    resnet.load_state_dict(state, strict=True)
    return report


# ------------------------------------------------------------------------------- Faster R-CNN RPN


def _detector_kind(keys: Sequence[str]) -> str | None:
    if any(k.startswith("backbone.body.layer1.") for k in keys):
        return "resnet50_fpn"
    if any(k.startswith("backbone.body.0.0.") for k in keys):
        return "mobilenet_v3_large_fpn"
    return None


def _listing(keys: Sequence[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def detector_state_for_proposer(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision Faster R-CNN state dict -> RegionProposer's keys: ``backbone.*`` unchanged,
    ``rpn.head.*`` -> ``head.*`` (older ``rpn.head.conv.*`` -> ``head.conv.0.0.*``); ``roi_heads.*``
    and batch-norm ``num_batches_tracked`` counters are dropped."""
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("backbone."):
            mapped[key] = value
        elif key.startswith("rpn.head."):
            name = key[len("rpn.head.") :]
            if name in ("conv.weight", "conv.bias"):  # RPNHead before version 2
                name = "conv.0.0." + name.split(".")[1]
            mapped["head." + name] = value
    return mapped


def load_detector_weights(proposer: RegionProposer, path: str | Path) -> RegionProposer:
    """Load the backbone and RPN head of a torchvision Faster R-CNN state dict into ``proposer``.

    ``path``: a torch.save'd state dict (e.g. torchvision's ``fasterrcnn_resnet50_fpn_coco-*.pth``) or a
    .safetensors file, possibly wrapped in {"model": ...} or {"state_dict": ...}. Keys ``backbone.*``
    load into ``proposer.backbone``, ``rpn.head.*`` into ``proposer.head``; ``roi_heads.*`` and batch-norm
    ``num_batches_tracked`` counters are ignored. Loading is strict: a missing file, a detector of another
    type, missing, unexpected or mis-shaped keys raise StrgError naming them. Returns ``proposer``.
    """
    path = Path(path)
    state = read_state_dict(path)
    kind = _detector_kind(list(state))
    if kind is not None and kind != proposer.detector:
        raise StrgError(
            f"detector weights {path} are for {kind}, this model's detector is {proposer.detector} "
            f"(cfg.proposals.detector)"
        )
    mapped = detector_state_for_proposer(state)
    if not mapped:
        raise StrgError(
            f"detector weights {path} hold no Faster R-CNN backbone.* or rpn.head.* keys "
            f"({len(state)} keys: {_listing(list(state))})"
        )

    def in_file(key: str) -> str:  # name the keys as the detector's state dict does
        return "rpn." + key if key.startswith("head.") else key

    check_fit(f"detector weights {path} ({proposer.detector} RPN)", proposer.state_dict(), mapped, in_file)
    proposer.load_state_dict(mapped, strict=True)
    return proposer
