"""JSON-lines outputs of `strg infer`: one prediction per window, and action events per stream.

    writer = PredictionWriter(Path("preds.jsonl"), classes, top_k=5, boxes=3)
    events = EventDetector(classes, threshold={"waving": 0.7}, background="none", smoothing=3)
    event_writer = EventWriter(Path("events.jsonl"))
    for result in results:                      # WindowResult, in sequence order per stream
        writer.write(result)
        event_writer.write_all(events.update(result))
    event_writer.write_all(events.finish())     # every stream's open events end with it
    writer.close(); event_writer.close()

Every line is one JSON object (schemas ``strg-infer-prediction`` and ``strg-infer-event``, version
:data:`~strg_deploy.stream.types.SCHEMA_VERSION`), written with ONE ``write`` call on an unbuffered file
and so in the operating system's hands as soon as ``write`` returns. A process killed at any moment
(SIGKILL included) leaves whole lines, plus at most one partial last line without its newline (a kill in
the middle of writing a long line, a full disk, a crash of the machine): readers drop such a last line,
as :func:`read_json_lines` does. Outputs are streamed (readers may follow them while
they grow), not written to a temporary file and renamed: an existing file is refused unless
``overwrite``.

Rounding: probabilities, scores and event statistics to 1e-6 (box scores 1e-4), media and wall times
to 1e-3 s, latency and lag to 1e-3 ms, box coordinates to 0.1 px. A value that is not finite is null.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import sys
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.errors import StrgError
from strg_deploy.fileio import writable_folder
from strg_deploy.stream.types import SCHEMA_VERSION, WindowResult

__all__ = [
    "DEFAULT_THRESHOLD",
    "EVENT_SCHEMA",
    "HYSTERESIS",
    "PREDICTION_SCHEMA",
    "EventDetector",
    "EventWriter",
    "JsonLinesWriter",
    "PredictionWriter",
    "read_json_lines",
    "top_boxes",
]

PREDICTION_SCHEMA = "strg-infer-prediction"
EVENT_SCHEMA = "strg-infer-event"
DEFAULT_THRESHOLD = 0.5
HYSTERESIS = 0.8
"""An open event ends when its smoothed score falls below ``threshold * HYSTERESIS``."""


def _round(value: float, digits: int) -> float | None:
    """``value`` rounded to ``digits`` decimals; None (JSON null) when it is not finite."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


class JsonLinesWriter:
    """One JSON object per line to ``path`` (None: standard output), each line one ``write`` call.

    Refuses an existing file (StrgError naming it) unless ``overwrite``; creates missing folders. The
    file is unbuffered: a line is in the operating system's hands when :meth:`write_record` returns."""

    def __init__(self, path: Path | None, *, overwrite: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.lines = 0
        self._file = None
        if self.path is None:
            return
        if self.path.is_dir():
            raise StrgError(f"cannot write {self.path}: it is a folder (give a file name)")
        writable_folder(self.path.parent)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb" if overwrite else "xb", buffering=0)
        except FileExistsError:
            raise StrgError(f"{self.path} exists; pass --overwrite to replace it") from None
        except OSError as err:
            raise StrgError(f"cannot write {self.path}: {err.strerror or err}") from None

    def write_record(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line (UTF-8, no NaN: callers put None for non-finite values)."""
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        if self._file is None and self.path is not None:
            raise StrgError(f"{self.path} is closed")
        try:
            if self._file is None:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                data = line.encode("utf-8")
                written = self._file.write(data)
                while written < len(data):  # a regular file takes it whole; a pipe or full disk may not
                    written += self._file.write(data[written:])
        except OSError as err:
            raise StrgError(f"cannot write {self.path or 'standard output'}: {err.strerror or err}") from None
        self.lines += 1

    def close(self) -> None:
        """Close the file (standard output stays open). Idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file `strg infer` wrote. A last line without its newline that is not
    valid JSON (what a crash can leave) is dropped; any other line that is not JSON is a StrgError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise StrgError(f"cannot read {path}: {err.strerror or err}") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # the partial last line (no newline after it)
                break
            raise StrgError(f"{path}:{number} is not JSON: {err}") from None
    return records


class PredictionWriter(JsonLinesWriter):
    """Writes one ``strg-infer-prediction`` line per :class:`WindowResult`.

    classes: the model's labels, C of them (the result's ``probabilities`` are float32 [C]).
    top_k: labels per line, by probability (ties: the lower class index first).
    boxes: proposals per feature frame to include (0: no ``boxes`` field).

    Fields: ``schema``, ``version``, ``stream``, ``sequence``, ``start`` / ``end`` (the window's media
    seconds), ``wall_end`` (unix seconds when its last frame arrived), ``top`` ([{"label",
    "probability"}], most probable first), ``boxes`` (only with ``boxes`` > 0: T' lists, one per feature
    frame, of up to ``boxes`` [x1, y1, x2, y2, score] in source pixels, highest score first, padded
    proposals left out), ``latency_ms``, ``lag_ms``, ``batch``."""

    def __init__(
        self,
        path: Path | None,
        classes: Sequence[str],
        top_k: int = 5,
        boxes: int = 0,
        *,
        overwrite: bool = False,
    ) -> None:
        if top_k < 1:
            raise StrgError(f"top-k must be at least 1, got {top_k}")
        if boxes < 0:
            raise StrgError(f"boxes per frame must be 0 or more, got {boxes}")
        if not classes:
            raise StrgError("the model has no class labels")
        self.classes = list(classes)
        self.top_k = min(top_k, len(self.classes))
        self.boxes = boxes
        super().__init__(path, overwrite=overwrite)

    def record(self, result: WindowResult) -> dict[str, Any]:
        """The line's object for ``result`` (what :meth:`write` writes)."""
        probabilities = np.asarray(result.probabilities, dtype=np.float64).reshape(-1)
        if probabilities.shape[0] != len(self.classes):
            raise StrgError(
                f"stream {result.window.stream}: the model gave {probabilities.shape[0]} probabilities "
                f"for {len(self.classes)} class labels"
            )
        order = np.argsort(-np.nan_to_num(probabilities, nan=-np.inf), kind="stable")[: self.top_k]
        window = result.window
        record: dict[str, Any] = {
            "schema": PREDICTION_SCHEMA,
            "version": SCHEMA_VERSION,
            "stream": window.stream,
            "sequence": int(window.sequence),
            "start": _round(window.start, 3),
            "end": _round(window.end, 3),
            "wall_end": _round(window.wall_end, 3),
            "top": [{"label": self.classes[i], "probability": _round(probabilities[i], 6)} for i in order],
        }
        if self.boxes:
            record["boxes"] = top_boxes(result, self.boxes)
        record["latency_ms"] = _round(result.latency * 1000.0, 3)
        record["lag_ms"] = _round(result.lag * 1000.0, 3)
        record["batch"] = int(result.batch)
        return record

    def write(self, result: WindowResult) -> None:
        """Append the line for ``result``."""
        self.write_record(self.record(result))


def top_boxes(result: WindowResult, count: int) -> list[list[list[float | None]]]:
    """Per feature frame, the ``count`` highest-scoring valid proposals of ``result`` as
    [x1, y1, x2, y2, score] (source pixels to 0.1 px, score to 1e-4): a list of T' lists."""
    boxes = np.asarray(result.boxes, dtype=np.float64)  # [T', N, 4]
    scores = np.asarray(result.scores, dtype=np.float64)  # [T', N]
    mask = np.asarray(result.mask, dtype=bool)  # [T', N]
    frames = []
    for t in range(boxes.shape[0]):
        valid = np.flatnonzero(mask[t])
        best = valid[np.argsort(-scores[t, valid], kind="stable")][:count]
        frames.append([[*(_round(v, 1) for v in boxes[t, n]), _round(scores[t, n], 4)] for n in best])
    return frames


class EventWriter(JsonLinesWriter):
    """Writes ``strg-infer-event`` lines (the dicts :class:`EventDetector` returns)."""

    def write(self, event: Mapping[str, Any]) -> None:
        """Append one event."""
        self.write_record(event)

    def write_all(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Append each of ``events``."""
        for event in events:
            self.write_record(event)


class _Open:
    """An event being built: the windows from its first over threshold to its last over threshold, plus
    the windows since in the hysteresis band (kept in ``tail``: they count only if the score rises again)."""

    def __init__(self, start: float, end: float, score: float) -> None:
        self.start, self.end = start, end
        self.scores = [score]
        self.tail: list[float] = []

    def over(self, end: float, score: float) -> None:
        self.scores += self.tail
        self.scores.append(score)
        self.tail = []
        self.end = end


class EventDetector:
    """Turns each stream's window probabilities into action events.

    classes: the model's labels (C). threshold: one for every class, or per class name (classes left out
    take :data:`DEFAULT_THRESHOLD`). background: a class that never makes events (e.g. "no action").
    smoothing: windows in the moving average of each class's probability (1: none). min_windows: events
    over fewer windows are not reported.

    Per stream and class: the smoothed score s is the mean of the last ``smoothing`` windows'
    probabilities. An event starts at the first window with s >= threshold and stays open while
    s >= threshold * :data:`HYSTERESIS`; it ends at the first window below that, or when the stream
    finishes. Its ``start`` / ``end`` are the media seconds of its first and last window with
    s >= threshold (``start`` of the first, ``end`` of the last); ``peak``, ``mean`` and ``windows``
    are over the smoothed scores of the windows between them. Results of one stream must come in
    sequence order (dropped windows may leave gaps); streams are independent.

    Event: {"schema": "strg-infer-event", "version", "stream", "label", "start", "end", "peak", "mean",
    "windows"}."""

    def __init__(
        self,
        classes: Sequence[str],
        threshold: float | Mapping[str, float] = DEFAULT_THRESHOLD,
        background: str | None = None,
        smoothing: int = 3,
        min_windows: int = 1,
    ) -> None:
        self.classes = list(classes)
        if smoothing < 1:
            raise StrgError(f"event smoothing must be at least 1 window, got {smoothing}")
        if min_windows < 1:
            raise StrgError(f"events need at least 1 window, got {min_windows}")
        if background is not None and background not in self.classes:
            raise StrgError(f"background class {background!r} is not one of the model's classes")
        if isinstance(threshold, Mapping):
            unknown = sorted(set(threshold) - set(self.classes))
            if unknown:
                raise StrgError(f"thresholds for unknown classes: {', '.join(map(repr, unknown))}")
            values = [float(threshold.get(c, DEFAULT_THRESHOLD)) for c in self.classes]
        else:
            values = [float(threshold)] * len(self.classes)
        for name, value in zip(self.classes, values, strict=True):
            if not 0.0 < value <= 1.0:
                raise StrgError(f"the event threshold of {name!r} must be in (0, 1], got {value}")
        self.thresholds = np.array(values)
        self.active = np.array([c != background for c in self.classes])
        self.smoothing = smoothing
        self.min_windows = min_windows
        self._history: dict[str, deque[np.ndarray]] = {}
        self._open: dict[str, dict[int, _Open]] = {}

    def update(self, result: WindowResult) -> list[dict[str, Any]]:
        """Take one window's result; return the events of its stream that it ended."""
        stream = result.window.stream
        probabilities = np.asarray(result.probabilities, dtype=np.float64).reshape(-1)
        if probabilities.shape[0] != len(self.classes):
            raise StrgError(
                f"stream {stream}: the model gave {probabilities.shape[0]} probabilities "
                f"for {len(self.classes)} class labels"
            )
        history = self._history.setdefault(stream, deque(maxlen=self.smoothing))
        history.append(np.nan_to_num(probabilities, nan=0.0))
        smoothed = np.mean(history, axis=0)
        events = self._open.setdefault(stream, {})
        finished = []
        start, end = float(result.window.start), float(result.window.end)
        for c in np.flatnonzero(self.active):
            score, threshold = float(smoothed[c]), float(self.thresholds[c])
            event = events.get(c)
            if score >= threshold:
                if event is None:
                    events[c] = _Open(start, end, score)
                else:
                    event.over(end, score)
            elif event is not None:
                if score >= threshold * HYSTERESIS:
                    event.tail.append(score)
                else:
                    finished.append(self._close(stream, int(c), events.pop(c)))
        return [e for e in finished if e is not None]

    def finish(self, stream: str | None = None) -> list[dict[str, Any]]:
        """End the open events of ``stream`` (every stream when None) and forget its history; return
        the events, ordered by stream, then start."""
        names = list(self._open) if stream is None else [stream]
        finished = []
        for name in names:
            for c, event in sorted(self._open.pop(name, {}).items()):
                finished.append(self._close(name, c, event))
            self._history.pop(name, None)
        done = [e for e in finished if e is not None]
        return sorted(done, key=lambda e: (e["stream"], e["start"]))

    def _close(self, stream: str, c: int, event: _Open) -> dict[str, Any] | None:
        if len(event.scores) < self.min_windows:
            return None
        return {
            "schema": EVENT_SCHEMA,
            "version": SCHEMA_VERSION,
            "stream": stream,
            "label": self.classes[c],
            "start": _round(event.start, 3),
            "end": _round(event.end, 3),
            "peak": _round(max(event.scores), 6),
            "mean": _round(sum(event.scores) / len(event.scores), 6),
            "windows": len(event.scores),
        }
