"""The checks that need a CUDA GPU, in one run: training on CUDA (float16 autocast with gradient scaling)
is it reproducible with the same seed, how far it lands from the CPU's weights, and throughput.

    python benchmarks/gpu_check.py --work /tmp/gpu-check

Prints one table: run, device, options, seconds, clips/s of the last epoch, top-1, SHA-256 of the last
weights (first 12 hex digits) and the largest weight difference from the first CUDA run. Needs the
`train` extra and a CUDA GPU; the CUDA tests of the suite run too (`pytest -k cuda`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def strg(*args: str) -> tuple[float, str]:
    """Run `python cli.py ARGS`; returns its wall time in seconds and its stderr (raises on failure)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"cli.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stderr


def weights(run: Path):
    from safetensors.torch import load_file

    return load_file(str(run / "last" / "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Scratch folder.")
    parser.add_argument("--videos", type=int, default=64, help="Training videos of the synthetic set.")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
    data = args.work / "synth"
    strg("data", "synth", str(data), "--train", str(args.videos), "--validation", "16", "--workers", "8")
    base = ["--data", str(data), "--boxes", str(data / "boxes.jsonl"), "--preset", "small"]
    base += ["--epochs", str(args.epochs), "--seed", "5", "--workers", "4"]
    runs = [("cuda-a", ["--device", "cuda"]), ("cuda-b", ["--device", "cuda"]), ("cpu", ["--device", "cpu"])]
    rows = []
    reference = None
    notes = set()
    for name, extra in runs:
        run = args.work / name
        seconds, stderr = strg("train", *base, "--out", str(run), *extra)
        notes |= {line.strip() for line in stderr.splitlines() if "determinis" in line}
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        tensors = weights(run)
        reference = reference or tensors
        diff = max((tensors[k].double() - reference[k].double()).abs().max().item() for k in tensors)
        digest = hashlib.sha256((run / "last" / "model.safetensors").read_bytes()).hexdigest()[:12]
        rows.append(
            (
                name,
                " ".join(extra),
                f"{seconds:.1f}",
                f"{metrics[-1]['train_clips_per_second']:.1f}",
                f"{100 * metrics[-1]['top1']:.1f}",
                digest,
                f"{diff:.2e}",
            )
        )
    header = ("run", "device", "seconds", "clips/s", "top1", "sha256", "max |w - cuda-a|")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "cuda",
            "tests/test_loop.py",
            "tests/test_cli_trust.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    print(tests.stdout[-2000:], tests.stderr[-1000:])
    print("warnings about determinism:", *sorted(notes) or ["none"], sep="\n  ")


if __name__ == "__main__":
    main()
