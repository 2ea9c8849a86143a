"""`strg export`: the three networks of an STRG checkpoint as ONNX files plus a manifest.

- ``rpn.onnx``: frames uint8 [F, 3, S, S] -> boxes float32 [F, N, 4], scores float32 [F, N], mask bool
  [F, N]. The traced part is :meth:`RegionProposer.candidates`; the batched NMS and the padding to N are
  standard ops appended by :func:`~strg_deploy.export.rpn_postprocess.append_nms_top_n`.
- ``backbone.onnx``: clip uint8 [B, 3, T, S, S] -> features float32 [B, d, T', H', W'].
- ``head.onnx``: features, boxes float32 [B, T', N, 4], mask bool [B, T', N] -> logits float32 [B, C],
  with the custom nodes ``strg::FrameRoIAlignMax`` and ``strg::SpaceTimeGraph`` and their function
  bodies (:mod:`~strg_deploy.export.function_bodies`); ``plain`` inlines the bodies.

Every network normalises its uint8 input inside the graph. The batch axis (F = B * T' for the RPN) is
dynamic up to ``max_batch`` clips. Export uses ``torch.onnx.export(dynamo=True, optimize=True)``: without
the optimiser a bias-free Conv3d is written with a malformed bias. Each file passes ``onnx.checker``'s
full check, and every custom node must have its body (the checker does not look). Files are written to a
temporary folder inside ``out`` (``.export-<pid>-*``) and moved in only when all of them are complete; a
failed export removes its folder, and each export removes the folders of exports whose process is gone
(killed before it could clean up).

Opsets 18 to 21 work end to end: torch's exporter writes 18 and later, and onnxruntime (1.32) has no
kernel for ``RoiAlign`` at opset 22, which the head's function body then uses.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from strg_deploy.contract.manifest import MANIFEST_FILE
from strg_deploy.contract.networks import NETWORKS, SPECS
from strg_deploy.contract.nodes import inline_functions
from strg_deploy.contract.reference import REFERENCE_FILE
from strg_deploy.errors import StrgError
from strg_deploy.export.function_bodies import attach_functions, missing_functions
from strg_deploy.export.manifest import build_manifest, write_manifest
from strg_deploy.export.reference import write_reference_sample
from strg_deploy.export.rpn_postprocess import CANDIDATE_OUTPUTS, append_nms_top_n
from strg_deploy.fileio import writable_folder
from strg_deploy.models.strg import STRG
from strg_deploy.processes import process_alive

MIN_OPSET = 18
MAX_OPSET = 21  # onnxruntime has no RoiAlign kernel for opset 22 (the head's function body)
DEFAULT_OPSET = 18
STAGING_PREFIX = ".export-"


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """``opset`` (18 to 21), ``max_batch`` (clips; the RPN takes ``max_batch * T'`` frames),
    ``external_data`` (weights in ``<network>.onnx.data`` beside each file), ``plain`` (functions
    inlined: no custom nodes)."""

    opset: int = DEFAULT_OPSET
    max_batch: int = 32
    external_data: bool = False
    plain: bool = False

    def validate(self) -> ExportOptions:
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise StrgError(f"--opset must be {MIN_OPSET} to {MAX_OPSET}, got {self.opset}")
        if self.max_batch < 1:
            raise StrgError(f"--max-batch must be at least 1, got {self.max_batch}")
        return self


class _Candidates(nn.Module):
    """frames uint8 [F, 3, S, S] -> (candidate_boxes [F, K, 4], candidate_scores [F, K],
    candidate_valid [F, K])."""

    def __init__(self, proposer: nn.Module):
        super().__init__()
        self.proposer = proposer

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.proposer.candidates(frames)


def _trace(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    batch: torch.export.Dim,
    opset: int,
) -> onnx.ModelProto:
    """torch.onnx.export (dynamo) with axis 0 of every input dynamic -> the ModelProto."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            optimize=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=tuple({0: batch} for _ in args),
            verbose=False,
        )
    proto = program.model_proto
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:  # the exporter falls back to its own opset when it cannot convert
        raise StrgError(f"torch's ONNX exporter wrote opset {written} where {opset} was asked for")
    return proto


def example_inputs(model: STRG, batch: int = 2, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Random inputs of every network for ``batch`` clips: {"rpn": {"frames"}, "backbone": {"clip"},
    "head": {"features", "boxes", "mask"}} (boxes are valid x1 < x2, y1 < y2 inside the frame)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    t, n, size = cfg.feature_frames, cfg.proposals.num_boxes, cfg.size
    corners = torch.rand(batch, t, n, 2, 2, generator=g) * size
    boxes = torch.cat([corners.amin(dim=3), corners.amax(dim=3) + 1.0], dim=-1).clamp(max=size)
    mask = torch.rand(batch, t, n, generator=g) > 0.25
    mask[:, :, 0] = True
    feature = cfg.feature_size
    return {
        "rpn": {"frames": torch.randint(0, 256, (batch * t, 3, size, size), dtype=torch.uint8, generator=g)},
        "backbone": {
            "clip": torch.randint(0, 256, (batch, 3, cfg.frames, size, size), dtype=torch.uint8, generator=g)
        },
        "head": {
            "features": torch.randn(batch, cfg.node_dim, t, feature, feature, generator=g),
            "boxes": boxes,
            "mask": mask,
        },
    }


def export_network(model: STRG, network: str, options: ExportOptions) -> onnx.ModelProto:
    """One network of ``model`` (eval mode) as a checked ModelProto (see the module docstring)."""
    options.validate()
    if network not in NETWORKS:
        raise StrgError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    model = model.eval()
    inputs = example_inputs(model)[network]
    frames_per_clip = model.cfg.feature_frames
    if network == "rpn":
        batch = torch.export.Dim("frames", min=1, max=options.max_batch * frames_per_clip)
        proto = _trace(
            _Candidates(model.rpn),
            tuple(inputs.values()),
            ["frames"],
            list(CANDIDATE_OUTPUTS),
            batch,
            options.opset,
        )
        append_nms_top_n(proto, model.rpn.num_boxes, model.rpn.nms_threshold)
    elif network == "backbone":
        batch = torch.export.Dim("batch", min=1, max=options.max_batch)
        spec = SPECS["backbone"]
        args = tuple(inputs[name] for name in spec.input_names)
        proto = _trace(
            model.backbone, args, list(spec.input_names), list(spec.output_names), batch, options.opset
        )
    else:
        batch = torch.export.Dim("batch", min=1, max=options.max_batch)
        spec = SPECS["head"]
        args = tuple(inputs[name] for name in spec.input_names)
        proto = _trace(
            model.head, args, list(spec.input_names), list(spec.output_names), batch, options.opset
        )
        attach_functions(proto)
        if options.plain:
            proto = inline_functions(proto)
    check_network(proto, network)
    return proto


def check_network(proto: onnx.ModelProto, network: str) -> None:
    """The contract's input and output names (:data:`~strg_deploy.contract.networks.SPECS`),
    ``onnx.checker`` (full check, with shape inference) and a body for every custom node."""
    spec = SPECS[network]
    initializers = {i.name for i in proto.graph.initializer}
    inputs = tuple(i.name for i in proto.graph.input if i.name not in initializers)
    outputs = tuple(o.name for o in proto.graph.output)
    if (inputs, outputs) != (spec.input_names, spec.output_names):
        raise StrgError(
            f"{network}.onnx has inputs {inputs} and outputs {outputs}; the contract says "
            f"{spec.input_names} and {spec.output_names}"
        )
    missing = missing_functions(proto)
    if missing:
        raise StrgError(f"{network}.onnx: custom node(s) {', '.join(missing)} have no function body")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        first = str(err).strip().splitlines()[0]
        raise StrgError(f"{network}.onnx fails onnx.checker: {first}") from None


def _save(proto: onnx.ModelProto, path: Path, external_data: bool) -> list[Path]:
    """Write ``proto`` to ``path`` (and ``path.data`` with external data); returns the files written."""
    if external_data:
        onnx.save_model(
            proto,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
            size_threshold=1024,
        )
        data = path.with_name(f"{path.name}.data")
        return [path, data] if data.exists() else [path]
    onnx.save_model(proto, path)
    return [path]


def check_out(out: str | Path) -> Path:
    """Raise StrgError unless ``out`` is a folder this process may write in, or a path where one can be
    created (:func:`strg_deploy.fileio.writable_folder`). Returns ``out`` as a Path."""
    return writable_folder(Path(out))


def _staging_pid(name: str) -> int | None:
    """The process id in a staging folder's name ``.export-<pid>-<random>`` (None if it has none)."""
    head = name[len(STAGING_PREFIX) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def remove_stale_staging(out: str | Path) -> list[Path]:
    """Remove the staging folders in ``out`` left by exports that were killed: ``.export-<pid>-*`` whose
    process is gone, and ``.export-*`` without a process id (from versions that wrote none). Folders of
    running exports stay. Returns the folders removed."""
    removed = []
    for path in sorted(Path(out).glob(f"{STAGING_PREFIX}*")):
        pid = _staging_pid(path.name)
        if not path.is_dir() or (pid is not None and process_alive(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def export_model(
    model: STRG,
    out: str | Path,
    options: ExportOptions = ExportOptions(),
    on_network=None,
    videos: Sequence[str | Path] = (),
) -> dict:
    """Export the three networks of ``model`` to ``out`` (rpn.onnx, backbone.onnx, head.onnx, the
    reference sample reference.npz and manifest.json) and return the manifest. ``on_network(name)`` is
    called before each network (and with "reference" before the sample). The reference sample holds the
    test clip of ``videos[0]`` (a synthetic clip without videos) and a synthetic clip, with the torch
    model's outputs on them (:mod:`strg_deploy.export.reference`).

    ``out`` is checked first (:func:`check_out`). All files are written to a temporary folder inside
    ``out`` (``.export-<pid>-*``, removed whether the export succeeds or fails; those of killed exports
    are removed by the next one); only when every network exported and checked are they moved into
    ``out`` (the manifest last), so a failed export leaves a previous one intact.
    """
    if not isinstance(model, STRG):
        architecture = getattr(getattr(model, "cfg", None), "architecture", type(model).__name__)
        raise StrgError(
            f"strg export takes an STRG checkpoint (its three networks); this one is {architecture!r}"
        )
    options.validate()
    out = check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    except OSError as err:
        raise StrgError(f"cannot write to {out}: {err.strerror}") from None
    try:
        written: dict[str, list[Path]] = {}
        protos: dict[str, onnx.ModelProto] = {}
        for network in NETWORKS:
            if on_network is not None:
                on_network(network)
            proto = export_network(model, network, options)
            protos[network] = proto
            written[network] = _save(proto, staging / f"{network}.onnx", options.external_data)
        manifest = build_manifest(model.cfg, protos, written, options)
        if on_network is not None:
            on_network("reference")
        manifest["reference"] = write_reference_sample(model, staging, videos)
        write_manifest(staging / MANIFEST_FILE, manifest)
        os.replace(staging / REFERENCE_FILE, out / REFERENCE_FILE)
        for files in written.values():
            for file in files:
                os.replace(file, out / file.name)
        stale = [out / f"{n}.onnx.data" for n in NETWORKS] if not options.external_data else []
        for file in stale:
            file.unlink(missing_ok=True)
        os.replace(staging / MANIFEST_FILE, out / MANIFEST_FILE)
    except OSError as err:
        raise StrgError(f"cannot write the export to {out}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
