"""Parameters, FLOPs and output shapes per stage of a model, from one forward pass on a random clip.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as 2 FLOPs
(the literature's "153 GFLOPs" for I3D-R50 are multiply-adds: GMACs here). Only matrix products and
convolutions are counted: NMS, the IoU arithmetic of the graphs and elementwise ops count as 0; RoIAlign
counts as the matrix product it runs as.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from strg_deploy.config import ModelConfig
from strg_deploy.models.strg import STRG, build_model


def _baddbmm_flops(self_shape, a_shape, b_shape, *args, **kwargs) -> int:
    batch, rows, inner = a_shape
    return 2 * batch * rows * b_shape[-1] * inner


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, also counting the in-place ``baddbmm_`` (missing from its registry) that the
    graph layers use for the space-time terms."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.baddbmm_: _baddbmm_flops})


# (network, stage, module paths inside the model whose FLOPs and parameters make up the stage);
# the stage's output shape is that of its last module.
BACKBONE_STAGES = [
    ("backbone", "conv1", ["backbone.resnet.conv1", "backbone.resnet.bn1", "backbone.resnet.maxpool"]),
    ("backbone", "res2", ["backbone.resnet.layer1"]),
    ("backbone", "pool2", ["backbone.resnet.pool2"]),
    ("backbone", "res3", ["backbone.resnet.layer2"]),
    ("backbone", "res4", ["backbone.resnet.layer3"]),
    ("backbone", "res5", ["backbone.resnet.layer4"]),
    ("backbone", "reduce", ["backbone.reduce"]),
]
STRG_STAGES = [
    ("rpn", "detector + FPN", ["rpn.backbone"]),
    ("rpn", "RPN head", ["rpn.head"]),
    *BACKBONE_STAGES,
    ("head", "graph convolutions", ["head.gcn"]),
    ("head", "classifier", ["head.classifier"]),
]
I3D_STAGES = [*BACKBONE_STAGES, ("classifier", "classifier", ["classifier"])]


@dataclass(frozen=True)
class StageRow:
    network: str
    stage: str
    params: int
    flops: int
    output: list[int] | None


@dataclass(frozen=True)
class NetworkRow:
    network: str
    params: int
    flops: int
    inputs: str
    outputs: str


@dataclass(frozen=True)
class ModelSummary:
    """Per-stage and per-network counts for ``batch`` clips (FLOPs for that batch)."""

    preset: str
    architecture: str
    batch: int
    stages: list[StageRow]
    networks: list[NetworkRow]

    @property
    def trunk(self) -> tuple[int, int]:
        """(parameters, FLOPs) of the backbone from conv1 through res5: the I3D ResNet without the
        channel reduction (STRG.md: 27,223,872 parameters and about 153 GMACs for paper-r50)."""
        rows = [r for r in self.stages if r.network == "backbone" and r.stage != "reduce"]
        return sum(r.params for r in rows), sum(r.flops for r in rows)

    @property
    def total_params(self) -> int:
        return sum(n.params for n in self.networks)

    @property
    def total_flops(self) -> int:
        return sum(n.flops for n in self.networks)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["total_params"] = self.total_params
        data["total_flops"] = self.total_flops
        data["trunk_params"], data["trunk_flops"] = self.trunk
        data["flop_convention"] = "a multiply-add counts as 2 FLOPs"
        return data

    def stage_table(self) -> Table:
        table = _table(f"{self.preset} ({self.architecture}), batch {self.batch}: per stage")
        for name, justify in (
            ("network", "left"),
            ("stage", "left"),
            ("params", "right"),
            ("GFLOPs", "right"),
            ("GMACs", "right"),
            ("output", "left"),
        ):
            table.add_column(name, justify=justify, no_wrap=True)
        for row in self.stages:
            shape = "x".join(map(str, row.output)) if row.output else "-"
            table.add_row(row.network, row.stage, f"{row.params:,}", _g(row.flops), _g(row.flops / 2), shape)
        params, flops = self.trunk
        table.add_row("backbone", "conv1..res5", f"{params:,}", _g(flops), _g(flops / 2), "", style="bold")
        return table

    def network_table(self) -> Table:
        table = _table("per network (the model contract)")
        for name, justify in (
            ("network", "left"),
            ("params", "right"),
            ("GFLOPs", "right"),
            ("inputs -> outputs", "left"),
        ):
            table.add_column(name, justify=justify)
        for row in self.networks:
            table.add_row(row.network, f"{row.params:,}", _g(row.flops), f"{row.inputs} -> {row.outputs}")
        table.add_row("total", f"{self.total_params:,}", _g(self.total_flops), "", style="bold")
        return table


def _table(title: str) -> Table:
    from rich import box

    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))


def _g(flops: float) -> str:
    return f"{flops / 1e9:.2f}"


def _shape(out: object) -> list[int] | None:
    """Shape of a module's output; for a tuple, list or dict of outputs (FPN levels), of the first."""
    if isinstance(out, dict):
        out = next(iter(out.values()), None)
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    return list(out.shape) if isinstance(out, torch.Tensor) else None


def _flops_under(counts: dict[str, dict], root: str, path: str) -> int:
    return sum(counts.get(f"{root}.{path}", {}).values())


def _params(model: nn.Module, paths: list[str]) -> int:
    modules = dict(model.named_modules())
    return sum(p.numel() for path in paths if path in modules for p in modules[path].parameters())


def summarize(cfg: ModelConfig, batch: int = 1, seed: int = 0) -> ModelSummary:
    """Run the model ``cfg`` describes once on a random uint8 clip [batch, 3, T, H, W] and count."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    spec = STRG_STAGES if isinstance(model, STRG) else I3D_STAGES
    modules = dict(model.named_modules())
    outputs: dict[str, list[int]] = {}
    hooks = []
    for _, _, paths in spec:
        last = paths[-1]
        if last in modules:
            hook = modules[last].register_forward_hook(
                lambda _m, _i, out, key=last: outputs.__setitem__(key, _shape(out))
            )
            hooks.append(hook)
    clip = torch.randint(0, 256, (batch, 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8)
    with torch.inference_mode(), flop_counter() as counter:
        logits = model(clip)
    for hook in hooks:
        hook.remove()
    counts = counter.get_flop_counts()
    root = type(model).__name__

    stages = [
        StageRow(
            network,
            stage,
            _params(model, paths),
            sum(_flops_under(counts, root, p) for p in paths),
            outputs.get(paths[-1]),
        )
        for network, stage, paths in spec
        if paths[-1] in modules
    ]
    for network in ("rpn", "backbone", "head"):
        rest = _flops_under(counts, root, network) - sum(r.flops for r in stages if r.network == network)
        if network in modules and rest > 0:
            label = {"rpn": "anchors, NMS", "backbone": "normalisation", "head": "RoIAlign, graphs, pooling"}
            index = max(i for i, r in enumerate(stages) if r.network == network) + 1
            stages.insert(index, StageRow(network, label[network], 0, rest, None))
    T, S, N = cfg.frames, cfg.size, cfg.proposals.num_boxes
    Tf = cfg.feature_frames
    contract = {
        "rpn": (
            f"frames uint8 [{batch * Tf}, 3, {S}, {S}]",
            f"boxes [{batch * Tf}, {N}, 4], scores [{batch * Tf}, {N}], mask [{batch * Tf}, {N}]",
        ),
        "backbone": (f"clip uint8 [{batch}, 3, {T}, {S}, {S}]", f"features {outputs['backbone.reduce']}"),
        "head": (
            f"features, boxes [{batch}, {Tf}, {N}, 4], mask [{batch}, {Tf}, {N}]",
            f"logits {_shape(logits)}",
        ),
        "classifier": (f"features {outputs['backbone.reduce']}", f"logits {_shape(logits)}"),
    }
    networks = []
    for name, (inputs, outs) in contract.items():
        if name not in modules:
            continue
        networks.append(
            NetworkRow(name, _params(model, [name]), _flops_under(counts, root, name), inputs, outs)
        )
    return ModelSummary(cfg.preset, cfg.architecture, batch, stages, networks)
