"""Ahead-of-time compilation of the plugin kernels to PTX, on any machine (no GPU needed).

``triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", cc, 32), options)``
lowers a kernel for a CUDA target without a driver: LLVM emits the PTX and the ``ptxas`` shipped in the
Triton wheel assembles it (which also checks it). The signature comes from
:mod:`strg_deploy.plugins.launch` with every scalar typed ``i32`` and no specialisation attributes, so
the entry's parameter list is fixed whatever the shapes.

Compute capability: cc 80 gives portable ``.target sm_80`` PTX that the driver JIT-compiles for any GPU
from Ampere on; cc 90 gives ``.target sm_90a`` PTX (Triton uses the architecture-specific Hopper
features), which loads on Hopper only. The PTX ISA version is pinned (``ptx_version=80``, PTX ISA 8.0,
CUDA 12.0 drivers and newer) instead of the newest the Triton wheel's ptxas knows, so older drivers load
it; Triton writes it into the ``.version`` line.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

from strg_deploy.errors import StrgError
from strg_deploy.plugins import launch

DEFAULT_PTX_VERSION = 80  # PTX ISA 8.0


@dataclass(frozen=True)
class CompiledKernel:
    """A kernel compiled to PTX.

    name: the PTX entry name (what TensorRT looks up); ptx: the PTX text; params: the entry's
    ``.param`` types in order, as written in the PTX (e.g. ``.u64 .ptr .global .align 1`` for a pointer,
    ``.u32`` for an int32); num_warps: block threads / 32; shared_mem: dynamic shared memory in bytes;
    global_scratch_size, profile_scratch_size: bytes of the hidden scratch buffers the kernel needs per
    program (0 here: the hidden pointers are never dereferenced).
    """

    name: str
    ptx: str
    params: tuple[str, ...]
    num_warps: int
    shared_mem: int
    cc: int
    ptx_version: int
    global_scratch_size: int
    profile_scratch_size: int


def cuda_compile_unavailable() -> str | None:
    """Why Triton cannot compile for CUDA here (None when it can): no triton, no CUDA backend, no ptxas,
    or the interpreter switched on."""
    try:
        import triton  # noqa: F401
        from triton.backends import backends
    except ImportError as error:
        return f"triton is not installed ({error})"
    if "nvidia" not in backends:
        return "this triton build has no NVIDIA backend"
    try:
        from triton.knobs import nvidia

        if nvidia.ptxas.path is None:
            return "triton's ptxas was not found"
    except Exception as error:  # noqa: BLE001 - any failure to locate the tool means "not possible"
        return f"triton's ptxas is not usable ({error})"
    from strg_deploy.plugins import kernels

    if not hasattr(kernels.frame_roi_align_max_kernel, "arg_names") or _interpreted(kernels):
        return "TRITON_INTERPRET=1 is set: the kernels are interpreted, not compiled"
    return None


def compile_kernel(
    name: str,
    cc: int = 80,
    ptx_version: int = DEFAULT_PTX_VERSION,
    attributes: Mapping[str, object] | None = None,
) -> CompiledKernel:
    """Compile kernel ``name`` (``launch.ROI_KERNEL`` or ``launch.GRAPH_KERNEL``) to PTX for compute
    capability ``cc``. ``attributes``: the FrameRoIAlignMax node's ``spatial_scale``, ``output_size``,
    ``sampling_ratio`` (required for the RoI kernel, whose constants they are; ignored for the graph)."""
    return _compile(name, int(cc), int(ptx_version), tuple(sorted((attributes or {}).items())))


@functools.lru_cache(maxsize=32)
def _compile(name: str, cc: int, ptx_version: int, attributes: tuple) -> CompiledKernel:
    reason = cuda_compile_unavailable()
    if reason:
        raise StrgError(f"cannot compile {name} to PTX: {reason}")
    import triton
    from triton.backends.compiler import GPUTarget

    from strg_deploy.plugins import kernels

    spec = launch.SPECS.get(name)
    if spec is None:
        raise StrgError(f"unknown kernel {name!r}; known: {', '.join(launch.SPECS)}")
    constexprs = _constexprs(name, dict(attributes))
    source = triton.compiler.ASTSource(getattr(kernels, name), spec.signature(constexprs), constexprs)
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", cc, 32),
        options={"num_warps": spec.num_warps, "ptx_version": ptx_version},
    )
    meta = compiled.metadata
    ptx = compiled.asm["ptx"]
    return CompiledKernel(
        name=meta.name,
        ptx=ptx,
        params=entry_params(ptx, meta.name),
        num_warps=meta.num_warps,
        shared_mem=meta.shared,
        cc=cc,
        ptx_version=ptx_version,
        global_scratch_size=getattr(meta, "global_scratch_size", 0),  # fields of Triton 3.3 and later
        profile_scratch_size=getattr(meta, "profile_scratch_size", 0),
    )


REGISTERS_PER_SM = 65536  # every architecture from sm_50 to sm_90 (CUDA programming guide, table of limits)
MAX_REGISTERS_PER_THREAD = 255


@dataclass(frozen=True)
class ResourceUsage:
    """What ``ptxas -v`` reports for one kernel assembled for one GPU architecture: registers per
    thread, spill stores and loads (bytes), stack frame (bytes) and named barriers."""

    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    barriers: int

    def block_registers(self, threads: int) -> int:
        """Registers a block of ``threads`` takes (allocated per warp in units of 256)."""
        per_warp = -(-self.registers * 32 // 256) * 256
        return per_warp * -(-threads // 32)


def sass_arch(cc: int) -> str:
    """The ``ptxas -arch`` of a kernel compiled for ``cc``: sm_90a for Hopper (Triton's cc 90 PTX uses
    its architecture-specific features), sm_<cc> otherwise."""
    return "sm_90a" if cc == 90 else f"sm_{cc}"


def resource_usage(kernel: CompiledKernel) -> ResourceUsage:
    """Assemble ``kernel``'s PTX for its own architecture with the Triton wheel's ``ptxas -v`` (no GPU
    needed) and read what the GPU binary uses; StrgError with ptxas's message when it refuses the PTX."""
    from triton.knobs import nvidia

    arch = sass_arch(kernel.cc)
    with tempfile.TemporaryDirectory(prefix="strg-ptxas-") as folder:
        source = f"{folder}/kernel.ptx"
        with open(source, "w", encoding="utf-8") as f:
            f.write(kernel.ptx)
        done = subprocess.run(
            [nvidia.ptxas.path, f"-arch={arch}", "-v", source, "-o", f"{folder}/kernel.cubin"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    report = done.stdout + done.stderr
    if done.returncode != 0:
        raise StrgError(f"ptxas refused {kernel.name} for {arch}: {' '.join(report.split())[:300]}")
    numbers = {}
    for key, pattern in (
        ("stack_bytes", r"(\d+) bytes stack frame"),
        ("spill_stores", r"(\d+) bytes spill stores"),
        ("spill_loads", r"(\d+) bytes spill loads"),
        ("registers", r"Used (\d+) registers"),
        ("barriers", r"used (\d+) barriers"),
    ):
        match = re.search(pattern, report)
        numbers[key] = int(match.group(1)) if match else 0
    if not re.search(r"Used \d+ registers", report):
        said = " ".join(report.split())[:300]
        raise StrgError(f"ptxas -v gave no register count for {kernel.name}: {said}")
    return ResourceUsage(arch=arch, **numbers)


def entry_params(ptx: str, entry: str) -> tuple[str, ...]:
    """The ``.param`` types of ``.entry entry(...)`` in PTX text, in order, without the parameter names."""
    match = re.search(rf"\.entry\s+{re.escape(entry)}\s*\((.*?)\)", ptx, flags=re.DOTALL)
    if match is None:
        raise StrgError(f"PTX has no entry {entry!r}")
    params = []
    for line in match.group(1).split(","):
        words = line.split()
        if words:
            if words[0] != ".param":
                raise StrgError(f"unexpected PTX parameter declaration {line.strip()!r}")
            params.append(" ".join(words[1:-1]))
    return tuple(params)


def _constexprs(name: str, attributes: dict) -> dict[str, object]:
    if name == launch.GRAPH_KERNEL:
        return launch.graph_constexprs()
    missing = [a for a in ("spatial_scale", "output_size", "sampling_ratio") if a not in attributes]
    if missing:
        raise StrgError(f"{name} needs the node attributes {', '.join(missing)} (its compile-time constants)")
    return launch.roi_constexprs(
        attributes["spatial_scale"], attributes["output_size"], attributes["sampling_ratio"]
    )


def _interpreted(kernels) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernels.frame_roi_align_max_kernel, InterpretedFunction)
