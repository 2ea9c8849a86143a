"""Model configuration: frozen dataclasses, named presets and a JSON round trip.

A checkpoint is ``model.safetensors`` with ``config.json`` beside it; every exported file records the
config it came from. Nothing here imports torch.

Presets:

- ``paper-r50``: the paper's configuration: 32 x 224 x 224 clips, the ResNet-50 I3D in the Kinetics
  layout, 512-d nodes, 3 graph-convolution layers, 50 proposals per frame from a ResNet-50-FPN RPN.
- ``small``: sized so an epoch of 2,000 clips trains in about 2 minutes on 2 CPU cores (BENCHMARKS.md).
- ``tiny``: for tests; a forward pass takes well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strg_deploy.errors import StrgError

KINETICS_MEAN = (0.4345, 0.4051, 0.3775)
KINETICS_STD = (0.2768, 0.2713, 0.2737)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Which blocks inflate their first convolution to 3 x 1 x 1 (bottleneck) or 3 x 3 x 3 (basic block):
# the Kinetics-pretrained I3D ResNet-50 layout of STRG.md, and the same pattern cut to R18/R34 lengths.
KINETICS_R50_INFLATE = ((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
DETECTORS = ("resnet50_fpn", "mobilenet_v3_large_fpn")
FUSIONS = ("sum", "towers")
ARCHITECTURES = ("strg", "i3d", "frame")
CONFIG_SCHEMA = 1


def alternating_inflate(blocks: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Inflation per stage: all of res2, then 1,0,1,0,... and 0,1,0 for the last (KINETICS_R50_INFLATE)."""
    pattern = []
    for stage, count in enumerate(blocks):
        start = 0 if stage == len(blocks) - 1 else 1
        pattern.append(tuple((start + i) % 2 if stage > 0 else 1 for i in range(count)))
    return tuple(pattern)


def _check_std(what: str, std: tuple[float, ...]) -> None:
    if not all(v > 0 for v in std):
        raise StrgError(f"{what} std must be positive (the graph divides by it), got {list(std)}")


@dataclass(frozen=True)
class BackboneConfig:
    """I3D ResNet backbone.

    The clip [B, 3, T, H, W] becomes reduced res5 features [B, out_dim, T / temporal_stride, H / 16, W / 16]:
    conv1 (stride 1, 2, 2), max-pool 1x3x3 (stride 1, 2, 2), res2, a temporal max-pool (stride 2) when
    ``temporal_pool`` > 0, res3 and res4 (stride 1, 2, 2), res5 (stride 1, optional spatial dilation),
    then a 1x1x1 convolution to ``out_dim`` channels.
    """

    depth: int = 50
    width: int = 64
    conv1_kernel: tuple[int, int, int] = (5, 7, 7)
    inflate: tuple[tuple[int, ...], ...] = KINETICS_R50_INFLATE
    temporal_pool: int = 2
    res5_dilation: int = 1
    out_dim: int = 512
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD

    @property
    def blocks(self) -> tuple[int, ...]:
        return STAGE_BLOCKS[self.depth]

    @property
    def bottleneck(self) -> bool:
        return self.depth >= 50

    @property
    def res5_channels(self) -> int:
        return self.width * 8 * (4 if self.bottleneck else 1)

    @property
    def temporal_stride(self) -> int:
        return 2 if self.temporal_pool > 0 else 1

    @property
    def spatial_stride(self) -> int:
        return 16

    def validate(self) -> None:
        if self.depth not in STAGE_BLOCKS:
            raise StrgError(f"backbone depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}")
        if tuple(len(s) for s in self.inflate) != self.blocks:
            raise StrgError(
                f"backbone inflate pattern has {[len(s) for s in self.inflate]} blocks per stage, "
                f"depth {self.depth} needs {list(self.blocks)}"
            )
        if self.width <= 0 or self.out_dim <= 0:
            raise StrgError("backbone width and out_dim must be positive")
        if min(self.conv1_kernel) < 1 or self.temporal_pool < 0 or self.res5_dilation < 1:
            raise StrgError(
                "backbone conv1_kernel sizes and res5_dilation must be positive, temporal_pool at least 0"
            )
        if not all(v in (0, 1) for stage in self.inflate for v in stage):
            raise StrgError("backbone inflate entries must be 0 or 1")
        _check_std("backbone", self.std)


@dataclass(frozen=True)
class ProposalConfig:
    """Region proposals: N boxes per sampled frame from a torchvision RPN (or given / precomputed boxes).

    ``num_boxes`` (N) is fixed per model: frames with fewer proposals are padded with zero boxes and a
    False in the mask. ``pre_nms_top_n`` is per FPN level.

    ``returned_layers`` picks the backbone stages that feed the FPN and ``anchor_sizes`` gives the anchor
    sizes of each FPN level (one tuple per level, the same count on every level, the FPN's extra pooled
    level included); empty means torchvision's detector (what COCO weights fit). Small frames need a finer
    grid: MobileNetV3's default levels have strides 32, 32, 64, i.e. 4 x 4 anchor positions on 112 px.
    """

    num_boxes: int = 50
    detector: str = "resnet50_fpn"
    pre_nms_top_n: int = 1000
    nms_threshold: float = 0.7
    score_threshold: float = 0.0
    min_size: float = 1.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    returned_layers: tuple[int, ...] = ()
    anchor_sizes: tuple[tuple[int, ...], ...] = ()

    def validate(self) -> None:
        if bool(self.returned_layers) and not self.anchor_sizes:
            raise StrgError("proposals: returned_layers needs anchor_sizes (one tuple per FPN level)")
        if self.anchor_sizes:
            levels = len(self.returned_layers) + 1 if self.returned_layers else None
            if levels is not None and len(self.anchor_sizes) != levels:
                raise StrgError(
                    f"proposals: {len(self.returned_layers)} returned layers make {levels} FPN levels "
                    f"(the extra pooled level included), but anchor_sizes has {len(self.anchor_sizes)}"
                )
            if len({len(sizes) for sizes in self.anchor_sizes}) != 1 or not all(
                size > 0 for sizes in self.anchor_sizes for size in sizes
            ):
                raise StrgError(
                    "proposals: anchor_sizes needs the same number of positive sizes on every level"
                )
        if self.num_boxes <= 0:
            raise StrgError(f"num_boxes must be positive, got {self.num_boxes}")
        if self.detector not in DETECTORS:
            raise StrgError(f"detector must be one of {list(DETECTORS)}, got {self.detector!r}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise StrgError(f"nms_threshold must be in (0, 1], got {self.nms_threshold}")
        if self.pre_nms_top_n <= 0:
            raise StrgError(f"pre_nms_top_n must be positive, got {self.pre_nms_top_n}")
        if not 0.0 <= self.score_threshold <= 1.0 or self.min_size < 0:
            raise StrgError("proposals: score_threshold must be in [0, 1] and min_size at least 0")
        _check_std("proposals", self.std)


@dataclass(frozen=True)
class HeadConfig:
    """Graph head: RoIAlign per feature frame (roi_size x roi_size average bins, then a max), the
    similarity graph and the forward/backward space-time graphs, ``layers`` graph convolutions of width
    ``BackboneConfig.out_dim``, pooling over valid nodes, fusion with the global pool, a classifier.

    ``fusion="sum"`` is the paper's form (each layer sums G_g X W_g over the three graphs);
    ``"towers"`` is the late fusion of the public reproduction (github.com/jd730/STRG): a similarity
    tower, Z = ReLU(G_sim X W), and a space-time tower, Z = ReLU(G_fwd X W_fwd) + ReLU(G_bwd X W_bwd)
    (a ReLU on each term), their outputs summed.
    """

    layers: int = 3
    roi_size: int = 7
    sampling_ratio: int = 2
    fusion: str = "sum"
    residual: bool = False
    layer_norm: bool = False
    dropout: float = 0.5

    def validate(self) -> None:
        if self.fusion not in FUSIONS:
            raise StrgError(f"head fusion must be one of {list(FUSIONS)}, got {self.fusion!r}")
        if self.layers < 1:
            raise StrgError(f"head needs at least one graph layer, got {self.layers}")
        if self.sampling_ratio < 1:
            raise StrgError("sampling_ratio must be explicit (>= 1): runtimes disagree on the adaptive 0")
        if self.roi_size < 1:
            raise StrgError(f"head roi_size must be positive, got {self.roi_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise StrgError(f"head dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes a model's weights and its input/output contract.

    Input clips are ``frames`` x ``size`` x ``size`` RGB, sampled evenly over ``span_seconds``.
    ``architecture`` is ``strg`` (backbone + proposals + graph head), ``i3d`` (the vanilla backbone
    with a global-pool classifier, the baseline and stage 1 of the two-stage recipe) or ``frame`` (the
    same ResNet with no temporal kernels on one frame at a time: the single-frame control of the study).
    """

    preset: str
    architecture: str = "strg"
    frames: int = 32
    size: int = 224
    span_seconds: float = 5.0
    classes: tuple[str, ...] = tuple(f"class_{i:03d}" for i in range(174))
    multi_label: bool = False
    backbone: BackboneConfig = BackboneConfig()
    proposals: ProposalConfig = ProposalConfig()
    head: HeadConfig = HeadConfig()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_frames(self) -> int:
        """T': time steps of the backbone's output (and frames the RPN sees per clip)."""
        return self.frames // self.backbone.temporal_stride

    @property
    def feature_size(self) -> int:
        """H' = W': spatial size of the backbone's output."""
        return self.size // self.backbone.spatial_stride

    @property
    def node_dim(self) -> int:
        return self.backbone.out_dim

    def validate(self) -> ModelConfig:
        if self.architecture not in ARCHITECTURES:
            raise StrgError(f"architecture must be one of {list(ARCHITECTURES)}, got {self.architecture!r}")
        self.backbone.validate()
        self.proposals.validate()
        self.head.validate()
        stride = self.backbone.temporal_stride
        if self.frames < stride or self.frames % stride:
            raise StrgError(f"frames must be a positive multiple of {stride}, got {self.frames}")
        if self.size % self.backbone.spatial_stride or self.size <= 0:
            raise StrgError(f"size must be a positive multiple of 16, got {self.size}")
        if not self.span_seconds > 0:
            raise StrgError(f"span_seconds must be positive, got {self.span_seconds}")
        if not self.classes:
            raise StrgError("a model needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            raise StrgError("class names must be unique")
        return self

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with top-level fields changed, validated."""
        return dataclasses.replace(self, **changes).validate()

    def with_classes(
        self, classes: list[str] | tuple[str, ...], multi_label: bool | None = None
    ) -> ModelConfig:
        """A copy for a dataset's class list (and label kind)."""
        label = self.multi_label if multi_label is None else multi_label
        return self.replace(classes=tuple(classes), multi_label=label)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["schema"] = CONFIG_SCHEMA
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output (plain JSON values). Unknown keys, a missing
        ``preset`` and a value that does not fit its field's annotation are errors naming the dotted field
        (``backbone.width: expected an integer, got "eight"``); other missing keys take their default."""
        if not isinstance(data, dict):
            raise StrgError(f"malformed model config: expected an object, got {_shown(data)}")
        data = dict(data)
        schema = data.pop("schema", CONFIG_SCHEMA)
        if schema != CONFIG_SCHEMA:
            raise StrgError(
                f"config schema {_shown(schema)} is not supported (this version reads {CONFIG_SCHEMA})"
            )
        try:
            return _build(cls, data, "").validate()
        except _ConfigValueError as err:
            raise StrgError(f"malformed model config: {err}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise StrgError(f"config is not valid JSON: {err}") from None
        except (ValueError, RecursionError) as err:  # integers of over 4300 digits, nesting too deep
            raise StrgError(f"config is not valid JSON: {type(err).__name__}: {str(err)[:80]}") from None
        if not isinstance(data, dict):
            raise StrgError("config JSON must be an object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write config.json atomically (temporary file, then rename)."""
        from strg_deploy.fileio import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise StrgError(f"cannot read model config {path}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise StrgError(
                f"model config {path} is not UTF-8 JSON text: {err.reason} at byte {err.start}"
            ) from None
        try:
            return cls.from_json(text)
        except StrgError as err:
            raise StrgError(f"{path}: {err}") from None


class _ConfigValueError(ValueError):
    """A JSON value that does not fit a config field (the message names the dotted field)."""


def _shown(value: Any, limit: int = 60) -> str:
    """A JSON value as the file would show it, cut to ``limit`` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Construct a (nested) frozen dataclass from plain JSON values, each checked against its field's
    annotation (lists become tuples); ``where`` is the dotted path of ``cls`` ("" at the top)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _ConfigValueError(f"unknown keys {unknown} in {where.rstrip('.') or 'the config'}")
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise _ConfigValueError(f"missing keys {[where + name for name in missing]}")
    return cls(**{name: _checked(value, hints[name], where + name) for name, value in data.items()})


def _expected(hint: Any) -> str:
    """Words for what an annotation accepts: ``a list of 3 integers``, ``an integer or null``..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return "an object"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}" if len(set(args)) == 1 else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]


def _plural(hint: Any) -> str:
    words = _expected(hint)
    for singular, plural in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
        if words == singular:
            return plural
    return words.replace("a list of", "lists of", 1) if words.startswith("a list of") else words


def _checked(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field annotated ``hint`` holds it (lists -> tuples, ints -> floats for float
    fields); _ConfigValueError naming ``where`` when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def wrong() -> _ConfigValueError:
        return _ConfigValueError(f"{where}: expected {_expected(hint)}, got {_shown(value)}")

    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise wrong()
        return _build(hint, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _checked(value, arg, where)
            except _ConfigValueError:
                continue
        raise wrong()
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise wrong()
        if len(args) == 2 and args[1] is Ellipsis:
            items = args[:1] * len(value)
        elif len(value) != len(args):
            raise wrong()
        else:
            items = args
        pairs = enumerate(zip(value, items, strict=True))
        return tuple(_checked(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong()
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise _ConfigValueError(f"{where}: expected a finite number, got {_shown(value)}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    raise TypeError(f"{where}: config fields of type {hint!r} are not supported")  # a bug here, not input


# A finer RPN grid for small frames: MobileNetV3 stages 2-4 feed the FPN (strides 8, 16, 32 plus the pooled
# 64), with anchors of 8-128 px. Measured on the synthetic benchmark at 112 px, ground-truth boxes that some
# anchor covers at IoU >= 0.5: 83 % (torchvision's default levels and 32-512 px anchors: 8 %). COCO
# weights do not fit this layout: it is for RPNs trained on the user's own boxes (`--task proposals`).
SMALL_FRAME_LAYERS = (2, 3, 4)
SMALL_FRAME_ANCHORS = ((8, 12, 16), (16, 24, 32), (32, 48, 64), (64, 96, 128))


def small_frame_rpn(num_boxes: int, pre_nms_top_n: int) -> ProposalConfig:
    """A MobileNetV3-Large-FPN RPN with the finer grid above, for frames of about 64-128 px."""
    return ProposalConfig(
        num_boxes=num_boxes,
        detector="mobilenet_v3_large_fpn",
        pre_nms_top_n=pre_nms_top_n,
        returned_layers=SMALL_FRAME_LAYERS,
        anchor_sizes=SMALL_FRAME_ANCHORS,
    )


def _paper_r50() -> ModelConfig:
    return ModelConfig(preset="paper-r50")


def _small() -> ModelConfig:
    blocks = STAGE_BLOCKS[18]
    return ModelConfig(
        preset="small",
        frames=16,
        size=112,
        span_seconds=4.0,
        classes=tuple(f"class_{i:03d}" for i in range(12)),
        backbone=BackboneConfig(
            depth=18, width=16, conv1_kernel=(1, 7, 7), inflate=alternating_inflate(blocks), out_dim=128
        ),
        proposals=small_frame_rpn(num_boxes=8, pre_nms_top_n=300),
        head=HeadConfig(layers=3, sampling_ratio=2, dropout=0.3),
    )


def _tiny() -> ModelConfig:
    blocks = STAGE_BLOCKS[18]
    return ModelConfig(
        preset="tiny",
        frames=8,
        size=64,
        span_seconds=2.0,
        classes=tuple(f"class_{i:03d}" for i in range(4)),
        backbone=BackboneConfig(
            depth=18, width=8, conv1_kernel=(3, 7, 7), inflate=alternating_inflate(blocks), out_dim=32
        ),
        proposals=small_frame_rpn(num_boxes=4, pre_nms_top_n=50),
        head=HeadConfig(layers=2, sampling_ratio=2, dropout=0.0),
    )


PRESETS = {"paper-r50": _paper_r50, "small": _small, "tiny": _tiny}


def preset(name: str) -> ModelConfig:
    """The named preset's config (see the module docstring)."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise StrgError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    return factory().validate()
