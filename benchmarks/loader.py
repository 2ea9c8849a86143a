"""Loader throughput: training clips per second at the small preset's input size, 2 workers.

Two sources: the synthetic benchmark (generated here into a temporary folder) and the real camera clips
of ../shared/videos (as a class-folder dataset of links, repeated to fill the epoch). Each runs without a
cache (seek + decode per clip) and from the decoded cache (after one pass builds it). The target is at
least twice the small preset's training step throughput (BENCHMARKS.md: 13.4 clips/s for STRG).
Run: ``python benchmarks/loader.py [--videos 240] [--workers 2] [--batch 8]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import print_machine_info, print_table  # noqa: E402

from strg_deploy.config import preset  # noqa: E402
from strg_deploy.data.datasets import read_box_tracks, read_folders, read_something_something_v2  # noqa: E402
from strg_deploy.data.synthetic import generate  # noqa: E402
from strg_deploy.train.data import ClipDataset, make_loader  # noqa: E402

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
CAMERA = [
    "arm_wrestling_h264_340x256.mp4",
    "eye_makeup_mpeg4_mp3_320x240.avi",
    "flower_vp8_vorbis_960x540.webm",
    "people_bw_film_h264_aac_640x480.mp4",
    "sign_language_h264_yuvj420p_640x480.mkv",
]
STEP_CLIPS_PER_S = 13.4  # small preset, STRG training step, batch 8 (benchmarks/train_step.py)


def clips_per_second(dataset: ClipDataset, batch: int, workers: int, epochs: int = 1) -> float:
    """Clips per second over ``epochs`` full passes (after one warm-up batch)."""
    clips, start = 0, None
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        for batch_items in make_loader(dataset, batch, workers=workers, seed=epoch):
            if start is None:
                start = time.perf_counter()
                continue
            clips += batch_items["clip"].shape[0]
    return clips / (time.perf_counter() - start)


def real_clip_dataset(root: Path, copies: int):
    for index, name in enumerate(CAMERA):
        folder = root / f"class{index % 2}"
        folder.mkdir(exist_ok=True)
        for copy in range(copies):
            os.symlink(VIDEOS / name, folder / f"{copy}_{name}")
    return read_folders(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print_machine_info()
    small = preset("small")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "synth", videos_train=args.videos, videos_validation=0, size=112, frames=32)
        synth = read_something_something_v2(tmp / "synth", "train")
        tracks = read_box_tracks(tmp / "synth" / "boxes.jsonl")
        sources = {"synthetic (112 px, 32 frames at 12 fps)": (synth, tracks)}
        if VIDEOS.is_dir():
            (tmp / "real").mkdir()
            copies = max(1, args.videos // len(CAMERA) // 4)
            sources["real camera clips (256-540 px)"] = (real_clip_dataset(tmp / "real", copies), None)
        for label, (data, boxes) in sources.items():
            cfg = small.with_classes(data.classes)
            plain = ClipDataset(data, cfg, train=True, tracks=boxes)
            rate = clips_per_second(plain, args.batch, args.workers)
            rows.append(
                [
                    label,
                    "decode per clip",
                    len(data.records),
                    f"{rate:.1f}",
                    f"{rate / STEP_CLIPS_PER_S:.1f}x",
                ]
            )
            cached = ClipDataset(data, cfg, train=True, tracks=boxes, cache=tmp / f"cache_{len(rows)}")
            start = time.perf_counter()
            for record in data.records:
                cached.cache.load(record.source, fps=record.fps)
            build = time.perf_counter() - start
            rate = clips_per_second(cached, args.batch, args.workers)
            rows.append(
                [
                    label,
                    f"cache (built in {build:.0f} s)",
                    len(data.records),
                    f"{rate:.1f}",
                    f"{rate / STEP_CLIPS_PER_S:.1f}x",
                ]
            )
    print_table(
        f"loader, small preset ({small.frames} x {small.size} px), "
        f"batch {args.batch}, {args.workers} workers",
        ["source", "mode", "videos", "clips/s", "vs training step (target 2x)"],
        rows,
    )


if __name__ == "__main__":
    main()
