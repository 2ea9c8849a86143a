"""The TensorRT backend and onnxruntime's CUDA provider as far as a machine without TensorRT and without a
GPU allows: the one-line errors (library, CLI), chunk and padding plans from an optimisation profile,
device-value bookkeeping, cuda-python's error codes (the real ``cuda.bindings``, which answers without a
GPU), engine lookup, and that none of it imports torch, tensorrt or cuda-python at import. The runs
themselves need TensorRT and an NVIDIA GPU (or onnxruntime-gpu) and skip without them."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.engines.base import BatchLimits
from strg_deploy.engines.cuda_memory import DeviceArray, check, cudart, device_count, require_gpu
from strg_deploy.engines.tensorrt import (
    Chunk,
    engine_path,
    load_tensorrt_network,
    plan_batches,
    profile_limits,
    require_tensorrt,
)
from strg_deploy.errors import StrgError

runner = CliRunner()
VIDEO_NAME = "arm_wrestling_h264_340x256.mp4"


def _gpu_count() -> int:
    if importlib.util.find_spec("cuda") is None:
        return 0
    try:
        return device_count()
    except StrgError:
        return 0


HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = _gpu_count() > 0
needs_trt = pytest.mark.skipif(not (HAS_TENSORRT and HAS_GPU), reason="needs TensorRT and an NVIDIA GPU")
no_trt_here = pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
no_gpu_here = pytest.mark.skipif(HAS_GPU, reason="this machine has a CUDA GPU")


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# ---------------------------------------------------------------- imports stay lazy


def test_the_gpu_modules_import_neither_torch_nor_tensorrt_nor_cuda_python():
    from conftest import loaded_after_importing

    engines = ["tensorrt", "cuda_memory", "onnxruntime_cuda", "pipeline"]
    modules = [f"strg_deploy.engines.{m}" for m in engines]
    modules += ["strg_deploy.data.gpu_decode", "strg_deploy.cli.infer"]
    watched = ("torch", "tensorrt", "cuda.bindings", "cuda.bindings.runtime")
    assert loaded_after_importing(modules, watched) == []


# ---------------------------------------------------------------- no TensorRT: one line


@no_trt_here
def test_without_tensorrt_loading_an_engine_says_how_to_install_it(tmp_path):
    with pytest.raises(StrgError) as caught:
        require_tensorrt()
    message = str(caught.value)
    assert message.startswith("TensorRT is not installed: pip install 'strg-deploy[gpu]'")
    assert "pypi.nvidia.com" in message and "\n" not in message
    with pytest.raises(StrgError, match="^TensorRT is not installed"):  # before looking at the file
        load_tensorrt_network(tmp_path / "missing.engine", "backbone")


@no_trt_here
@pytest.mark.parametrize("command", ["infer", "verify"])
def test_the_cli_with_backend_tensorrt_exits_2_with_one_line(tiny_export, tmp_path, command):
    _, export = tiny_export
    args = [command, str(export), "--backend", "tensorrt"]
    if command == "infer":
        from conftest import write_clip

        args.insert(2, str(write_clip(tmp_path / "clip.mp4", 0, seconds=1.0)))
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT is not installed: pip install")
    assert "Traceback" not in result.output


def test_a_per_network_mapping_takes_the_gpu_runtimes_by_name(tiny_export):
    from strg_deploy.engines.pipeline import Pipeline

    _, export = tiny_export
    backend = {"rpn": "onnxruntime", "backbone": "tensorrt", "head": "tensorrt"}
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed here: the mapping would load its engines")
    with pytest.raises(StrgError, match="^TensorRT is not installed"):
        Pipeline.load(export, backend)
    with pytest.raises(StrgError, match="must be one of onnxruntime, openvino, onnxruntime-cuda, tensorrt"):
        Pipeline.load(export, {"rpn": "onnxruntime", "backbone": "cuda", "head": "tensorrt"})


# ---------------------------------------------------------------- onnxruntime's CUDA provider


def test_onnxruntime_cuda_without_its_provider_is_one_line(tiny_export):
    if _ort_has_cuda():
        pytest.skip("this onnxruntime has the CUDA provider")
    from strg_deploy.engines.onnxruntime import OnnxRuntimeNetwork
    from strg_deploy.engines.pipeline import Pipeline

    _, export = tiny_export
    with pytest.raises(StrgError) as caught:
        OnnxRuntimeNetwork(export / "head.onnx", device="cuda:0")
    message = str(caught.value)
    assert "has no CUDA provider (it has " in message and "CPUExecutionProvider" in message
    assert "onnxruntime-gpu" in message and "\n" not in message
    with pytest.raises(StrgError, match="has no CUDA provider"):
        Pipeline.load(export, "onnxruntime-cuda")
    with pytest.raises(StrgError, match="device must be cpu, cuda or cuda:N"):
        OnnxRuntimeNetwork(export / "head.onnx", device="gpu")
    result = runner.invoke(app, ["verify", str(export), "--backend", "onnxruntime-cuda"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: onnxruntime") and "no CUDA provider" in result.stderr


def test_a_cuda_provider_library_that_does_not_load_is_named_in_one_line(tmp_path):
    """The loader probe that runs before an onnxruntime-gpu session (the deployment check runs it on the
    real onnxruntime-gpu): the dynamic loader's own reason, made into one line naming the fix."""
    from strg_deploy.engines.onnxruntime_cuda import library_load_error, provider_problem

    broken = tmp_path / "libonnxruntime_providers_cuda.so"
    broken.write_bytes(b"not a shared object\n" * 4)
    reason = library_load_error(broken)
    assert reason is not None and str(broken) in reason and "\n" not in reason
    assert library_load_error(tmp_path / "absent.so") is None  # not there: onnxruntime decides
    import _ctypes

    assert library_load_error(Path(_ctypes.__file__)) is None  # a shared object that loads
    driver = provider_problem("libcuda.so.1: cannot open shared object file: No such file", "1.31.1", "13.0")
    assert driver.startswith("onnxruntime-gpu 1.31.1 cannot use a GPU here: the NVIDIA driver")
    library = provider_problem("libcublasLt.so.13: cannot open shared object file", "1.31.1", "13.0")
    assert "(libcublasLt.so.13: cannot open shared object file)" in library
    assert "needs CUDA 13 and cuDNN 9" in library and "onnxruntime-gpu[cuda,cudnn]" in library
    assert "needs CUDA and cuDNN 9" in provider_problem("libcudnn.so.9: missing", "1.20.0", None)


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or not _ort_has_cuda() or not HAS_GPU,
    reason="needs onnxruntime-gpu and an NVIDIA GPU",
)
def test_onnxruntime_cuda_passes_the_exports_verification(tiny_export):
    from strg_deploy.engines.pipeline import Pipeline
    from strg_deploy.engines.verify import verify_export

    _, export = tiny_export
    result = verify_export(export, "onnxruntime-cuda")
    assert result.passed, [r for r in result.rows if not r.passed]
    assert {row["device"] for row in result.backends} == {"cuda:0"}
    backbone = Pipeline.load(export, "onnxruntime-cuda").networks["backbone"]
    clip = np.zeros((1, *backbone.session.get_inputs()[0].shape[1:]), np.uint8)
    features = backbone.run({"clip": clip})["features"]
    assert features.device_name().lower() == "cuda"  # bound on the GPU, not copied to the host
    assert backbone.to_host(features).shape[0] == 1


# ---------------------------------------------------------------- batch planning


def test_batches_run_in_chunks_of_the_profile_maximum_and_pad_up_to_its_minimum():
    assert plan_batches(10, BatchLimits(1, 4, 4)) == [Chunk(0, 4, 4), Chunk(4, 8, 4), Chunk(8, 10, 2)]
    assert plan_batches(9, BatchLimits(2, 4, 4)) == [Chunk(0, 4, 4), Chunk(4, 8, 4), Chunk(8, 9, 2)]
    padded = plan_batches(3, BatchLimits(4, 4, 8))
    assert padded == [Chunk(0, 3, 4)] and padded[0].rows == 3
    assert plan_batches(5, BatchLimits()) == [Chunk(0, 5, 5)]
    with pytest.raises(StrgError, match="at least one item"):
        plan_batches(0, BatchLimits(1, 4, 8))


def test_batch_limits_come_from_every_inputs_profile():
    head = {
        "features": ((1, 512, 4, 7, 7), (4, 512, 4, 7, 7), (8, 512, 4, 7, 7)),
        "boxes": ((1, 4, 10, 4), (4, 4, 10, 4), (8, 4, 10, 4)),
        "mask": ((1, 4, 10), (4, 4, 10), (8, 4, 10)),
    }
    assert profile_limits(head) == BatchLimits(minimum=1, optimal=4, maximum=8)
    disagree = {"a": ((1, 3), (2, 3), (8, 3)), "b": ((2, 3), (6, 3), (6, 3))}
    assert profile_limits(disagree) == BatchLimits(minimum=2, optimal=6, maximum=6)
    with pytest.raises(StrgError, match="takes no batch size"):
        profile_limits({"a": ((4, 3), (4, 3), (8, 3)), "b": ((1, 3), (1, 3), (2, 3))})


# ---------------------------------------------------------------- device values


class _Owner:
    generation = 3


def test_a_device_value_slices_by_pointer_and_goes_stale_when_its_network_runs_again():
    owner = _Owner()
    value = DeviceArray(0x1000, (6, 512, 4, 7, 7), "float32", "cuda:0", owner, generation=3)
    assert value.row_bytes == 512 * 4 * 7 * 7 * 4 and value.nbytes == 6 * value.row_bytes
    part = value.rows(2, 5)
    assert part.ptr == 0x1000 + 2 * value.row_bytes and part.shape == (3, 512, 4, 7, 7)
    assert part.dtype == np.float32 and part.device == "cuda:0" and part.owner is owner
    assert value.valid and part.valid
    value.check_valid()
    owner.generation = 4  # the network ran again: its output buffers hold the new run's values
    assert not value.valid and not part.valid
    with pytest.raises(StrgError, match=r"was overwritten by a later run .*\(to_host\)"):
        part.check_valid()
    with pytest.raises(ValueError, match="outside a batch of 6"):
        value.rows(4, 7)
    assert DeviceArray(0, (2, 3), "bool", "cuda:1").valid  # no owner: nothing to go stale


# ---------------------------------------------------------------- cuda-python error codes


def test_cuda_results_give_their_values_or_one_line_naming_the_error():
    runtime = cudart()
    success = runtime.cudaError_t.cudaSuccess
    assert check((success,), "x") is None
    assert check((success, 5), "x") == 5
    assert check((success, 1, 2), "x") == (1, 2)
    with pytest.raises(StrgError) as caught:
        check((runtime.cudaError_t.cudaErrorInvalidValue,), "cudaMalloc")
    message = str(caught.value)
    assert message.startswith("cudaMalloc: CUDA error cudaErrorInvalidValue (1): ")
    assert "invalid argument" in message
    with pytest.raises(StrgError, match=r"^no CUDA GPU: cudaSetDevice failed with cudaErrorNoDevice \(100\)"):
        check((runtime.cudaError_t.cudaErrorNoDevice,), "cudaSetDevice")


@no_gpu_here
def test_without_a_gpu_the_real_cuda_calls_say_so_in_one_line():
    from strg_deploy.engines.cuda_memory import DeviceBuffer, Stream

    runtime = cudart()
    error, _ = runtime.cudaGetDeviceCount()
    assert int(error) != 0  # the real call, answering without a driver or a device
    for call in (device_count, require_gpu, Stream, lambda: DeviceBuffer(1024)):
        with pytest.raises(StrgError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("no CUDA GPU: ") and "NVIDIA GPU" in message and "\n" not in message


# ---------------------------------------------------------------- cuda-python names and arguments

ROOT = Path(__file__).resolve().parent.parent
CUDA_USERS = [
    ROOT / "strg_deploy" / "engines" / "cuda_memory.py",
    ROOT / "strg_deploy" / "engines" / "tensorrt.py",
    ROOT / "strg_deploy" / "export" / "engine.py",
    ROOT / "strg_deploy" / "plugins" / "registration.py",
    ROOT / "benchmarks" / "gpu.py",
]
CUDA_NAME = re.compile(r"(cuda[A-Z]\w*|cu[A-Z]\w*|CU[a-z]\w*|CU_[A-Z0-9_]+)")


def _cuda_modules():
    from cuda.bindings import driver, runtime

    return runtime, driver


def _cuda_names(tree: ast.AST) -> set[str]:
    """cuda-python names in code: attributes (runtime.cudaMemcpyAsync, driver.CUfunction_attribute) and
    whole-string constants naming one (COPY_KINDS, NO_GPU_ERRORS); docstrings never match whole."""
    names = set()
    for node in ast.walk(tree):
        text = node.attr if isinstance(node, ast.Attribute) else getattr(node, "value", None)
        if (
            isinstance(node, ast.Attribute | ast.Constant)
            and isinstance(text, str)
            and CUDA_NAME.fullmatch(text)
        ):
            names.add(text)
    return names


def test_every_cuda_python_name_the_gpu_code_uses_exists_in_cuda_bindings():
    """Functions, types and enum values of cuda.bindings.runtime / driver used by the runtime, the builder,
    the plugin registration and benchmarks/gpu.py, looked up in the installed cuda-bindings."""
    known = set()
    for module in _cuda_modules():
        for name in dir(module):
            known.add(name)
            members = getattr(getattr(module, name), "__members__", None)
            if isinstance(members, Mapping):
                known.update(members)  # enum values: cudaMemcpyHostToDevice, CU_FUNC_ATTRIBUTE_...
    used = set().union(*(_cuda_names(ast.parse(path.read_text(encoding="utf-8"))) for path in CUDA_USERS))
    assert {
        "cudaMemcpyAsync",
        "cudaMemsetAsync",
        "cudaMemcpy",
        "cudaMemcpyDeviceToHost",
        "cudaErrorNoDevice",
        "cudaDevAttrComputeCapabilityMajor",
        "cuLaunchKernel",
        "cuFuncSetAttribute",
        "CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES",
    } <= used
    assert sorted(used - known) == []


def test_every_cuda_call_binds_to_the_installed_signature():
    """Each call of a cuda-python function in the GPU code takes as many arguments as the installed
    function and names only its parameters (the order-sensitive ones are called with keywords)."""
    modules = _cuda_modules()
    calls = 0
    for path in CUDA_USERS:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            function = next((getattr(m, name) for m in modules if hasattr(m, name)), None)
            if not CUDA_NAME.fullmatch(name) or function is None or inspect.isclass(function):
                continue
            where = f"{path.name}:{node.lineno} {name}"
            assert not any(isinstance(a, ast.Starred) for a in node.args), f"{where}: spell the arguments out"
            signature = inspect.signature(function)
            try:
                signature.bind(*node.args, **{k.arg: k.value for k in node.keywords})
            except TypeError as error:
                pytest.fail(f"{where}{signature}: {error}")
            calls += 1
    assert calls >= 20


class _Recording:
    """cuda.bindings.runtime as it is, noting each function call's arguments bound to the installed
    signature (name -> value) before making the real call."""

    def __init__(self, module):
        self.module, self.calls = module, []

    def __getattr__(self, name):
        value = getattr(self.module, name)
        if inspect.isclass(value) or not callable(value):
            return value

        def call(*args, **kwargs):
            bound = inspect.signature(value).bind(*args, **kwargs)
            self.calls.append((name, dict(bound.arguments)))
            return value(*args, **kwargs)

        return call


def test_copies_pass_dst_src_count_kind_and_stream_in_the_installed_order(monkeypatch):
    from types import SimpleNamespace

    from strg_deploy.engines import cuda_memory

    runtime = cudart()
    recording = _Recording(runtime)
    monkeypatch.setattr(cuda_memory, "cudart", lambda: recording)
    stream = SimpleNamespace(raw=runtime.cudaStream_t(0x5000))
    for call in (
        lambda: cuda_memory.copy_async(0x1000, 0x2000, 64, "host_to_device", stream),
        lambda: cuda_memory.copy_async(0x3000, 0x1000, 32, "device_to_host", stream),
        lambda: cuda_memory.zero_async(0x1040, 16, stream),
    ):
        try:
            call()
        except StrgError:
            assert not HAS_GPU  # the real call answered: no GPU here
    copies = [
        arguments for name, arguments in recording.calls if name in ("cudaMemcpyAsync", "cudaMemsetAsync")
    ]
    kind = runtime.cudaMemcpyKind
    assert copies == [
        {
            "dst": 0x1000,
            "src": 0x2000,
            "count": 64,
            "kind": kind.cudaMemcpyHostToDevice,
            "stream": stream.raw,
        },
        {
            "dst": 0x3000,
            "src": 0x1000,
            "count": 32,
            "kind": kind.cudaMemcpyDeviceToHost,
            "stream": stream.raw,
        },
        {"devPtr": 0x1040, "value": 0, "count": 16, "stream": stream.raw},
    ]


def test_a_stream_handle_is_the_cuda_stream_address():
    from strg_deploy.engines.cuda_memory import Stream

    stream = Stream.__new__(Stream)  # no cudaStreamCreate: this machine may have no GPU
    stream.raw = cudart().cudaStream_t(0x7F00)
    assert stream.handle == 0x7F00
    stream.raw = None  # nothing to destroy


def test_ptx_launch_parameters_are_packed_by_cuda_bindings(load_benchmark):
    """benchmarks/gpu.py's kernelParams for cuLaunchKernel: inputs, int32 scalars, outputs, null scratch
    pointers; the installed cuda-bindings packs them (a null given as ctypes.c_void_p(0) it refuses)."""
    import ctypes

    from cuda.bindings import driver

    gpu = load_benchmark("gpu")
    values, types = gpu.kernel_params([0x1000, 0x2000], [7, 3], [0x3000], hidden=2)
    assert values == (0x1000, 0x2000, 7, 3, 0x3000, 0, 0)
    assert types == (ctypes.c_void_p,) * 2 + (ctypes.c_int32,) * 2 + (ctypes.c_void_p,) * 3

    def launch(params):
        return driver.cuLaunchKernel(driver.CUfunction(), 1, 1, 1, 32, 1, 1, 0, 0, params, 0)

    with pytest.raises(TypeError, match="an integer is required"):
        launch(((ctypes.c_void_p(0),), (ctypes.c_void_p,)))
    try:  # packed: the call reaches the driver (no driver here: it says so; with one: an error code)
        result = launch((values, types))
    except TypeError:
        raise
    except Exception as error:  # noqa: BLE001 - cuda.pathfinder's "driver library not found"
        assert not HAS_GPU, error
    else:
        assert int(result[0]) != 0  # a null function handle


# ---------------------------------------------------------------- engine files


def test_engines_are_looked_for_where_strg_engine_build_writes_them(tmp_path):
    assert engine_path(tmp_path, "head") == tmp_path / "engines-fp32" / "head.engine"
    (tmp_path / "engines-fp32").mkdir()
    (tmp_path / "engines-fp32" / "head.engine").write_bytes(b"plan")
    assert engine_path(tmp_path, "head") == tmp_path / "engines-fp32" / "head.engine"
    (tmp_path / "engines-fp16").mkdir()
    (tmp_path / "engines-fp16" / "head.engine").write_bytes(b"plan")
    assert engine_path(tmp_path, "head") == tmp_path / "engines-fp16" / "head.engine"
    assert engine_path(tmp_path, "rpn") == tmp_path / "engines-fp32" / "rpn.engine"


# ---------------------------------------------------------------- on a GPU with TensorRT


@pytest.fixture(scope="module")
def built_engines(tiny_export, tmp_path_factory):
    import shutil

    from strg_deploy.export.engine import build_engines

    _, export = tiny_export
    folder = tmp_path_factory.mktemp("trt") / "export"
    shutil.copytree(export, folder)
    build_engines(folder, precision="fp32", max_batch=4, opt_batch=2)
    return folder


@needs_trt
def test_tensorrt_passes_the_exports_verification(built_engines):
    from strg_deploy.engines.verify import verify_export

    result = verify_export(built_engines, "tensorrt")
    assert result.passed, [r for r in result.rows if not r.passed]
    assert {row["backend"] for row in result.backends} == {"tensorrt"}
    assert all(row["device"].startswith("cuda:") and row["max_batch"] for row in result.backends)


@needs_trt
def test_features_stay_on_the_gpu_and_batches_chunk_and_pad(built_engines):
    from strg_deploy.engines.pipeline import Pipeline

    trt_chain = Pipeline.load(built_engines, "tensorrt")
    ort_chain = Pipeline.load(built_engines, "onnxruntime")
    cfg = trt_chain.cfg
    clips = np.random.default_rng(0).integers(0, 256, (6, 3, cfg.frames, cfg.size, cfg.size), np.uint8)
    backbone, head = trt_chain.networks["backbone"], trt_chain.networks["head"]
    features = backbone.run({"clip": clips[:2]})["features"]
    assert isinstance(features, DeviceArray) and features.device == backbone.info.device
    expected = ort_chain.run_network("backbone", {"clip": clips[:2]})["features"]
    np.testing.assert_allclose(backbone.to_host(features), expected, atol=1e-3, rtol=1e-3)
    # more clips than the profile's maximum (4): chunks; 6 = 4 + 2
    got, want = trt_chain.run(clips), ort_chain.run(clips)
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-3, rtol=1e-3)
    assert (got.mask == want.mask).all()
    chunked = backbone.run({"clip": clips})["features"]
    assert isinstance(chunked, np.ndarray) and chunked.shape[0] == 6
    json.dumps(trt_chain.describe())  # what `strg verify` prints is plain data
    with pytest.raises(StrgError, match="clip must be uint8"):
        backbone.run({"clip": clips.astype(np.float32)})
    old = backbone.run({"clip": clips[:1]})["features"]
    backbone.run({"clip": clips[1:2]})
    with pytest.raises(StrgError, match="overwritten by a later run"):
        head.run(
            {
                "features": old,
                "boxes": np.zeros((1, cfg.feature_frames, cfg.proposals.num_boxes, 4), np.float32),
                "mask": np.zeros((1, cfg.feature_frames, cfg.proposals.num_boxes), bool),
            }
        )
