"""The I3D ResNet backbone (Kinetics layout) and the contract network ``backbone``.

:class:`I3DResNet` maps a normalised clip float32 [B, 3, T, H, W] to res5 features
[B, C5, T / temporal_stride, H / 16, W / 16]:

========  =====================================================================================
conv1     Conv3d kernel ``conv1_kernel`` (temporal padding k // 2), stride (1, 2, 2), BN, ReLU,
          then max-pool 1x3x3, stride (1, 2, 2), padding (0, 1, 1)
res2      ``layer1``, stride 1
pool2     max-pool over time, kernel (``temporal_pool``, 1, 1), stride (2, 1, 1), padding
          ((k - 1) // 2, 0, 0), so an even T halves exactly (absent when ``temporal_pool`` is 0)
res3      ``layer2``, stride (1, 2, 2) on the 3x3 convolution (torchvision's "v1.5" ResNet)
res4      ``layer3``, stride (1, 2, 2)
res5      ``layer4``, stride 1, spatial dilation ``res5_dilation``
========  =====================================================================================

Blocks: depth 50 uses bottlenecks (expansion 4): conv1 3x1x1 where ``inflate`` says 1 (else 1x1x1),
conv2 1x3x3, conv3 1x1x1. Depth 18/34 use basic blocks (expansion 1): conv1 3x3x3 where ``inflate``
says 1 (else 1x3x3), conv2 1x3x3. A 1x1x1 convolution + BN (``downsample``) projects the shortcut
when the block changes shape. Module names follow torchvision's ResNet (``conv1``, ``bn1``,
``layer1``..``layer4``, ``downsample.0``/``.1``), so a 2D torchvision state dict maps key for key.

Dilation of res5 follows torchvision's ``replace_stride_with_dilation``: the convolution that would
carry the stride in a 2D ResNet (conv2 of a bottleneck, conv1 of a basic block) keeps dilation 1 in
the stage's first block, every other 3x3 convolution of the stage is dilated. With dilation 2 the
stage computes what the strided 2D stage computes, densely.

With depth 50, width 64 and the Kinetics inflation pattern, conv1 through res5 hold exactly
27,223,872 parameters, and a 32 x 224 x 224 clip gives 2048 x 16 x 14 x 14.

:class:`Backbone` is the network the model contract calls ``backbone``: uint8 clip -> reduced res5.
"""

from __future__ import annotations

import torch
from torch import nn

from strg_deploy.config import BackboneConfig, ModelConfig
from strg_deploy.errors import StrgError, shape_error


def _conv(
    cin: int,
    cout: int,
    kernel: tuple[int, int, int],
    stride: int = 1,
    dilation: int = 1,
) -> nn.Conv3d:
    """Conv3d without bias, spatial stride ``stride``, same-size padding, spatial ``dilation``."""
    kt, kh, kw = kernel
    return nn.Conv3d(
        cin,
        cout,
        kernel,
        stride=(1, stride, stride),
        padding=(kt // 2, dilation * (kh // 2), dilation * (kw // 2)),
        dilation=(1, dilation, dilation),
        bias=False,
    )


class BasicBlock3d(nn.Module):
    """Basic residual block: conv1 3x3x3 (inflated) or 1x3x3, conv2 1x3x3; expansion 1.

    x [B, inplanes, T, H, W] -> [B, planes, T, H / stride, W / stride].
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        inflate: bool = True,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, (3 if inflate else 1, 3, 3), stride, first_dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv(planes, planes, (1, 3, 3), 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck3d(nn.Module):
    """Bottleneck block: conv1 3x1x1 (inflated) or 1x1x1, conv2 1x3x3 (carries the stride), conv3
    1x1x1; expansion 4.

    x [B, inplanes, T, H, W] -> [B, 4 * planes, T, H / stride, W / stride].
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        inflate: bool = True,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, (3 if inflate else 1, 1, 1))
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv(planes, planes, (1, 3, 3), stride, first_dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = _conv(planes, planes * self.expansion, (1, 1, 1))
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def make_stage(
    block: type[BasicBlock3d] | type[Bottleneck3d],
    inplanes: int,
    planes: int,
    inflate: tuple[int, ...],
    stride: int = 1,
    dilation: int = 1,
) -> nn.Sequential:
    """One residual stage of ``len(inflate)`` blocks; the first carries the stride (and the projection).

    In a dilated stage the first block's strided convolution keeps dilation 1 (see the module docstring).
    """
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(
            nn.Conv3d(inplanes, out, 1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(out)
        )
    blocks = []
    for i, inflated in enumerate(inflate):
        blocks.append(
            block(
                inplanes if i == 0 else out,
                planes,
                stride=stride if i == 0 else 1,
                inflate=bool(inflated),
                dilation=dilation,
                first_dilation=1 if i == 0 else dilation,
                downsample=downsample if i == 0 else None,
            )
        )
    return nn.Sequential(*blocks)


class I3DResNet(nn.Module):
    """I3D ResNet, conv1 through res5, no classifier (layout in the module docstring).

    forward(x float32 [B, 3, T, H, W], normalised) -> res5 [B, cfg.res5_channels, T / cfg.temporal_stride,
    H / 16, W / 16] (T even when the temporal pool is on; H, W multiples of 16).
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        block = Bottleneck3d if cfg.bottleneck else BasicBlock3d
        kt, kh, kw = cfg.conv1_kernel
        width = cfg.width
        self.conv1 = nn.Conv3d(
            3, width, cfg.conv1_kernel, stride=(1, 2, 2), padding=(kt // 2, kh // 2, kw // 2), bias=False
        )
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        planes = [width, 2 * width, 4 * width, 8 * width]
        strides = [1, 2, 2, 1]
        dilations = [1, 1, 1, cfg.res5_dilation]
        inplanes = width
        for i in range(4):
            stage = make_stage(block, inplanes, planes[i], cfg.inflate[i], strides[i], dilations[i])
            self.add_module(f"layer{i + 1}", stage)
            inplanes = planes[i] * block.expansion
        k = cfg.temporal_pool
        self.pool2 = None
        if k > 0:
            self.pool2 = nn.MaxPool3d((k, 1, 1), stride=(2, 1, 1), padding=((k - 1) // 2, 0, 0))
        self.out_channels = inplanes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan out) convolutions, BN weight 1 and bias 0 (torchvision's initialisation)."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """The stages in order: conv1 (conv, BN, ReLU, max-pool), res2, pool2 (only when the temporal
        pool is on), res3, res4, res5. Applying them in sequence equals :meth:`forward`; the modules are
        shared with this network (for per-stage parameter and FLOP counts)."""
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        stages: list[tuple[str, nn.Module]] = [("conv1", stem), ("res2", self.layer1)]
        if self.pool2 is not None:
            stages.append(("pool2", self.pool2))
        stages += [("res3", self.layer2), ("res4", self.layer3), ("res5", self.layer4)]
        return stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        if self.pool2 is not None:
            x = self.pool2(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


class Backbone(nn.Module):
    """The contract network ``backbone``: clip uint8 [B, 3, T, H, W] -> features float32
    [B, cfg.backbone.out_dim, T', H', W'] with T' = cfg.feature_frames, H' = W' = cfg.feature_size.

    Inside the graph: x / 255, minus ``cfg.backbone.mean``, divided by ``cfg.backbone.std`` (per RGB
    channel), then :class:`I3DResNet` (``resnet``), then ``reduce``: a 1x1x1 convolution with bias from
    res5's channels to ``out_dim``. T must be ``cfg.frames`` and H = W = ``cfg.size``; the batch is free.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        bcfg = cfg.backbone
        self.frames = cfg.frames
        self.size = cfg.size
        self.out_dim = bcfg.out_dim
        self.register_buffer("mean", torch.tensor(bcfg.mean).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(bcfg.std).view(1, 3, 1, 1, 1), persistent=False)
        self.resnet = I3DResNet(bcfg)
        self.reduce = nn.Conv3d(bcfg.res5_channels, bcfg.out_dim, 1)
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.reduce.bias)

    def check_clip(self, x: torch.Tensor) -> None:
        """Raise StrgError unless x is [B, 3, frames, size, size] (the batch size is not checked)."""
        shape = tuple(x.shape)
        if len(shape) != 5 or shape[1] != 3 or shape[2] != self.frames or shape[3:] != (self.size, self.size):
            raise shape_error("backbone clip", f"[B, 3, {self.frames}, {self.size}, {self.size}]", shape)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in 0..255) [B, 3, T, H, W] -> float32 normalised clip."""
        return (x.float() / 255.0 - self.mean) / self.std

    def forward_normalised(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float clip [B, 3, T, H, W] -> features [B, out_dim, T', H', W'] (any float dtype)."""
        self.check_clip(x)
        # Channels-last 3D convolutions train 1.6x faster on the CPU (oneDNN) and suit cuDNN too;
        # the layout changes no value and exports as nothing.
        x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.reduce(self.resnet(x))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dtype != torch.uint8:
            dtype = str(clip.dtype).removeprefix("torch.")
            raise StrgError(f"backbone clip: expected dtype uint8, got {dtype}")
        self.check_clip(clip)
        return self.forward_normalised(self.normalise(clip))
