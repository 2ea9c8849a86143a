"""Each exported network and the whole 3-network chain on torch eager, onnxruntime and OpenVINO.

Per preset (random weights, exported once into --out/<preset>) and batch: the median time of the rpn
(on the batch's B * T' frames), the backbone, the head and the chain (rpn -> backbone -> head, as
``strg export --check`` runs it), each runtime's speed-up over torch eager, the backbone's achieved
GFLOP/s against the machine's measured fp32 matmul GFLOP/s, and where onnxruntime spends the chain's
time (its profiler, summed per op type). Targets (issue 5): the fastest CPU runtime at least 1.3x torch
eager on the chain; the backbone at least 0.6 of the matmul GFLOP/s.

Run: ``python benchmarks/export_speed.py [--presets small paper-r50] [--batches 1 8] [--repeats 3]
[--threads 2] [--out bench_export]``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import (  # noqa: E402
    count_flops,
    matmul_gflops,
    measure_interleaved,
    print_machine_info,
    print_table,
    steady_allocator,
    verdict,
)

from strg_deploy.config import preset  # noqa: E402
from strg_deploy.contract.manifest import MANIFEST_FILE  # noqa: E402
from strg_deploy.contract.networks import rpn_frames  # noqa: E402
from strg_deploy.engines.pipeline import Pipeline, load_network  # noqa: E402
from strg_deploy.engines.torch_model import TorchNetwork  # noqa: E402
from strg_deploy.export.onnx import NETWORKS, ExportOptions, export_model  # noqa: E402
from strg_deploy.models.strg import STRG  # noqa: E402

RUNTIMES = ("torch", "onnxruntime", "openvino")
PARTS = (*NETWORKS, "chain")


def exported(name: str, out: Path, max_batch: int) -> tuple[STRG, Path]:
    """The preset's model (seed 0) and its export folder (reused when it exists)."""
    torch.manual_seed(0)
    model = STRG(preset(name)).eval()
    folder = out / name
    if not (folder / MANIFEST_FILE).is_file():
        start = time.perf_counter()
        export_model(model, folder, ExportOptions(max_batch=max_batch))
        print(f"{name}: exported in {time.perf_counter() - start:.0f} s", flush=True)
    return model, folder


def inputs_for(model: STRG, batch: int) -> dict[str, dict[str, np.ndarray]]:
    """A random clip batch and each network's inputs for it (the head gets the model's own proposals)."""
    cfg = model.cfg
    g = torch.Generator().manual_seed(batch)
    clip = torch.randint(0, 256, (batch, 3, cfg.frames, cfg.size, cfg.size), dtype=torch.uint8, generator=g)
    with torch.inference_mode():
        features = model.backbone(clip)
        boxes, mask = model.propose(clip)
    return {
        "rpn": {"frames": rpn_frames(clip, cfg.backbone.temporal_stride).numpy()},
        "backbone": {"clip": clip.numpy()},
        "head": {"features": features.numpy(), "boxes": boxes.numpy(), "mask": mask.numpy()},
        "chain": {"clip": clip.numpy()},
    }


def torch_calls(model: STRG, feeds: dict[str, dict[str, np.ndarray]]):
    t = {part: {k: torch.from_numpy(v) for k, v in feed.items()} for part, feed in feeds.items()}

    def infer(fn):
        def run():
            with torch.inference_mode():
                return fn()

        return run

    return {
        "rpn": infer(lambda: model.rpn(t["rpn"]["frames"])),
        "backbone": infer(lambda: model.backbone(t["backbone"]["clip"])),
        "head": infer(lambda: model.head(**t["head"])),
        "chain": infer(lambda: model(t["chain"]["clip"])),
    }


def chain(networks, cfg, folder: Path) -> Pipeline:
    """The pipeline (engines.pipeline) over ``networks``: the one chain every runtime runs."""
    return Pipeline(networks, cfg, "sigmoid" if cfg.multi_label else "softmax", folder)


def runtime_calls(networks, cfg, feeds, folder: Path):
    calls = {name: (lambda name=name: networks[name].run(feeds[name])) for name in NETWORKS}
    calls["chain"] = functools.partial(chain(networks, cfg, folder).run, feeds["chain"]["clip"])
    return calls


def load(runtime: str, folder: Path, threads: int):
    return {n: load_network(runtime, folder / f"{n}.onnx", threads) for n in NETWORKS}


def ort_profile(folder: Path, cfg, feeds, threads: int) -> list[tuple[str, float]]:
    """onnxruntime's profiler over one chain run: milliseconds per op type, largest first."""
    import onnxruntime as ort

    totals: dict[str, float] = collections.defaultdict(float)
    with tempfile.TemporaryDirectory() as tmp:
        for name in NETWORKS:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(tmp, name)
            session = ort.InferenceSession(str(folder / f"{name}.onnx"), options)
            feed = feeds[name]
            session.run(None, feed)  # warm-up
            session.run(None, feed)
            trace = json.loads(Path(session.end_profiling()).read_text())
            runs = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
            for event in runs[len(runs) // 2 :]:  # the second run
                totals[f"{name}:{event['args']['op_name']}"] += event["dur"] / 1e3
    return sorted(totals.items(), key=lambda item: -item[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "paper-r50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("bench_export"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    allocator = steady_allocator()
    reference = max(matmul_gflops() for _ in range(3))  # the best of three: the machine's peak
    print_machine_info(
        allocator=allocator,
        **{"fp32 matmul GFLOP/s (2048^3)": f"{reference:.1f}", "runtime threads": args.threads},
    )
    summary = []
    for name in args.presets:
        model, folder = exported(name, args.out, max(args.batches))
        cfg = model.cfg
        loaded = {rt: load(rt, folder, args.threads) for rt in RUNTIMES[1:]}
        for batch in args.batches:
            feeds = inputs_for(model, batch)
            calls = {"torch": torch_calls(model, feeds)}
            calls.update({rt: runtime_calls(networks, cfg, feeds, folder) for rt, networks in loaded.items()})
            times: dict[str, dict[str, float]] = {rt: {} for rt in RUNTIMES}
            for part in NETWORKS:  # the runtimes interleaved, so that load changes hit them alike
                medians = measure_interleaved(
                    {rt: calls[rt][part] for rt in RUNTIMES}, args.repeats, warmup=1
                )
                for rt, seconds in medians.items():
                    times[rt][part] = seconds
            best = {n: min(RUNTIMES, key=lambda rt, n=n: times[rt][n]) for n in NETWORKS}
            mixed = {n: TorchNetwork(model, n) if rt == "torch" else loaded[rt][n] for n, rt in best.items()}
            chains = {rt: calls[rt]["chain"] for rt in RUNTIMES}
            chains["best per network"] = functools.partial(
                chain(mixed, cfg, folder).run, feeds["chain"]["clip"]
            )
            chain_times = measure_interleaved(chains, args.repeats, warmup=1)
            for rt in RUNTIMES:
                times[rt]["chain"] = chain_times[rt]
            clip = torch.from_numpy(feeds["backbone"]["clip"])
            with torch.inference_mode():
                backbone_flops = count_flops(functools.partial(model.backbone, clip))
            rows = []
            for part in PARTS:
                base = times["torch"][part]
                rows.append(
                    [
                        part,
                        *(f"{1e3 * times[rt][part]:,.1f}" for rt in RUNTIMES),
                        *(f"{base / times[rt][part]:.2f}x" for rt in RUNTIMES[1:]),
                    ]
                )
            print_table(
                f"{name}, batch {batch}: median ms of {args.repeats} runs (runtimes interleaved)",
                ["part", "torch ms", "onnxruntime ms", "OpenVINO ms", "ORT / torch", "OV / torch"],
                rows,
            )
            choice = ", ".join(f"{n} {rt}" for n, rt in best.items())
            print_table(
                f"{name}, batch {batch}: the chain again, with the fastest runtime per network ({choice})",
                ["chain", "ms", "speed-up over torch"],
                [[k, f"{1e3 * v:,.1f}", f"{chain_times['torch'] / v:.2f}x"] for k, v in chain_times.items()],
            )
            fastest = min(RUNTIMES[1:], key=lambda rt: chain_times[rt])
            speedup = chain_times["torch"] / chain_times[fastest]
            fastest_backbone = min(RUNTIMES, key=lambda rt: times[rt]["backbone"])
            gflops = backbone_flops / times[fastest_backbone]["backbone"] / 1e9
            summary.append(
                [
                    name,
                    batch,
                    f"{fastest} {speedup:.2f}x",
                    verdict(speedup >= 1.3),
                    f"{chain_times['torch'] / chain_times['best per network']:.2f}x",
                    f"{fastest_backbone} {gflops:.1f} ({gflops / reference:.2f} of matmul)",
                    verdict(gflops / reference >= 0.6),
                ]
            )
        # the sessions' memory arenas keep the largest batch's activations (tens of GB at paper-r50 batch
        # 8): free them before the profiler's own sessions
        del loaded, calls, chains, mixed
        smallest = min(args.batches)
        profile = ort_profile(folder, cfg, inputs_for(model, smallest), args.threads)
        total = sum(ms for _, ms in profile)
        print_table(
            f"{name}, batch {smallest}: onnxruntime's chain time per op type (its profiler)",
            ["network:op", "ms", "share"],
            [[op, f"{ms:,.1f}", f"{100 * ms / total:.1f}%"] for op, ms in profile[:12]],
        )
    print_table(
        "targets",
        [
            "preset",
            "batch",
            "fastest runtime, chain",
            ">= 1.3x",
            "best per network",
            "backbone GFLOP/s",
            ">= 0.6",
        ],
        summary,
    )


if __name__ == "__main__":
    main()
