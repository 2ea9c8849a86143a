"""Loading clips for training and evaluation: a torch Dataset over the dataset readers' records.

Each item samples T frame times (the paper's span sampling, or dense), reads the frames from the decoded
cache (:class:`~strg_deploy.data.cache.ClipCache`) or straight from the file (seek + decode at the
cache's short side with FFmpeg's scaler), applies the train or eval transform to the frames and their
ground-truth boxes together, and returns::

    clip    uint8  [3, T, S, S]     (the model normalises inside)
    target  int64  []  or float32 [C] (single- or multi-label, for the clip's time span)
    boxes   float32 [T', N, 4]      (only with box tracks: boxes of input frames stride * t, padded to N)
    mask    bool   [T', N]
    video   int64  []               (record index: scores of several views average per video)
    skipped int64  []               (1 when the item's own video could not be read and the next readable
                                     one took its place; 0 normally)

An epoch's ``skipped`` values sum to the number of its videos that could not be read: a video is counted
by its own item only, not again by every item that passes over it while looking for a replacement. A
decoded-clip cache entry that cannot be read is rebuilt from its video (see ClipCache); a cache that
cannot be written raises CacheError at once, never counted as an unreadable video.

Randomness is seeded per (seed, epoch, item), so a run is reproducible whatever the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from strg_deploy.config import ModelConfig
from strg_deploy.data.cache import CacheError, ClipCache, DecodedVideo, Notice, duration_of, short_side_size
from strg_deploy.data.datasets import BoxTracks, Dataset, VideoRecord
from strg_deploy.data.sampling import SamplingConfig, View, test_views
from strg_deploy.data.transforms import EvalTransform, TrainTransform
from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError
from strg_deploy.models.proposals import pad_to_n
from strg_deploy.processes import loader_worker_init


@dataclass(frozen=True)
class LoaderConfig:
    """How clips are read: sampling, the decode short side, the eval resize, views per video."""

    sampling: str = "paper"  # "paper" (T frames over span_seconds) or "dense" (fixed frame stride)
    stride: int = 2  # dense sampling's frame stride
    short_side: int | None = None  # decode / cache short side; default round(size * 8 / 7)
    temporal_clips: int = 1  # evaluation views per video: K temporal clips ...
    spatial_crops: int = 1  # ... times 1 or 3 spatial crops
    scale: tuple[float, float] = (0.25, 1.0)  # random resized crop area range


class ClipDataset(torch.utils.data.Dataset):
    """Clips of a :class:`Dataset` for a model config; see the module docstring for the items.

    train=True: one random clip per video per epoch (random span, random resized crop, flip where the
    dataset allows it). train=False: ``temporal_clips * spatial_crops`` fixed views per video.
    cache: a ClipCache or its folder; on_notice: receives the one line that says a cache entry could not
    be read and was rebuilt (see ClipCache; default: a ``warning:`` line on stderr).
    """

    def __init__(
        self,
        dataset: Dataset,
        cfg: ModelConfig,
        *,
        train: bool,
        loader: LoaderConfig = LoaderConfig(),
        tracks: dict[str, BoxTracks] | None = None,
        cache: ClipCache | str | Path | None = None,
        seed: int = 0,
        on_notice: Notice | None = None,
    ):
        if dataset.num_classes != cfg.num_classes:
            raise StrgError(
                f"the data has {dataset.num_classes} classes, the model config {cfg.num_classes}: "
                "build the config with cfg.with_classes(dataset.classes)"
            )
        self.dataset = dataset
        self.cfg = cfg
        self.train = train
        self.loader = loader
        if tracks is not None:
            missing = [r.video_id for r in dataset.records if r.video_id not in tracks]
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise StrgError(f"the box tracks lack {len(missing)} of the {len(dataset)} videos ({shown})")
        self.tracks = tracks
        self.seed = seed
        self.epoch = 0
        self.short_side = loader.short_side or round(cfg.size * 8 / 7)
        if isinstance(cache, (str, Path)):
            cache = ClipCache(cache, self.short_side, on_notice=on_notice)
        self.cache = cache
        self.sampling = SamplingConfig(
            mode=loader.sampling, frames=cfg.frames, span_seconds=cfg.span_seconds, stride=loader.stride
        )
        if train:
            self.transform = TrainTransform(cfg.size, scale=loader.scale, allow_flip=dataset.allow_flip)
        else:
            self.transform = EvalTransform(cfg.size, resize=self.short_side)
        self.views_per_video = 1 if train else loader.temporal_clips * loader.spatial_crops

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random clips the next iteration draws (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset.records) * self.views_per_video

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        """The item's sample. In training an unreadable video is replaced by the next readable one and
        ``skipped`` (int64 []) is 1 for the item whose own video failed (each unreadable video counts
        once), so the loop can count them across workers and stop when too many fail; in evaluation an
        unreadable video is an error. A CacheError (the cache's fault, not the video's) is raised at once."""
        video_index, view_index = divmod(item, self.views_per_video)
        records = self.dataset.records
        attempts = len(records) if self.train else 1
        for attempt in range(attempts):
            index = (video_index + attempt) % len(records)
            try:
                sample = self._sample(index, item, view_index)
            except CacheError:
                raise
            except StrgError:
                if attempt + 1 == attempts:
                    raise
                continue
            sample["skipped"] = torch.tensor(int(attempt > 0))
            return sample
        raise AssertionError("unreachable")

    def _sample(self, video_index: int, item: int, view_index: int) -> dict[str, torch.Tensor]:
        record = self.dataset.records[video_index]
        rng = np.random.default_rng([self.seed, self.epoch, item]) if self.train else None
        frames, times, duration = self._read(record, rng, view_index)
        boxes, mask = self._boxes(record, times, frames.shape[2], frames.shape[1])
        if self.train:
            frames, boxes, mask = self.transform(frames, boxes, mask, rng=rng)
        else:
            crop = self._view(duration, view_index).crop
            frames, boxes, mask = self.transform(frames, boxes, mask, crop=crop)
        sample = {
            "clip": torch.from_numpy(np.ascontiguousarray(frames.transpose(3, 0, 1, 2))),
            "target": torch.as_tensor(self.dataset.targets(record, float(times[0]), float(times[-1]))),
            "video": torch.tensor(video_index),
        }
        if boxes is not None:
            stride = self.cfg.backbone.temporal_stride
            padded = pad_to_n(
                torch.from_numpy(np.ascontiguousarray(boxes[::stride])),
                torch.from_numpy(np.ascontiguousarray(mask[::stride])),
                self.cfg.proposals.num_boxes,
            )
            sample["boxes"], sample["mask"] = padded.boxes, padded.mask
        return sample

    def _view(self, duration: float, view_index: int) -> View:
        views = test_views(
            duration,
            self.cfg.frames,
            self.cfg.span_seconds,
            self.loader.temporal_clips,
            self.loader.spatial_crops,
        )
        return views[view_index]

    def _times(self, duration: float, fps: float | None, rng, view_index: int) -> np.ndarray:
        if self.train or self.sampling.mode == "dense":
            return self.sampling.times(duration, fps, rng=rng, position=0.5)
        return self._view(duration, view_index).times

    def _read(self, record: VideoRecord, rng, view_index: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(frames uint8 [T, H, W, 3] at the short side, frame times float64 [T], video duration)."""
        if self.cache is not None:
            video: DecodedVideo = self.cache.load(record.source, fps=record.fps)
            fps = len(video.times) / video.duration if video.duration else None
            times = self._times(video.duration, fps, rng, view_index)
            frames, frame_times = video.at(times)
            return frames, frame_times, video.duration
        with open_video(record.source, fps=record.fps, threads=1) as reader:
            duration = record.duration or reader.duration
            if not duration:
                duration = duration_of(reader.frame_times())
            times = self._times(duration, reader.nominal_fps or record.fps, rng, view_index)
            clip = reader.read_at(times, size=short_side_size(*reader.size, self.short_side))
        return clip.images, clip.times, duration

    def _boxes(self, record: VideoRecord, times: np.ndarray, width: int, height: int):
        """Ground-truth boxes at the picked frames, scaled to the decoded size: ([T, K, 4], [T, K])."""
        if self.tracks is None:
            return None, None
        track = self.tracks.get(record.video_id)
        if track is None:
            raise StrgError(f"no ground-truth boxes for video {record.video_id!r}")
        boxes, valid = track.boxes_at_times(times)
        scale = np.array([width / track.width, height / track.height] * 2, dtype=np.float32)
        return boxes * scale, valid


def make_loader(
    dataset: ClipDataset, batch_size: int, *, workers: int = 2, shuffle: bool | None = None, seed: int = 0
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (shuffled when training), with a seeded shuffle order."""
    shuffle = dataset.train if shuffle is None else shuffle
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=generator,
        drop_last=dataset.train,
        persistent_workers=False,
        worker_init_fn=loader_worker_init(),
        pin_memory=False,
    )
