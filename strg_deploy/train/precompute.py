"""Region proposals computed once for a whole dataset, and read back as box tracks for training.

:func:`precompute_proposals` decodes every frame of every video, runs the RPN (:class:`RegionProposer`)
on them in batches and writes one file in the precomputed-boxes format (version 2, see
:mod:`strg_deploy.models.proposals`): per video the boxes of each frame in the pixels of the video's
stored frames, with the frame rate that places frame index i at i / fps seconds and the frame size.

:func:`precomputed_tracks` reads such a file as ``{video id: BoxTracks}``, lazily, so that
``ClipDataset(..., tracks=precomputed_tracks(path, cfg.proposals.num_boxes))`` trains STRG on the
proposals through exactly the path of ground-truth boxes: the same frame choice (the frame nearest to
each sampled time), the same scaling to the decoded size, crops and flips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from strg_deploy.data.cache import duration_of
from strg_deploy.data.datasets import BoxTracks, VideoRecord
from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError
from strg_deploy.models.proposals import PrecomputedBoxes, RegionProposer, pad_to_n, write_precomputed

__all__ = ["PrecomputedTracks", "UnknownVideo", "precompute_proposals", "precomputed_tracks"]


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _video_proposals(
    record: VideoRecord, proposer: RegionProposer, batch_frames: int, device: torch.device
) -> dict[str, np.ndarray]:
    """One video's entry of the file: every frame decoded at the proposer's S x S, proposals scaled
    back to the stored frame size (W, H): boxes float32 [F, N, 4], scores [F, N], mask [F, N],
    frame_index int64 [F], fps float64 [1], size int64 [2] = (W, H)."""
    side = proposer.size
    with open_video(record.source, fps=record.fps) as reader:
        width, height = reader.size
        fps = record.fps or reader.nominal_fps
        scale = torch.tensor([width / side, height / side] * 2, dtype=torch.float32)
        batch = np.empty((batch_frames, side, side, 3), dtype=np.uint8)
        times: list[float] = []
        parts: list[tuple[torch.Tensor, ...]] = []

        def run(count: int) -> None:
            frames = torch.from_numpy(batch[:count]).permute(0, 3, 1, 2).contiguous().to(device)
            out = proposer(frames)
            parts.append((out.boxes.cpu() * scale, out.scores.cpu(), out.mask.cpu()))

        filled = 0
        for frame in reader.frames(size=(side, side)):
            batch[filled] = frame.image
            times.append(frame.time)
            filled += 1
            if filled == batch_frames:
                run(filled)
                filled = 0
        if filled:
            run(filled)
        if not fps:
            fps = len(times) / (record.duration or reader.duration or duration_of(np.asarray(times)))
    boxes, scores, mask = (torch.cat(p).numpy() for p in zip(*parts, strict=True))
    # frame index = the frame's place on the 1 / fps grid: 0..F-1 for a regular video, and a damaged
    # (dropped) frame or a variable frame rate does not shift the frames after it
    index = np.rint(np.asarray(times) * fps).astype(np.int64)
    index, rows = np.unique(index, return_index=True)  # times never go backwards: the first of a tie
    return {
        "frame_index": index,
        "boxes": boxes[rows],
        "scores": scores[rows],
        "mask": mask[rows],
        "fps": np.array([fps], dtype=np.float64),
        "size": np.array([width, height], dtype=np.int64),
    }


def precompute_proposals(
    records: Sequence[VideoRecord],
    proposer: RegionProposer,
    out: str | Path,
    *,
    batch_frames: int = 64,
    device: str | torch.device = "cpu",
    on_video: Callable[[int, int], None] | None = None,
) -> Path:
    """Run ``proposer`` on every frame of every video of ``records`` and write one precomputed-boxes
    file (version 2, atomically) at ``out``.

    Each video is decoded in full (``open_video(record.source, fps=record.fps)``), every frame resized
    to the proposer's S x S (the whole frame, aspect not kept) and fed to it in batches of
    ``batch_frames`` frames (eval mode, no gradients; only one batch of decoded frames is held). Boxes
    are scaled back to the video's stored frame size (x by W / S, y by H / S). Per video the file holds
    boxes float32 [F, N, 4], scores [F, N], mask [F, N], frame_index [F] (0..F-1 for a regular video: a
    frame's time x fps, rounded), fps (``record.fps``, else the stream's nominal rate, else F / duration)
    and size (W, H). A video id repeated in ``records`` is computed once (its first record).

    ``proposer`` is moved to ``device``; its train/eval mode is restored afterwards. ``on_video(done,
    total)`` is called after every video. An unreadable video raises StrgError naming it; nothing is
    written then. Returns ``out``.
    """
    if batch_frames < 1:
        raise StrgError(f"batch_frames must be >= 1, got {batch_frames}")
    unique: dict[str, VideoRecord] = {}
    for record in records:
        unique.setdefault(record.video_id, record)
    if not unique:
        raise StrgError("no videos to compute proposals for")
    device = torch.device(device)
    training = proposer.training
    proposer.to(device).eval()
    entries = {}
    try:
        with torch.no_grad():
            for done, (video_id, record) in enumerate(unique.items(), 1):
                try:
                    entries[video_id] = _video_proposals(record, proposer, batch_frames, device)
                except StrgError as err:
                    raise StrgError(
                        f"cannot compute proposals of video {video_id!r}: {_one_line(err)}"
                    ) from None
                if on_video is not None:
                    on_video(done, len(unique))
    finally:
        proposer.train(training)
    return write_precomputed(out, entries)


class UnknownVideo(StrgError, KeyError):
    """A video id the precomputed file does not hold (a KeyError too, as a Mapping's lookups need)."""

    __str__ = StrgError.__str__


class PrecomputedTracks(Mapping[str, BoxTracks]):
    """A version-2 precomputed-boxes file as a read-only ``{video id: BoxTracks}`` mapping.

    Values are read when looked up (one video at a time); ``in`` looks a name up in the file's header,
    ``len`` and iteration list the header's video ids once. Each value is ``BoxTracks(video_id, fps,
    width, height, boxes float32 [F, N, 4], valid bool [F, N], objects=())`` with N = ``num_boxes``
    (each frame's first N valid proposals, highest score first) and F = the largest stored frame index
    + 1; a frame index the file lacks (a frame the decoder dropped) takes the boxes of the frame before
    it. Pickles without its open file, so DataLoader worker processes reopen it.
    """

    def __init__(self, path: str | Path, num_boxes: int):
        self.source = PrecomputedBoxes(path, num_boxes)
        if self.source.version == "1":
            raise StrgError(
                f"precomputed boxes {self.source.path} are in format version 1, without the frame rates "
                "and frame sizes training needs: recompute them (strg proposals DATA --out FILE)"
            )
        self.path = self.source.path
        self.num_boxes = num_boxes

    def __getitem__(self, video_id: str) -> BoxTracks:
        if not isinstance(video_id, str) or not self.source.has(video_id):
            raise UnknownVideo(f"precomputed boxes {self.path} have no video {video_id!r}")
        data = self.source.stored(video_id)
        frame_index = data["frame_index"].numpy()
        if frame_index.size == 0:
            raise StrgError(f"precomputed boxes {self.path} hold no frames of video {video_id!r}")
        order = np.argsort(frame_index, kind="stable")
        stored = frame_index[order]
        # for each frame index 0..F-1 the stored row at or before it (the first row before the first)
        rows = order[np.maximum(np.searchsorted(stored, np.arange(stored[-1] + 1), side="right") - 1, 0)]
        rows = torch.from_numpy(rows)
        fixed = pad_to_n(data["boxes"][rows], data["mask"][rows], self.num_boxes, data["scores"][rows])
        width, height = (int(v) for v in data["size"].tolist())
        return BoxTracks(
            video_id,
            float(data["fps"][0]),
            width,
            height,
            fixed.boxes.numpy(),
            fixed.mask.numpy(),
        )

    def __contains__(self, video_id: object) -> bool:
        return isinstance(video_id, str) and self.source.has(video_id)

    def __iter__(self) -> Iterator[str]:
        return iter(self.source.videos)

    def __len__(self) -> int:
        return len(self.source.videos)

    def __repr__(self) -> str:
        return f"PrecomputedTracks({str(self.path)!r}, num_boxes={self.num_boxes})"


def precomputed_tracks(path: str | Path, num_boxes: int) -> PrecomputedTracks:
    """The proposals of a file written by :func:`precompute_proposals` as box tracks with ``num_boxes``
    boxes per frame (see :class:`PrecomputedTracks`). A missing or unreadable file, a file of another
    kind or of format version 1 raises StrgError."""
    return PrecomputedTracks(path, num_boxes)
