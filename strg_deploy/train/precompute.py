"""Precomputed proposals: one file holding the region proposals of every frame of a dataset, and the
code that computes, writes and reads it (as fixed-N proposals, or as box tracks for training).

:func:`write_precomputed` writes the file and :class:`PrecomputedBoxes` reads it (format below).
:func:`precompute_proposals` decodes every frame of every video, runs the RPN (:class:`RegionProposer`)
on them in batches and writes one file (version 2): per video the boxes of each frame in the pixels of
the video's stored frames, with the frame rate that places frame index i at i / fps seconds and the
frame size.

:func:`precomputed_tracks` reads such a file as ``{video id: BoxTracks}``, lazily, so that
``ClipDataset(..., tracks=precomputed_tracks(path, cfg.proposals.num_boxes))`` trains STRG on the
proposals through exactly the path of ground-truth boxes: the same frame choice (the frame nearest to
each sampled time), the same scaling to the decoded size, crops and flips.

Precomputed file format (safetensors, no pickle): for each video id ``V`` the tensors

    ``V/frame_index``  int64 [F]        the frames that have boxes (unique)
    ``V/boxes``        float32 [F, K, 4] x1, y1, x2, y2 in the pixels of the frames the boxes were made on
    ``V/scores``       float32 [F, K]
    ``V/mask``         bool [F, K]      which of the K entries are boxes
    ``V/fps``          float64 [1]      frame rate: frame index i is the frame shown at i / fps seconds
    ``V/size``         int64 [2]        width, height of the frames the box coordinates refer to

and the header metadata ``{"format": "strg-proposals", "version": "2"}``. Version 1 files lack ``fps``
and ``size`` (in version 2 every video has both); :class:`PrecomputedBoxes` reads both versions. Video
ids may contain any character, "/" included (the tensor name is split at its last "/").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from strg_deploy.data.cache import duration_of
from strg_deploy.data.datasets import BoxTracks, VideoRecord
from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError, shape_error
from strg_deploy.models.proposals import Proposals, RegionProposer, pad_to_n

__all__ = [
    "PRECOMPUTED_FORMAT",
    "PRECOMPUTED_VERSION",
    "PRECOMPUTED_VERSIONS",
    "PrecomputedBoxes",
    "PrecomputedTracks",
    "UnknownVideo",
    "precompute_proposals",
    "precomputed_tracks",
    "write_precomputed",
]

PRECOMPUTED_FORMAT = "strg-proposals"
PRECOMPUTED_VERSION = "2"  # the version write_precomputed writes when the videos carry fps and size
PRECOMPUTED_VERSIONS = ("1", "2")  # the versions PrecomputedBoxes reads
_FIELDS = ("frame_index", "boxes", "scores", "mask")
_FRAME_FIELDS = ("fps", "size")  # version 2 only


def _listing(keys: Sequence[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")


def _entry_tensors(video_id: str, entry: Mapping[str, Any]) -> dict[str, Tensor]:
    unknown = set(entry) - set(_FIELDS) - set(_FRAME_FIELDS)
    if unknown or "boxes" not in entry or "frame_index" not in entry:
        raise StrgError(
            f"precomputed boxes of video {video_id!r}: need keys frame_index and boxes (optional scores, "
            f"mask, and fps with size), got {sorted(entry)}"
        )
    if ("fps" in entry) != ("size" in entry):
        raise StrgError(f"precomputed boxes of video {video_id!r}: give fps and size together, or neither")
    boxes = torch.as_tensor(entry["boxes"], dtype=torch.float32)
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise shape_error(f"precomputed boxes of video {video_id!r}", "[F, K, 4]", tuple(boxes.shape))
    f, k = boxes.shape[:2]
    frame_index = torch.as_tensor(entry["frame_index"], dtype=torch.int64)
    if frame_index.shape != (f,):
        raise shape_error(f"frame_index of video {video_id!r}", f"[{f}]", tuple(frame_index.shape))
    if frame_index.unique().numel() != f:
        raise StrgError(f"frame_index of video {video_id!r} repeats a frame")
    scores = torch.as_tensor(entry.get("scores", torch.ones(f, k)), dtype=torch.float32)
    mask = torch.as_tensor(entry.get("mask", torch.ones(f, k, dtype=torch.bool)), dtype=torch.bool)
    for name, t in (("scores", scores), ("mask", mask)):
        if t.shape != (f, k):
            raise shape_error(f"{name} of video {video_id!r}", f"[{f}, {k}]", tuple(t.shape))
    out = {"frame_index": frame_index, "boxes": boxes, "scores": scores, "mask": mask}
    if "fps" in entry:
        fps = torch.as_tensor(entry["fps"], dtype=torch.float64).reshape(-1)
        if fps.shape != (1,) or not (torch.isfinite(fps).all() and fps[0] > 0):
            raise StrgError(f"fps of video {video_id!r} must be one positive number, got {fps.tolist()}")
        size = torch.as_tensor(entry["size"]).reshape(-1)
        if size.shape != (2,) or size.is_floating_point() or not (size > 0).all():
            raise StrgError(
                f"size of video {video_id!r} must be two positive integers (width, height), "
                f"got {size.tolist()}"
            )
        out.update(fps=fps, size=size.to(torch.int64))
    return out


def write_precomputed(path: str | Path, entries: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write precomputed boxes atomically in the format of this module's docstring.

    entries: video id -> {"frame_index": [F] int, "boxes": [F, K, 4], "scores": [F, K] (default 1),
    "mask": [F, K] bool (default all True), "fps": float or [1], "size": (width, height)}; arrays or
    tensors. ``dict(frame_index=idx, **proposals._asdict())`` stores a RegionProposer's output. With fps
    and size for every video the file is version 2, without them for any video version 1 (mixing both
    raises StrgError). Returns ``path``.
    """
    from strg_deploy.models.serialization import save_tensors

    path = Path(path)
    tensors = {}
    with_frames = set()
    for video_id, entry in entries.items():
        fields = _entry_tensors(str(video_id), entry)
        with_frames.add("fps" in fields)
        for name, t in fields.items():
            tensors[f"{video_id}/{name}"] = t.detach().cpu().contiguous()
    if len(with_frames) > 1:
        raise StrgError("precomputed boxes: give fps and size for every video or for none")
    version = PRECOMPUTED_VERSION if with_frames == {True} else "1"
    metadata = {"format": PRECOMPUTED_FORMAT, "version": version}
    return save_tensors(tensors, path, metadata)


class PrecomputedBoxes:
    """Boxes read from a file written by :func:`write_precomputed`, as fixed-N :class:`Proposals`.

    ``source(video_id, frame_indices)`` -> boxes [F, N, 4], scores [F, N], mask [F, N] for the frames
    asked for, in that order; each frame keeps its first N valid boxes in stored order. A missing file,
    video or frame raises StrgError naming it. Only the file's header is read on construction; tensors
    are read lazily, one video at a time, through a handle each process opens for itself (the source
    pickles without it, so it can go to data-loader worker processes). ``version``: the file's format
    version ("1" or "2"; see the module docstring).
    """

    def __init__(self, path: str | Path, num_boxes: int):
        if num_boxes <= 0:
            raise StrgError(f"num_boxes must be positive, got {num_boxes}")
        self.path = Path(path)
        self.num_boxes = num_boxes
        if not self.path.is_file():
            raise StrgError(f"precomputed boxes not found: {self.path}")
        self._handle: Any = None
        self._pid: int | None = None
        metadata = self._file().metadata() or {}
        if metadata.get("format") != PRECOMPUTED_FORMAT:
            raise StrgError(f"{self.path} is not a precomputed-boxes file (metadata {json.dumps(metadata)})")
        if metadata.get("version") not in PRECOMPUTED_VERSIONS:
            raise StrgError(
                f"precomputed boxes {self.path} have format version {metadata.get('version')}, "
                f"this version reads {', '.join(PRECOMPUTED_VERSIONS)}"
            )
        self.version: str = metadata["version"]

    def _file(self) -> Any:
        """This process's open safetensors handle of the file (opened on first use in each process)."""
        import os

        from safetensors import safe_open

        if self._handle is None or self._pid != os.getpid():
            try:
                self._handle = safe_open(str(self.path), framework="pt")
            except Exception as err:  # safetensors raises its own error types for damaged headers
                raise StrgError(f"cannot read precomputed boxes {self.path}: {err}") from None
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_handle=None, _pid=None)
        state.pop("videos", None)
        return state

    @functools.cached_property
    def videos(self) -> tuple[str, ...]:
        """Every video id in the file, sorted (reads the tensor names of the whole header)."""
        return tuple(sorted({k.rsplit("/", 1)[0] for k in self._file().keys()}))

    def has(self, video_id: str) -> bool:
        """Whether the file holds boxes of ``video_id`` (one name lookup, no tensor read)."""
        try:
            self._file().get_slice(f"{video_id}/boxes")
        except Exception:  # safetensors' error for an absent name
            return False
        return True

    def stored(self, video_id: str) -> dict[str, Tensor]:
        """The stored tensors of one video, every box of every stored frame (not cut to N): the fields of
        the module docstring (fps and size in version 2 files only). StrgError when the file has no such
        video."""
        if not self.has(video_id):
            raise StrgError(f"precomputed boxes {self.path} have no video {video_id!r}")
        f = self._file()
        names = _FIELDS + (_FRAME_FIELDS if self.version != "1" else ())
        return {name: f.get_tensor(f"{video_id}/{name}") for name in names}

    def __call__(self, video_id: str, frame_indices: Sequence[int] | Tensor) -> Proposals:
        data = self.stored(video_id)
        wanted = torch.as_tensor(frame_indices, dtype=torch.int64).reshape(-1)
        row_of = {int(v): i for i, v in enumerate(data["frame_index"].tolist())}
        absent = [int(i) for i in wanted.tolist() if int(i) not in row_of]
        if absent:
            raise StrgError(
                f"precomputed boxes {self.path} have no frame(s) {_listing([str(i) for i in absent], 8)} "
                f"of video {video_id!r} (it has {len(row_of)} frames)"
            )
        rows = torch.tensor([row_of[int(i)] for i in wanted.tolist()], dtype=torch.int64)
        return pad_to_n(data["boxes"][rows], data["mask"][rows], self.num_boxes, data["scores"][rows])


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
