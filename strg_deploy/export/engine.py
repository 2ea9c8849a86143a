"""TensorRT engine builds: ``<network>.engine`` plus its sidecar for each network of an export.

:func:`build_engines` first checks that TensorRT (>= 10.9, for ``tensorrt.plugin.aot_impl``) and a CUDA
GPU are present (one StrgError line saying what is missing and how to install it), then for each network:

1. writes the TensorRT copy of its ONNX file into the engine folder (:mod:`.tensorrt_graph`);
2. parses it with ``trt.OnnxParser`` after importing the plugin registrations
   (``strg_deploy.plugins.registration``) and checks on the parsed network that every ``strg`` node
   became a plugin layer (``trt.LayerType.PLUGIN_V3``) and that no function body (its ``RoiAlign``) was
   imported instead;
3. builds with one optimisation profile over batch 1..max_batch clips (opt: a typical batch, by default
   min(4, max_batch)) and a timing cache kept in the engine folder (later builds reuse it);
4. writes ``<network>.engine`` (atomic rename) and ``<network>.engine.json``
   (:mod:`strg_deploy.contract.engines`).

Precision: fp32, or fp16. TensorRT 10 builds fp16 with ``BuilderFlag.FP16`` from the fp32 ONNX.
TensorRT 11 networks are strongly typed only (no FP16 flag): the fp16 precision must come from the ONNX
itself, which :func:`fp16_onnx_path` writes with :func:`strg_deploy.export.fp16.write_fp16_variant`.

An engine whose sidecar matches the TensorRT version, the GPU and the export is kept (``rebuild``
rebuilds it); one that does not match is refused with the sidecar check's line, before anything is built.

``tensorrt`` and ``cuda.bindings`` are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from strg_deploy.config import ModelConfig
from strg_deploy.contract.engines import (
    DEFAULT_MAX_BATCH,
    MIN_TENSORRT,
    MIN_TENSORRT_TEXT,
    PRECISIONS,
    TENSORRT_INSTALL,
    Gpu,
    Sidecar,
    check_engine,
    config_sha256,
    default_engine_dir,
    engine_path,
    export_files,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from strg_deploy.contract.manifest import read_manifest, verify_files
from strg_deploy.contract.networks import NETWORKS, SPECS, tensor_shapes
from strg_deploy.contract.nodes import DOMAIN
from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_path, writable_folder

INSTALL = TENSORRT_INSTALL

TIMING_CACHE = "timing.cache"
DEFAULT_OPT_BATCH = 4


# --- what is installed ---------------------------------------------------------------------------


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot build here (not installed, or older than :data:`MIN_TENSORRT`), or None."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return "TensorRT is not installed"
    except Exception as err:  # a broken install: missing libnvinfer, wrong CUDA
        return f"TensorRT does not load ({type(err).__name__}: {str(err).splitlines()[0][:80]})"
    version = getattr(trt, "__version__", "0")
    if _version_tuple(version)[:2] < MIN_TENSORRT:
        return f"TensorRT {version} is older than {MIN_TENSORRT_TEXT}"
    return None


def find_gpu(device: int = 0) -> Gpu | str:
    """The CUDA device ``device`` (name and compute capability) through cuda-python, or a short reason
    why there is none (cuda-python missing, no driver, no device)."""
    from strg_deploy.engines.cuda_memory import require_gpu

    try:
        info = require_gpu(device)
    except StrgError as error:
        return str(error)
    return Gpu(name=info.name, compute_capability=info.compute_capability)


def require_tensorrt(purpose: str = "strg engine build") -> tuple[Any, Gpu]:
    """(the ``tensorrt`` module, the GPU) or one StrgError line naming everything that is missing and how
    to install it. Call it before any other work."""
    problems = [p for p in (tensorrt_problem(),) if p]
    gpu = find_gpu()
    if isinstance(gpu, str):
        problems.append(gpu)
    if problems:
        raise StrgError(
            f"{purpose} needs TensorRT >= {MIN_TENSORRT_TEXT} and an NVIDIA GPU: "
            f"{'; '.join(problems)}. Install TensorRT with: {INSTALL}"
        )
    return importlib.import_module("tensorrt"), gpu  # type: ignore[return-value]


def _load_plugins() -> None:
    """Import the plugin registrations (they register on import) or raise one clear StrgError."""
    try:
        importlib.import_module("strg_deploy.plugins.registration")
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("strg_deploy.plugins"):
            raise
        raise StrgError(
            "this strg-deploy has no TensorRT plugin registrations (strg_deploy.plugins.registration), "
            "so the strg::FrameRoIAlignMax and strg::SpaceTimeGraph nodes cannot be built"
        ) from None


def fp16_onnx_path(source: Path, destination: Path) -> Path:
    """The fp16 variant of the TensorRT copy ``source``, written to ``destination`` by
    :func:`strg_deploy.export.fp16.write_fp16_variant` (TensorRT 11 takes precision only from the ONNX)."""
    from strg_deploy.export.fp16 import write_fp16_variant

    return Path(write_fp16_variant(source, destination))


# --- the plan (pure Python, tested without TensorRT) ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class BuildPlan:
    """What :func:`build_engines` will do: ``out_dir``, ``precision``, per network the profile
    (input -> (min, opt, max) shapes), the batches and the timing cache file."""

    export_dir: Path
    out_dir: Path
    precision: str
    max_batch: int
    opt_batch: int
    profiles: dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]
    timing_cache: Path


def profile_shapes(
    cfg: ModelConfig, network: str, batches: tuple[int, int, int]
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """input name -> (min, opt, max) shapes of ``network`` for (min, opt, max) clips per batch (the RPN's
    frames scale with the clips: F = B * T')."""
    names = SPECS[network].input_names
    shapes = [tensor_shapes(cfg, network, b) for b in batches]
    return {name: tuple(s[name] for s in shapes) for name in names}


def _check_inputs(manifest: dict[str, Any], network: str, profile: dict[str, tuple]) -> None:
    """The manifest's inputs of ``network`` are the contract's, with the profile's fixed dimensions."""
    inputs = manifest["networks"][network]["inputs"]
    if [i["name"] for i in inputs] != list(profile):
        raise StrgError(
            f"the export's {network} inputs are {[i['name'] for i in inputs]}, expected {list(profile)}"
        )
    for spec in inputs:
        fixed = list(profile[spec["name"]][0][1:])
        recorded = spec["shape"][1:]
        if len(recorded) != len(fixed) or any(
            isinstance(d, int) and d != f for d, f in zip(recorded, fixed, strict=True)
        ):
            raise StrgError(
                f"the export's {network} input {spec['name']} has shape {spec['shape']}, "
                f"but its model config makes it [batch, {', '.join(map(str, fixed))}]"
            )


def plan_build(
    export_dir: str | Path,
    manifest: dict[str, Any],
    out_dir: str | Path | None = None,
    precision: str = "fp32",
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    timing_cache: str | Path | None = None,
) -> BuildPlan:
    """Check the options against the export and resolve the defaults (StrgError with one line)."""
    if precision not in PRECISIONS:
        raise StrgError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if max_batch < 1:
        raise StrgError(f"--max-batch must be at least 1, not {max_batch}")
    opt = min(DEFAULT_OPT_BATCH, max_batch) if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise StrgError(f"--opt-batch must be between 1 and --max-batch ({max_batch}), not {opt}")
    if manifest["export"].get("functions") == "inlined":
        raise StrgError(
            f"{export_dir} was exported with --plain (custom nodes inlined): TensorRT engines use the strg "
            "plugins; export without --plain"
        )
    cfg = ModelConfig.from_dict(manifest["model"]["config"])
    profiles = {}
    for network in NETWORKS:
        profiles[network] = profile_shapes(cfg, network, (1, opt, max_batch))
        _check_inputs(manifest, network, profiles[network])
    out = Path(out_dir) if out_dir is not None else default_engine_dir(export_dir, precision)
    cache = Path(timing_cache) if timing_cache is not None else out / TIMING_CACHE
    return BuildPlan(Path(export_dir), out, precision, max_batch, opt, profiles, cache)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One layer of a parsed network: its name, ``kind`` (``trt.LayerType`` name) and, for a plugin
    layer, ``plugin`` ("namespace::name", "" where TensorRT does not say)."""

    name: str
    kind: str
    plugin: str | None = None


def plugin_layer_problems(layers: Sequence[LayerInfo], expected: Counter[str]) -> list[str]:
    """What is wrong with a parsed network whose ONNX had ``expected`` strg nodes (op -> count): every
    one must be a PLUGIN_V3 layer of the ``strg`` plugin, and no other plugin (such as TensorRT's
    ``ROIAlign_TRT``, which the ``RoiAlign`` of a function body becomes) may appear."""
    problems = []
    ours: Counter[str] = Counter()
    for layer in layers:
        if not layer.kind.startswith("PLUGIN"):
            continue
        plugin = layer.plugin or ""
        namespace, _, name = plugin.rpartition("::")
        if namespace == DOMAIN and name in expected:
            if layer.kind != "PLUGIN_V3":
                problems.append(f"{layer.name} is a {layer.kind} layer, expected PLUGIN_V3")
            ours[name] += 1
        else:
            problems.append(f"layer {layer.name} is plugin {plugin or '?'}, not a strg plugin")
    for op, count in sorted(expected.items()):
        if ours[op] != count:
            problems.append(
                f"{count} {DOMAIN}::{op} node(s) became {ours[op]} plugin layer(s) "
                "(the function body was imported)"
            )
    roi = [
        layer.name
        for layer in layers
        if "roialign" in layer.name.lower() and not layer.kind.startswith("PLUGIN_V3")
    ]
    if expected and roi:
        problems.append(f"RoiAlign layers from a function body: {', '.join(roi[:3])}")
    return problems


# --- TensorRT ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EngineResult:
    """One network's engine: its ``path``, ``status`` ("built" or "kept") and build ``seconds``."""

    network: str
    path: Path
    status: str
    seconds: float


def _layers(trt: Any, network: Any) -> list[LayerInfo]:
    """LayerInfo of every layer of a parsed ``trt.INetworkDefinition``."""
    infos = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type.name
        plugin = None
        if kind == "PLUGIN_V3":
            layer.__class__ = trt.IPluginV3Layer
            try:
                core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
                plugin = f"{core.plugin_namespace}::{core.plugin_name}"
            except Exception:  # an interface this TensorRT does not expose to Python
                plugin = ""
        elif kind.startswith("PLUGIN"):
            plugin = ""
        infos.append(LayerInfo(layer.name, kind, plugin))
    return infos


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """(network, parser): the network parsed from ``onnx_path`` (one StrgError line with the parser's
    first error), created with ``PREFER_AOT_PYTHON_PLUGINS`` where this TensorRT has the flag."""
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        first = " ".join(str(errors[0].desc()).split()) if errors else "no error message"
        raise StrgError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {first} ({len(errors)} error(s))")
    return network, parser


def _build_one(
    trt: Any, gpu: Gpu, plan: BuildPlan, manifest: dict[str, Any], network_name: str
) -> EngineResult:
    import onnx

    from strg_deploy.export.tensorrt_graph import copy_name, strg_nodes, write_tensorrt_copy

    start = time.perf_counter()
    source = plan.export_dir / manifest["networks"][network_name]["file"]
    onnx_path = write_tensorrt_copy(source, plan.out_dir / copy_name(network_name))
    major = _version_tuple(trt.__version__)[0]
    if plan.precision == "fp16" and major >= 11:
        onnx_path = fp16_onnx_path(onnx_path, plan.out_dir / f"{network_name}.fp16.trt.onnx")
    expected = Counter(n.op_type for n in strg_nodes(onnx.load(str(onnx_path), load_external_data=False)))

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    problems = plugin_layer_problems(_layers(trt, network), expected)
    if problems:
        raise StrgError(
            f"{onnx_path.name}: {problems[0]}"
            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        )

    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in plan.profiles[network_name].items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if plan.precision == "fp16" and major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = plan.timing_cache.read_bytes() if plan.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise StrgError(f"TensorRT could not build {network_name} (its log above says why)")
    data = memoryview(serialized)
    path = engine_path(plan.out_dir, network_name)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    with atomic_path(plan.timing_cache) as tmp:
        tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    sidecar = Sidecar(
        network=network_name,
        engine_file=path.name,
        engine_sha256=hashlib.sha256(data).hexdigest(),
        tensorrt_version=trt.__version__,
        gpu=gpu,
        precision=plan.precision,
        profile=sidecar_profile(plan, network_name),
        model_config_sha256=config_sha256(manifest["model"]["config"]),
        export_files=export_files(manifest),
    )
    write_sidecar(path, sidecar)
    return EngineResult(network_name, path, "built", time.perf_counter() - start)


def sidecar_profile(plan: BuildPlan, network: str) -> dict[str, dict[str, list[int]]]:
    """``plan``'s profile of ``network`` as a sidecar records it: input -> {"min", "opt", "max": shape}."""
    return {
        name: {"min": list(lo), "opt": list(opt), "max": list(hi)}
        for name, (lo, opt, hi) in plan.profiles[network].items()
    }


def existing_engines(plan: BuildPlan, manifest: dict[str, Any], tensorrt_version: str, gpu: Gpu) -> list[str]:
    """The networks whose engine in ``plan.out_dir`` matches (sidecar checked, plan file hashed); an
    engine that does not match raises the check's StrgError line."""
    kept = []
    for network in NETWORKS:
        path = engine_path(plan.out_dir, network)
        if not path.exists() and not sidecar_path(path).exists():
            continue
        sidecar = read_sidecar(path, plan.export_dir)
        check_engine(sidecar, tensorrt_version, gpu, manifest, engine=path, export_dir=plan.export_dir)
        if sidecar.precision != plan.precision:
            raise StrgError(
                f"{path} is a {sidecar.precision} engine, {plan.precision} was asked for: "
                f"run `strg engine build {plan.export_dir} --rebuild` or give another --out"
            )
        if sidecar.profile != sidecar_profile(plan, network):
            unit = "frames" if network == "rpn" else "clips"
            raise StrgError(
                f"{path} was built for {_batches(sidecar.profile)} {unit}, --max-batch {plan.max_batch} "
                f"--opt-batch {plan.opt_batch} was asked for: run `strg engine build {plan.export_dir} "
                "--rebuild` with these options, or give another --out"
            )
        kept.append(network)
    return kept


def _batches(profile: dict[str, dict[str, list[int]]]) -> str:
    """The first axis of a sidecar profile's first input, e.g. "1..8 (opt 4)" (clips; frames for the RPN)."""
    try:
        first = next(iter(profile.values()))
        return f"{first['min'][0]}..{first['max'][0]} (opt {first['opt'][0]})"
    except (StopIteration, KeyError, IndexError, TypeError):
        return "another profile of"


def build_engines(
    export_dir: str | Path,
    out_dir: str | Path | None = None,
    precision: str = "fp32",
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int | None = None,
    rebuild: bool = False,
    timing_cache: str | Path | None = None,
    on_network: Callable[[str], None] | None = None,
) -> list[EngineResult]:
    """Build (or keep) the three engines of the export in ``export_dir``; see the module docstring.
    ``out_dir`` defaults to ``EXPORT/engines-<precision>``, ``timing_cache`` to ``timing.cache`` in it.
    ``on_network(name)`` is called before each build. The user's part (the export, the options, the
    output folder) is checked first, then this machine (TensorRT, a GPU), then the plugins."""
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    plan = plan_build(export_dir, manifest, out_dir, precision, max_batch, opt_batch, timing_cache)
    writable_folder(plan.out_dir)
    trt, gpu = require_tensorrt()
    _load_plugins()
    changed = verify_files(export_dir, manifest)
    if changed:
        raise StrgError(
            f"{export_dir}: {', '.join(changed)} differ from the manifest's SHA-256 (export again)"
        )
    kept = [] if rebuild else existing_engines(plan, manifest, trt.__version__, gpu)
    results = []
    for network in NETWORKS:
        if network in kept:
            results.append(EngineResult(network, engine_path(plan.out_dir, network), "kept", 0.0))
            continue
        if on_network is not None:
            on_network(network)
        results.append(_build_one(trt, gpu, plan, manifest, network))
    return results
