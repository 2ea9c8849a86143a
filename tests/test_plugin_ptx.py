"""Ahead-of-time compilation of the plugin kernels to PTX on the CPU (triton.compile for a CUDA target).

Checks what TensorRT's AOT plugin launch relies on: the entry name, the parameter list (input pointers,
int32 scalars, output pointers, then Triton's two hidden scratch pointers), the pinned PTX version, the
target, and warps and shared memory equal to what strg_deploy.plugins.launch declares. Nothing here runs
the PTX: that needs an NVIDIA GPU.
"""

from __future__ import annotations

import re

import pytest

from strg_deploy.errors import StrgError
from strg_deploy.plugins import launch

pytest.importorskip("triton")

from strg_deploy.plugins import ptx  # noqa: E402  (imports triton lazily, but needs it for the skip reason)

REASON = ptx.cuda_compile_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"triton cannot compile for CUDA here: {REASON}")

POINTER = ".u64 .ptr .global .align 1"  # no alignment specialisation: any device pointer is accepted
INT32 = ".u32"
PAPER = {"spatial_scale": 1 / 16, "output_size": 7, "sampling_ratio": 2}
TARGETS = [(80, "sm_80"), (90, "sm_90a")]


def expected_params(spec: launch.KernelSpec) -> tuple[str, ...]:
    """Inputs, int32 scalars, outputs, then the global and profile scratch pointers Triton 3.8 appends."""
    declared = [POINTER] * len(spec.inputs) + [INT32] * len(spec.int_args) + [POINTER] * len(spec.outputs)
    return (*declared, POINTER, POINTER)


@pytest.mark.parametrize("cc, target", TARGETS)
@pytest.mark.parametrize("spec", [launch.ROI_SPEC, launch.GRAPH_SPEC], ids=lambda s: s.name)
def test_kernel_compiles_to_ptx_as_launch_declares(spec, cc, target):
    kernel = ptx.compile_kernel(spec.name, cc=cc, ptx_version=80, attributes=PAPER)
    assert kernel.name == spec.name
    assert re.search(rf"^\.visible \.entry {spec.name}\(", kernel.ptx, flags=re.MULTILINE)
    assert kernel.params == expected_params(spec)
    assert len(kernel.params) == len(spec.inputs) + len(spec.int_args) + len(spec.outputs) + 2
    assert re.search(r"^\.version 8\.0$", kernel.ptx, flags=re.MULTILINE)
    assert re.search(rf"^\.target {target}$", kernel.ptx, flags=re.MULTILINE)
    assert re.search(rf"^\.reqntid {spec.block}$", kernel.ptx, flags=re.MULTILINE)
    assert kernel.num_warps == spec.num_warps
    assert kernel.shared_mem <= spec.shared_mem
    assert (kernel.cc, kernel.ptx_version) == (cc, 80)
    # the hidden scratch pointers are never used, so a null pointer there is fine
    assert kernel.global_scratch_size == 0
    assert kernel.profile_scratch_size == 0


@pytest.mark.parametrize("cc, target", TARGETS)
@pytest.mark.parametrize("spec", [launch.ROI_SPEC, launch.GRAPH_SPEC], ids=lambda s: s.name)
def test_the_gpu_binary_spills_nothing_and_a_block_fits_a_multiprocessor(spec, cc, target):
    """ptxas (the Triton wheel's) assembles the PTX for the real architecture: no register spills, no
    stack, and a block of launch.py's size fits the register file (else the launch would fail with
    'too many resources requested')."""
    usage = ptx.resource_usage(ptx.compile_kernel(spec.name, cc=cc, ptx_version=80, attributes=PAPER))
    assert usage.arch == target
    assert (usage.spill_stores, usage.spill_loads, usage.stack_bytes) == (0, 0, 0)
    assert 0 < usage.registers <= ptx.MAX_REGISTERS_PER_THREAD
    assert usage.block_registers(spec.block) <= ptx.REGISTERS_PER_SM


@pytest.mark.parametrize("output_size", [1, 3, 12, 16])
def test_the_roi_kernels_shared_memory_stays_within_launch_pys_bound(output_size):
    """Triton sizes the RoI kernel's shared memory (the max over the bins reduces across warps) per
    number of bins; the plugin launches with the compiled figure, which launch.py bounds."""
    attributes = {**PAPER, "output_size": output_size}
    kernel = ptx.compile_kernel(launch.ROI_KERNEL, cc=80, ptx_version=80, attributes=attributes)
    assert kernel.shared_mem <= launch.ROI_SPEC.shared_mem
    assert kernel.num_warps == launch.ROI_SPEC.num_warps


def test_the_roi_kernels_loads_run_along_the_bins_of_one_channel():
    """What makes the loads coalesce (benchmarks/roi_access.py): every load of the features is a 1-D
    tensor over the (padded) bins, so a warp's lanes are bins of one channel whatever layout Triton
    chooses; no load spans channels."""
    import triton
    from triton.backends.compiler import GPUTarget

    from strg_deploy.plugins import kernels

    constexprs = launch.roi_constexprs(1 / 16, 7, 2)
    source = triton.compiler.ASTSource(
        kernels.frame_roi_align_max_kernel, launch.ROI_SPEC.signature(constexprs), constexprs
    )
    compiled = triton.compile(
        source, target=GPUTarget("cuda", 80, 32), options={"num_warps": launch.ROI_NUM_WARPS}
    )
    loads = [line for line in compiled.asm["ttgir"].splitlines() if "tt.load" in line]
    tensor_loads = [line for line in loads if "tensor<" in line]
    assert len(tensor_loads) == 4 * PAPER["sampling_ratio"] ** 2  # four corners per sample
    assert all("tensor<64x!tt.ptr<f32>" in line for line in tensor_loads)  # 49 bins padded to 64
    assert all(re.search(r"tensor<\d+x\d+x", line) is None for line in loads)  # nothing 2-D


def test_register_blocks_are_allocated_per_warp():
    usage = ptx.ResourceUsage("sm_80", 110, spill_stores=0, spill_loads=0, stack_bytes=0, barriers=0)
    assert usage.block_registers(128) == 4 * 3584  # 110 x 32 = 3520, rounded up to 3584 per warp
    assert usage.block_registers(33) == 2 * 3584


def test_ptxas_refusing_the_ptx_is_one_line():
    kernel = ptx.compile_kernel(launch.GRAPH_KERNEL, cc=80)
    broken = ptx.CompiledKernel(**{**kernel.__dict__, "ptx": kernel.ptx.replace(".entry", ".entri", 1)})
    with pytest.raises(StrgError, match="ptxas refused space_time_graph_kernel for sm_80"):
        ptx.resource_usage(broken)


def test_ptx_version_is_pinned_not_the_newest():
    kernel = ptx.compile_kernel(launch.GRAPH_KERNEL, cc=80, ptx_version=81)
    assert re.search(r"^\.version 8\.1$", kernel.ptx, flags=re.MULTILINE)


def test_attributes_are_baked_into_the_ptx():
    """spatial_scale is a compile-time constant: another scale gives other PTX, the same entry."""
    other = ptx.compile_kernel(launch.ROI_KERNEL, attributes={**PAPER, "spatial_scale": 1 / 8})
    paper = ptx.compile_kernel(launch.ROI_KERNEL, attributes=PAPER)
    assert other.name == paper.name and other.params == paper.params
    assert other.ptx != paper.ptx
    assert "0f3D800000" in paper.ptx  # 1/16 as a float32 immediate
    assert "0f3E000000" in other.ptx  # 1/8


def test_entry_params_parses_the_entry():
    text = ".visible .entry k(\n\t.param .u64 .ptr .global .align 1 k_param_0,\n\t.param .u32 k_param_1\n)\n"
    assert ptx.entry_params(text, "k") == (POINTER, INT32)
    with pytest.raises(StrgError):
        ptx.entry_params(text, "other")


@pytest.mark.parametrize(
    "name, attributes",
    [("no_such_kernel", None), (launch.ROI_KERNEL, None), (launch.ROI_KERNEL, {**PAPER, "output_size": 0})],
)
def test_compile_kernel_rejects_bad_requests(name, attributes):
    with pytest.raises(StrgError):
        ptx.compile_kernel(name, attributes=attributes)
