"""The TensorRT plugins of ``strg::FrameRoIAlignMax`` and ``strg::SpaceTimeGraph`` (``tensorrt.plugin``).

Importing this module registers both plugins with TensorRT's plugin registry, once per process
(:func:`register_plugins` is idempotent). It imports tensorrt at module level, so only code that needs
TensorRT imports it (the engine builder and the TensorRT backend); without TensorRT >= 10.9 the import
raises one StrgError line saying how to install it (``strg_deploy.plugins.load_registration`` does the
import and the registration in one call).

For each plugin:

- ``@trtp.register``: the shape and type rule (:mod:`strg_deploy.plugins.shapes`), declaring exactly the
  node attributes TensorRT's ONNX parser passes as plugin fields: ``spatial_scale`` (float),
  ``output_size`` and ``sampling_ratio`` (int) for FrameRoIAlignMax, none for SpaceTimeGraph. The parser
  reads ``plugin_namespace``, ``plugin_version`` and ``aot`` itself; any other attribute would be refused
  by ``create_plugin`` ("Unexpected attribute"), see :mod:`strg_deploy.export.tensorrt_graph`.
- ``@trtp.autotune``: float32 LINEAR for every float tensor and BOOL for the mask. The kernels are
  float32 only, so no fp16 combination is declared (an fp16 engine gets casts around the plugin).
- ``@trtp.aot_impl``: the product path. It returns the kernel's entry name, its PTX
  (:func:`strg_deploy.plugins.ptx.compile_kernel`), ``KernelLaunchParams`` (grid and block of
  :mod:`strg_deploy.plugins.launch`, the shared memory the compiled kernel reports) and the int32 extra
  arguments in kernel order as ``SymIntExprs``.
  TensorRT bakes the PTX into the engine, which then runs in any TensorRT runtime (trtexec, C++, Triton
  Inference Server) without Python, triton or torch. The node's attributes become the kernel's
  compile-time constants (attributes are not serialised for AOT plugins).
- No ``@trtp.impl``: a JIT debugging path would launch the Triton kernel from Python at run time, which
  needs torch tensors (or hand-written launcher glue) on the runtime side; the AOT path is the only one.

PTX target: the compute capability of the GPU the engine is built on (queried with cuda-python where
``aot_impl`` runs), capped at 8.0 (:func:`strg_deploy.plugins.shapes.ptx_cc`): portable ``sm_80`` PTX
from Ampere on, since an engine is built for its GPU anyway and these kernels use nothing newer.

Written against NVIDIA's ``tensorrt.plugin`` (NVIDIA/TensorRT commit
a892d22267d9cd2dedc1a0893e6892ac901f6d3d): ``python/packaging/bindings_wheel/tensorrt/plugin/_lib.py``
(``register``, ``aot_impl``, ``autotune``; ``create_plugin``), ``_validate.py`` (the signature rules:
tensors first, then the registered attributes in registration order, then ``outputs`` and ``tactic``;
type annotations are checked as objects, so this module must not use ``from __future__ import
annotations``), ``_plugin_class.py`` (``_TemplateAOTPlugin.get_launch_params`` passes ALL attributes
positionally in the order the parser's fields come, so the ONNX node, ``tensorrt_graph.PLUGIN_FIELDS`` and
the functions here keep one order; every extra argument must be a ``SymInt32``), ``_tensor.py``
(``ShapeExpr``, ``SymInt32``, ``SymIntExprs``, ``KernelLaunchParams``), ``_top_level.py``
(``from_shape_expr``), ``_autotune.py`` (``AutoTuneCombination`` strings), and
``samples/python/quickly_deployable_plugins/qdp_defs.py`` (``circ_pad`` AOT: ``SymIntExprs.from_tuple``
of ``SymInt32``, PTX and name returned as bytes).
"""

# No `from __future__ import annotations`: tensorrt.plugin inspects the annotations as classes.

from typing import Any

from strg_deploy.contract.engines import MIN_TENSORRT_TEXT, TENSORRT_INSTALL
from strg_deploy.errors import StrgError


def _missing(problem: str) -> StrgError:
    return StrgError(
        f"the strg TensorRT plugins need TensorRT >= {MIN_TENSORRT_TEXT} (tensorrt.plugin "
        f"with aot_impl): {problem}. Install it with: {TENSORRT_INSTALL}"
    )


try:
    import tensorrt as trt
except ImportError:
    raise _missing("TensorRT is not installed") from None
except OSError as _error:  # a wheel without its libraries (libnvinfer, CUDA)
    raise _missing(f"TensorRT does not load ({' '.join(str(_error).split())[:100]})") from None
try:
    import tensorrt.plugin as trtp
except ImportError:
    raise _missing(f"TensorRT {getattr(trt, '__version__', '?')} has no tensorrt.plugin") from None
if not hasattr(trtp, "aot_impl"):
    raise _missing(f"TensorRT {getattr(trt, '__version__', '?')} has no tensorrt.plugin.aot_impl")

from strg_deploy.contract.nodes import DOMAIN, ROI_ALIGN_MAX, SPACE_TIME_GRAPH  # noqa: E402
from strg_deploy.plugins import launch, shapes  # noqa: E402

ROI_ID = shapes.ROI_ID
GRAPH_ID = shapes.GRAPH_ID
ROI_FIELDS = ("spatial_scale", "output_size", "sampling_ratio")
"""The fields the RoI plugin declares, in the order the ONNX node carries them."""

AotResult = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]

_registered = False


def _dtype_name(desc: trtp.TensorDesc) -> str:
    dtype = desc.dtype
    return getattr(dtype, "name", str(dtype).rsplit(".", 1)[-1])


def _max_dims(desc: trtp.TensorDesc) -> tuple[int, ...]:
    """The largest shape a tensor takes (its profile's max where a dimension is dynamic)."""
    shape = desc.shape
    return tuple(int(d) for d in (shape.max if shape.is_dynamic else shape))


def _launch_params(plan: shapes.Launch, shared_mem: int) -> trtp.KernelLaunchParams:
    """``plan``'s grid and block, with ``shared_mem``: the compiled kernel's own (Triton's
    ``metadata.shared``, as Triton's launcher and NVIDIA's sample pass it)."""
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = plan.grid
    params.block_x = plan.block
    params.shared_mem = shared_mem
    return params


def _aot_result(kernel, plan: shapes.Launch) -> AotResult:
    """What ``aot_impl`` returns for a compiled kernel and its launch: (entry name, PTX, launch
    parameters with the kernel's own shared memory, the int32 extra arguments)."""
    params = _launch_params(plan, kernel.shared_mem)
    return kernel.name.encode(), kernel.ptx.encode(), params, _extra_args(plan)


def _extra_args(plan: shapes.Launch) -> trtp.SymIntExprs:
    return trtp.SymIntExprs.from_tuple([trtp.SymInt32(arg) for arg in plan.extra_args])


def device_cc() -> int:
    """The compute capability (e.g. 90) of the current CUDA device, through cuda-python."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python before 12.8
        except ImportError:
            raise StrgError("compiling the strg plugins needs cuda-python: pip install cuda-python") from None
    err, device = cudart.cudaGetDevice()
    if int(err) != 0:
        raise StrgError(f"no CUDA device to compile the strg plugins for ({getattr(err, 'name', err)})")
    attr = cudart.cudaDeviceAttr
    err, major = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device)
    err2, minor = cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device)
    if int(err) != 0 or int(err2) != 0:
        raise StrgError(f"cannot read the compute capability of CUDA device {device}")
    return shapes.ptx_cc(major, minor)


def compiled(name: str, cc: int, attributes: dict[str, Any] | None = None):
    """Kernel ``name`` compiled to PTX for ``cc`` (a ``ptx.CompiledKernel``), checked against launch.py:
    its entry and warps (the grid and block come from launch.py, so they must describe this PTX) and its
    shared memory within launch.py's bound."""
    from strg_deploy.plugins import ptx

    kernel = ptx.compile_kernel(name, cc=cc, attributes=attributes)
    spec = launch.SPECS[name]
    if (kernel.name, kernel.num_warps) != (spec.name, spec.num_warps) or kernel.shared_mem > spec.shared_mem:
        raise StrgError(
            f"{name} compiled for cc {cc} is entry {kernel.name} with {kernel.num_warps} warps and "
            f"{kernel.shared_mem} bytes of shared memory; launch.py declares {spec.num_warps} warps and "
            f"at most {spec.shared_mem} bytes"
        )
    return kernel


def roi_kernel(features, boxes, spatial_scale, output_size, sampling_ratio, cc: int) -> AotResult:
    """The RoI plugin's AOT kernel for input descriptors ``features``, ``boxes`` and PTX target ``cc``."""
    plan = shapes.roi_launch(features.shape_expr, boxes.shape_expr)
    attributes = dict(zip(ROI_FIELDS, (spatial_scale, output_size, sampling_ratio), strict=True))
    kernel = compiled(launch.ROI_KERNEL, cc, attributes)
    return _aot_result(kernel, plan)


def graph_kernel(boxes, cc: int) -> AotResult:
    """The graph plugin's AOT kernel for the input descriptor ``boxes`` and PTX target ``cc``."""
    plan = shapes.graph_launch(boxes.shape_expr)
    kernel = compiled(launch.GRAPH_KERNEL, cc)
    return _aot_result(kernel, plan)


def _define() -> None:
    """The decorated functions of both plugins (called once per process by :func:`register_plugins`)."""

    @trtp.register(ROI_ID)
    def roi_desc(
        features: trtp.TensorDesc,
        boxes: trtp.TensorDesc,
        mask: trtp.TensorDesc,
        spatial_scale: float,
        output_size: int,
        sampling_ratio: int,
    ) -> trtp.TensorDesc:
        inputs = (features, boxes, mask)
        shapes.check_roi_inputs(*(d.shape_expr for d in inputs), [_dtype_name(d) for d in inputs])
        launch.roi_constexprs(spatial_scale, output_size, sampling_ratio)  # one line if out of range
        shape = shapes.roi_output_shape(features.shape_expr, boxes.shape_expr)
        return trtp.from_shape_expr(shape, dtype=trt.float32)

    @trtp.autotune(ROI_ID)
    def roi_autotune(
        features: trtp.TensorDesc,
        boxes: trtp.TensorDesc,
        mask: trtp.TensorDesc,
        outputs: tuple[trtp.TensorDesc],
    ) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(shapes.ROI_IO_TYPES, shapes.LAYOUT)]

    @trtp.aot_impl(ROI_ID)
    def roi_aot(
        features: trtp.TensorDesc,
        boxes: trtp.TensorDesc,
        mask: trtp.TensorDesc,
        spatial_scale: float,
        output_size: int,
        sampling_ratio: int,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> AotResult:
        if not isinstance(spatial_scale, float) or isinstance(output_size, float):
            raise StrgError(
                f"{ROI_ID}: the node's attributes must come in the order {', '.join(ROI_FIELDS)} "
                f"(got {spatial_scale!r}, {output_size!r}, {sampling_ratio!r})"
            )
        launch.roi_launch_params(_max_dims(features), _max_dims(boxes))  # refuses int32 overflow
        return roi_kernel(features, boxes, spatial_scale, output_size, sampling_ratio, device_cc())

    @trtp.register(GRAPH_ID)
    def graph_desc(boxes: trtp.TensorDesc, mask: trtp.TensorDesc) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        shapes.check_graph_inputs(boxes.shape_expr, mask.shape_expr, [_dtype_name(boxes), _dtype_name(mask)])
        shape = shapes.graph_output_shape(boxes.shape_expr)
        return trtp.from_shape_expr(shape, dtype=trt.float32), trtp.from_shape_expr(shape, dtype=trt.float32)

    @trtp.autotune(GRAPH_ID)
    def graph_autotune(
        boxes: trtp.TensorDesc, mask: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc, trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(shapes.GRAPH_IO_TYPES, shapes.LAYOUT)]

    @trtp.aot_impl(GRAPH_ID)
    def graph_aot(
        boxes: trtp.TensorDesc,
        mask: trtp.TensorDesc,
        outputs: tuple[trtp.TensorDesc, trtp.TensorDesc],
        tactic: int,
    ) -> AotResult:
        launch.graph_launch_params(_max_dims(boxes))  # refuses int32 overflow
        return graph_kernel(boxes, device_cc())


def _defined() -> bool:
    """Whether tensorrt.plugin already holds both plugins (e.g. from a reloaded copy of this module)."""
    namespace = getattr(trtp.op, DOMAIN, None)
    return namespace is not None and all(hasattr(namespace, op) for op in (ROI_ALIGN_MAX, SPACE_TIME_GRAPH))


def register_plugins() -> None:
    """Register both plugins with TensorRT, once per process (later calls do nothing)."""
    global _registered
    if _registered:
        return
    if not _defined():
        _define()
    _registered = True


register_plugins()
