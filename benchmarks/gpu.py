"""Everything an NVIDIA GPU can show about strg-deploy, in one run of a few minutes.

    bash benchmarks/gpu.sh [OUT]                 # = python benchmarks/gpu.py --out OUT (default gpu-results)

Sections; each prints a table and records its figures, or why it could not run, in OUT/results.json:

1. ``machine``: the GPU, its compute capability, torch, Triton, onnxruntime's providers, TensorRT.
2. ``kernels``: the Triton kernels of the plugins (strg_deploy/plugins/kernels.py), JIT-compiled for this
   GPU and launched as launch.py says, against the torch references on the same GPU (the model's own
   ``frame_roi_align_max`` and ``space_time_graphs``), at the small and paper-r50 shapes, batch 1 and 8:
   the largest difference and the median time of each.
3. ``ptx``: the ahead-of-time path without TensorRT: each kernel compiled to PTX on this machine for this
   GPU's compute capability (``ptx.compile_kernel``, as the plugin registration does), loaded with the
   CUDA driver API (cuda-python: ``cuModuleLoadData``, ``cuModuleGetFunction``) and launched with
   ``cuLaunchKernel`` with exactly the parameters TensorRT passes: input pointers, launch.py's int32
   arguments, output pointers, then the two hidden scratch pointers as null, on launch.py's grid, block
   and shared memory. Its outputs against the torch reference.
4. ``pipeline``: the small and paper-r50 models (random weights, seed 0) on torch CUDA, and exported, on
   onnxruntime's CUDA provider where onnxruntime-gpu is installed: ms per batch of 1 and 8 clips, and
   the largest logit difference from torch.
5. ``tensorrt``: where TensorRT is installed: `strg engine build` for the tiny and small presets (fp32 and
   fp16), `strg verify --backend tensorrt`, and the engines' ms per batch of 1 and 8.
6. ``nvdec``: a generated 1080p H.264 clip decoded by PyAV on the CPU and through NVDEC
   (``--decode cuda``'s reader): frames per second.

Needs torch with CUDA and Triton (the ``train`` extra); the other sections skip with their reason.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PRESETS = ("small", "paper-r50")
BATCHES = (1, 8)


def table(title: str, columns: list[str], rows: list[list]) -> None:
    """Print a plain-text table (no rich needed on the GPU machine)."""
    widths = [
        max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(c) for i, c in enumerate(columns)
    ]
    print(f"\n{title}")
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))


def median_ms(run, repeats: int = 20) -> float:
    """Median milliseconds of ``run()`` on the GPU (CUDA events), after two warm-up calls."""
    import torch

    run(), run()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(sorted(times)[len(times) // 2])


def roi_inputs(name: str, batch: int, device: str, seed: int = 0):
    """Features, boxes (a quarter of them padded, some partly outside the frame), mask and the node
    attributes of preset ``name``: features float32 [B, C, T', H', W'], boxes [B, T', N, 4], mask
    [B, T', N]."""
    import torch

    from strg_deploy.config import preset

    cfg = preset(name)
    g = torch.Generator().manual_seed(seed)
    t, n, c, s = cfg.feature_frames, cfg.proposals.num_boxes, cfg.node_dim, cfg.feature_size
    features = torch.randn(batch, c, t, s, s, generator=g)
    corner = torch.rand(batch, t, n, 2, generator=g) * cfg.size * 1.1 - 0.05 * cfg.size
    boxes = torch.cat([corner, corner + torch.rand(batch, t, n, 2, generator=g) * cfg.size / 2], dim=-1)
    mask = torch.rand(batch, t, n, generator=g) > 0.25
    attributes = (1.0 / cfg.backbone.spatial_stride, cfg.head.roi_size, cfg.head.sampling_ratio)
    return features.to(device), boxes.to(device), mask.to(device), attributes


def section_machine() -> dict:
    info: dict = {"python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["compute_capability"] = f"{props.major}.{props.minor}"
            info["memory_gb"] = round(props.total_memory / 2**30, 1)
    except ImportError as error:
        info["torch"] = f"missing ({error})"
    for module in ("triton", "onnxruntime", "tensorrt", "av"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = "missing"
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    try:
        info["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["driver"] = "nvidia-smi not found"
    table("machine", ["what", "value"], [[k, v] for k, v in info.items()])
    return info


def needs_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU visible to torch")


def section_kernels() -> list[dict]:
    needs_cuda()
    import torch

    from strg_deploy.models.graphs import space_time_graphs
    from strg_deploy.models.roi import frame_roi_align_max
    from strg_deploy.plugins import kernels

    rows = []
    for name in PRESETS:
        for batch in BATCHES:
            features, boxes, mask, attributes = roi_inputs(name, batch, "cuda")
            mask_bytes = mask.view(torch.int8)
            nodes = torch.empty((*boxes.shape[:3], features.shape[1]), device="cuda")
            reference = frame_roi_align_max(features, boxes, mask, *attributes)
            kernels.run_frame_roi_align_max(features, boxes, mask_bytes, nodes, *attributes)
            torch.cuda.synchronize()
            rows.append(
                {
                    "kernel": "FrameRoIAlignMax",
                    "preset": name,
                    "batch": batch,
                    "shape": list(nodes.shape),
                    "max_abs_diff": (nodes - reference).abs().max().item(),
                    "triton_ms": median_ms(
                        partial(
                            kernels.run_frame_roi_align_max, features, boxes, mask_bytes, nodes, *attributes
                        )
                    ),
                    "torch_ms": median_ms(partial(frame_roi_align_max, features, boxes, mask, *attributes)),
                }
            )
            shape = (batch, boxes.shape[1] - 1, boxes.shape[2], boxes.shape[2])
            forward, backward = torch.empty(shape, device="cuda"), torch.empty(shape, device="cuda")
            ref_f, ref_b = space_time_graphs(boxes, mask)
            kernels.run_space_time_graph(boxes, mask_bytes, forward, backward)
            torch.cuda.synchronize()
            rows.append(
                {
                    "kernel": "SpaceTimeGraph",
                    "preset": name,
                    "batch": batch,
                    "shape": list(shape),
                    "max_abs_diff": max(
                        (forward - ref_f).abs().max().item(), (backward - ref_b).abs().max().item()
                    ),
                    "triton_ms": median_ms(
                        partial(kernels.run_space_time_graph, boxes, mask_bytes, forward, backward)
                    ),
                    "torch_ms": median_ms(partial(space_time_graphs, boxes, mask)),
                }
            )
    table(
        "Triton kernels (JIT) against the torch references on the GPU",
        ["kernel", "preset", "batch", "max |diff|", "triton ms", "torch ms"],
        [
            [
                r["kernel"],
                r["preset"],
                r["batch"],
                f"{r['max_abs_diff']:.2e}",
                f"{r['triton_ms']:.3f}",
                f"{r['torch_ms']:.3f}",
            ]
            for r in rows
        ],
    )
    return rows


def _driver():
    from cuda.bindings import driver

    def check(result, what):
        error, *values = result if isinstance(result, tuple) else (result,)
        if int(error) != 0:
            raise RuntimeError(f"{what}: {getattr(error, 'name', error)}")
        return values[0] if len(values) == 1 else values

    return driver, check


def kernel_params(pointers_in, ints, pointers_out, hidden: int) -> tuple[tuple, tuple]:
    """``cuLaunchKernel``'s ``kernelParams`` as cuda-bindings packs them: ((values), (ctypes types)) in
    the order TensorRT passes an AOT plugin's arguments: input pointers, int32 scalars, output pointers,
    then ``hidden`` null scratch pointers. Values are plain ints: cuda-bindings reads a ``c_void_p``
    value through ``.value``, which is None for a null pointer ("an integer is required")."""
    inputs, scalars, outputs = (
        [int(p) for p in pointers_in],
        [int(v) for v in ints],
        [int(p) for p in pointers_out],
    )
    values = (*inputs, *scalars, *outputs, *[0] * hidden)
    types = (
        *[ctypes.c_void_p] * len(inputs),
        *[ctypes.c_int32] * len(scalars),
        *[ctypes.c_void_p] * (len(outputs) + hidden),
    )
    return values, types


def launch_ptx(compiled, params, pointers_in, ints, pointers_out) -> None:
    """Load ``compiled.ptx`` with the driver API and launch it as TensorRT's AOT plugins do: the
    parameters in order (inputs, int32 scalars, outputs) and the hidden scratch pointers null."""
    import torch

    driver, check = _driver()
    torch.cuda.synchronize()  # the primary context is current (torch made it so)
    module = check(driver.cuModuleLoadData(compiled.ptx.encode() + b"\0"), "cuModuleLoadData")
    function = check(driver.cuModuleGetFunction(module, compiled.name.encode()), "cuModuleGetFunction")
    shared_mem = compiled.shared_mem  # what the plugin's aot_impl passes: the compiled kernel's own
    if shared_mem > 48 * 1024:
        attribute = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        check(
            driver.cuFuncSetAttribute(function, attrib=attribute, value=shared_mem),
            "cuFuncSetAttribute",
        )
    hidden = len(compiled.params) - len(pointers_in) - len(ints) - len(pointers_out)
    grid = params.grid
    check(
        driver.cuLaunchKernel(
            function,
            gridDimX=grid[0],
            gridDimY=grid[1],
            gridDimZ=grid[2],
            blockDimX=params.block,
            blockDimY=1,
            blockDimZ=1,
            sharedMemBytes=shared_mem,
            hStream=0,
            kernelParams=kernel_params(pointers_in, ints, pointers_out, hidden),
            extra=0,
        ),
        "cuLaunchKernel",
    )
    check(driver.cuCtxSynchronize(), "cuCtxSynchronize")
    check(driver.cuModuleUnload(module), "cuModuleUnload")


def ptx_row(compiled, preset: str, cc: int, diff: float) -> dict:
    """One row of the ``ptx`` section: the kernel launched for ``preset`` and ``cc``, its difference."""
    return {
        "kernel": compiled.name,
        "preset": preset,
        "cc": cc,
        "params": len(compiled.params),
        "max_abs_diff": diff,
    }


def section_ptx() -> list[dict]:
    needs_cuda()
    import torch

    from strg_deploy.models.graphs import space_time_graphs
    from strg_deploy.models.roi import frame_roi_align_max
    from strg_deploy.plugins import launch, ptx

    major, minor = torch.cuda.get_device_capability(0)
    rows = []
    for name in PRESETS:
        features, boxes, mask, attributes = roi_inputs(name, 2, "cuda", seed=1)
        mask_bytes = mask.view(torch.int8).contiguous()
        spatial_scale, output_size, sampling_ratio = attributes
        for cc in sorted({80, major * 10 + minor}):
            compiled = ptx.compile_kernel(
                launch.ROI_KERNEL,
                cc=cc,
                attributes={
                    "spatial_scale": spatial_scale,
                    "output_size": output_size,
                    "sampling_ratio": sampling_ratio,
                },
            )
            params = launch.roi_launch_params(features.shape, boxes.shape)
            nodes = torch.full((*boxes.shape[:3], features.shape[1]), float("nan"), device="cuda")
            launch_ptx(
                compiled,
                params,
                [features.data_ptr(), boxes.data_ptr(), mask_bytes.data_ptr()],
                launch.roi_extra_args(features.shape, boxes.shape),
                [nodes.data_ptr()],
            )
            diff = (nodes - frame_roi_align_max(features, boxes, mask, *attributes)).abs().max().item()
            rows.append(ptx_row(compiled, name, cc, diff))
            compiled = ptx.compile_kernel(launch.GRAPH_KERNEL, cc=cc)
            params = launch.graph_launch_params(boxes.shape)
            shape = (boxes.shape[0], boxes.shape[1] - 1, boxes.shape[2], boxes.shape[2])
            forward = torch.full(shape, float("nan"), device="cuda")
            backward = torch.full(shape, float("nan"), device="cuda")
            launch_ptx(
                compiled,
                params,
                [boxes.data_ptr(), mask_bytes.data_ptr()],
                launch.graph_extra_args(boxes.shape),
                [forward.data_ptr(), backward.data_ptr()],
            )
            ref_f, ref_b = space_time_graphs(boxes, mask)
            diff = max((forward - ref_f).abs().max().item(), (backward - ref_b).abs().max().item())
            rows.append(ptx_row(compiled, name, cc, diff))
    table(
        "PTX compiled on this machine, launched with cuLaunchKernel as TensorRT would",
        ["kernel", "preset", "cc", ".params", "max |diff|"],
        [[r["kernel"], r["preset"], r["cc"], r["params"], f"{r['max_abs_diff']:.2e}"] for r in rows],
    )
    return rows


def _clips(cfg, batch: int):
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (batch, 3, cfg.frames, cfg.size, cfg.size), dtype=np.uint8)


def _time_pipeline(pipeline, cfg, batch: int, repeats: int = 10) -> tuple[float, object]:
    clips = _clips(cfg, batch)
    result = pipeline.run(clips)
    pipeline.run(clips)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipeline.run(clips)
        times.append(time.perf_counter() - start)
    return 1000 * float(sorted(times)[len(times) // 2]), result


def section_pipeline(work: Path) -> list[dict]:
    needs_cuda()
    import numpy as np
    import torch

    from strg_deploy.config import preset
    from strg_deploy.contract.networks import NETWORKS
    from strg_deploy.engines.pipeline import Pipeline
    from strg_deploy.engines.torch_model import TorchNetwork
    from strg_deploy.models.strg import build_model

    rows = []
    for name in PRESETS:
        torch.manual_seed(0)
        model = build_model(preset(name)).eval()
        cfg = model.cfg
        cuda_model = model.to("cuda")
        chain = Pipeline({n: TorchNetwork(cuda_model, n) for n in NETWORKS}, cfg, "softmax", work)
        reference = {}
        for batch in BATCHES:
            ms, result = _time_pipeline(chain, cfg, batch)
            reference[batch] = result.logits
            rows.append(
                {"preset": name, "backend": "torch cuda", "batch": batch, "ms": ms, "max_logit_diff": 0.0}
            )
        try:
            import onnxruntime

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise RuntimeError("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
            from strg_deploy.export.onnx import ExportOptions, export_model

            folder = work / f"export-{name}"
            export_model(model.to("cpu"), folder, ExportOptions())
            ort = Pipeline.load(folder, "onnxruntime-cuda", device="cuda:0")
            for batch in BATCHES:
                ms, result = _time_pipeline(ort, cfg, batch)
                diff = float(np.abs(result.logits - reference[batch]).max())
                rows.append(
                    {
                        "preset": name,
                        "backend": "onnxruntime cuda",
                        "batch": batch,
                        "ms": ms,
                        "max_logit_diff": diff,
                    }
                )
        except Exception as error:  # noqa: BLE001 - recorded, the script goes on
            rows.append({"preset": name, "backend": "onnxruntime cuda", "skipped": _reason(error)})
        model.to("cpu")
        torch.cuda.empty_cache()
    table(
        "the pipeline (rpn -> backbone -> head) per batch",
        ["preset", "backend", "batch", "ms", "max |logit diff| vs torch"],
        [
            [
                r["preset"],
                r["backend"],
                r.get("batch", "-"),
                f"{r['ms']:.1f}" if "ms" in r else r.get("skipped"),
                f"{r.get('max_logit_diff', float('nan')):.2e}",
            ]
            for r in rows
        ],
    )
    return rows


def strg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True)


def section_tensorrt(work: Path) -> list[dict]:
    needs_cuda()
    try:
        import tensorrt
    except ImportError as error:
        raise RuntimeError(f"TensorRT is not installed ({error})") from None
    from strg_deploy.config import preset
    from strg_deploy.engines.pipeline import Pipeline

    rows = []
    for name in ("tiny", "small"):
        folder = work / f"trt-{name}"
        done = strg("export", "--preset", name, "--out", str(folder))
        if done.returncode:
            rows.append({"preset": name, "step": "export", "error": done.stderr.strip()[-500:]})
            continue
        for precision in ("fp32", "fp16"):
            start = time.perf_counter()
            done = strg("engine", "build", str(folder), "--precision", precision, "--json")
            row = {"preset": name, "precision": precision, "tensorrt": tensorrt.__version__}
            row["build_s"] = round(time.perf_counter() - start, 1)
            if done.returncode:
                rows.append({**row, "step": "build", "error": done.stderr.strip()[-1500:]})
                continue
            verify = strg("verify", str(folder), "--backend", "tensorrt", "--json")
            row["verify_exit"] = verify.returncode
            row["verify"] = verify.stdout[-3000:] or verify.stderr[-1500:]
            try:
                chain = Pipeline.load(folder, "tensorrt")
                for batch in BATCHES:
                    row[f"ms_batch{batch}"], _ = _time_pipeline(chain, preset(name), batch)
            except Exception as error:  # noqa: BLE001
                row["run_error"] = _reason(error)
            rows.append(row)
            # the next precision builds into its own folder; the backend prefers engines-fp16 when present
    table(
        "TensorRT engines",
        ["preset", "precision", "build s", "verify exit", "ms batch 1", "ms batch 8", "error"],
        [
            [
                r["preset"],
                r.get("precision", "-"),
                r.get("build_s", "-"),
                r.get("verify_exit", "-"),
                f"{r['ms_batch1']:.2f}" if "ms_batch1" in r else "-",
                f"{r['ms_batch8']:.2f}" if "ms_batch8" in r else "-",
                (r.get("error") or r.get("run_error") or "")[-120:],
            ]
            for r in rows
        ],
    )
    return rows


def section_nvdec(work: Path) -> list[dict]:
    import av
    import numpy as np

    from strg_deploy.data.gpu_decode import cuda_decode_problem, open_video_cuda
    from strg_deploy.data.video import open_video

    problem = cuda_decode_problem()
    path = work / "1080p.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
        for i in range(150):
            image = np.roll(base, 8 * i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    rows = []
    for kind, opener in (("cpu", open_video), ("cuda", None if problem else open_video_cuda)):
        if opener is None:
            rows.append({"decode": kind, "skipped": problem})
            continue
        for size in (None, (149, 112)):
            with opener(path) as video:
                start = time.perf_counter()
                count = sum(1 for _ in video.frames(size=size))
                seconds = time.perf_counter() - start
            rows.append(
                {
                    "decode": kind,
                    "size": "full" if size is None else f"{size[0]}x{size[1]}",
                    "frames": count,
                    "fps": count / seconds,
                }
            )
    rows.append(_pynvvideocodec_row(path))
    table(
        "decoding a 1080p H.264 clip (150 frames)",
        ["decode", "converted to", "frames", "fps"],
        [
            [
                r["decode"],
                r.get("size", "-"),
                r.get("frames", "-"),
                f"{r['fps']:.0f}" if "fps" in r else r["skipped"],
            ]
            for r in rows
        ],
    )
    return rows


def _pynvvideocodec_row(path: Path) -> dict:
    """NVIDIA's PyNvVideoCodec on the same clip, frames left on the GPU as RGB (the alternative to PyAV's
    hwaccel that keeps frames on the device): decode fps, or why it could not run."""
    try:
        import PyNvVideoCodec as nvc

        decoder = nvc.SimpleDecoder(
            str(path), gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB
        )
        start = time.perf_counter()
        total = len(decoder)
        count = sum(len(decoder[i : i + 32]) for i in range(0, total, 32))
        seconds = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 - recorded, the script goes on
        return {"decode": "pynvvideocodec", "skipped": _reason(error)}
    return {"decode": "pynvvideocodec", "size": "full, on the GPU", "frames": count, "fps": count / seconds}


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-results"))
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        sections = {
            "machine": section_machine,
            "kernels": section_kernels,
            "ptx": section_ptx,
            "pipeline": lambda: section_pipeline(work),
            "tensorrt": lambda: section_tensorrt(work),
            "nvdec": lambda: section_nvdec(work),
        }
        for name, run in sections.items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            try:
                results[name] = run()
            except Exception as error:  # noqa: BLE001 - a section that cannot run says why; the rest go on
                results[name] = {"skipped": _reason(error), "traceback": traceback.format_exc()[-3000:]}
                print(f"\n{name}: skipped: {_reason(error)}")
            results[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
            (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
