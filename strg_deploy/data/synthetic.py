"""A synthetic relational video benchmark in the spirit of Something-Something.

Every clip shows two main objects A and B (one, A, in the single-object classes) and 1-3 distractors on a
textured background; the class depends only on how the objects move and relate over time. Seeded: the
same arguments give byte-identical annotations and identical decoded frames, whatever the worker count.

Classes (index: template; A and B are filled in as "<colour> <shape>")
----------------------------------------------------------------------
Seven pairs; in each pair the odd class is the exact time reversal of the even one.

 0 ``Moving [A] from left to right``: A travels 0.35-0.75 of the free width rightwards (vertical drift at
   most 0.1 of the frame), from a start drawn uniformly where the whole path fits.
 1 ``Moving [A] from right to left``: the reversal of 0.
 2 ``Moving [A] closer to [B]``: B stays; A moves straight towards B, from a centre distance 0.25-0.55
   of the frame farther to a final gap of 0.04-0.12 (they never touch).
 3 ``Moving [A] away from [B]``: the reversal of 2.
 4 ``Moving [A] and [B] closer to each other``: both move, towards each other along one line, A doing
   30-70 % of the closing; they end with a gap of 0.04-0.12.
 5 ``Moving [A] and [B] away from each other``: the reversal of 4.
 6 ``Putting [A] onto [B]``: B is a large flat shape (square, circle, pentagon or hexagon); A, smaller
   than B's inscribed circle and drawn above B, starts beside B and ends lying inside B's outline.
 7 ``Taking [A] off [B]``: the reversal of 6.
 8 ``Hiding [A] behind [B]``: B is a large occluder drawn above A; A starts beside B and moves until it
   lies inside B's outline, where it is completely hidden (its boxes become null).
 9 ``Taking [A] out from behind [B]``: the reversal of 8.
10 ``Picking [B] up with [A]``: B rests; A moves to B until their outlines touch (exact contact along
   the line of motion), then A and B move on together, rigidly, in a random direction.
11 ``Dropping [B] off with [A]``: the reversal of 10 (they move together, stop, A leaves alone).
12 ``[A] appearing``: A stands still; its opacity ramps from 0 to 1 over 5-25 % of the clip, starting
   between 15 % and 60 % of the clip.
13 ``[A] disappearing``: the reversal of 12.

Each motion follows a progress curve that is 0 before a start time (0-35 % of the clip), 1 after an end
time (65-100 %; two consecutive phases in 10/11), linear or smoothstep in between, so speeds vary with
the distances and durations drawn. Shapes (square, rectangle, circle, triangle, pentagon, hexagon, with a
random rotation), colours (12 named colours, jittered; A, B and distractors never share a colour name),
sizes and positions are random. Distractors start anywhere, drift at most 0.12 of the frame in a straight
line, never interact and are drawn beneath A and B. Backgrounds are value noise, gradients, stripes or
rotated checkers between two random muted colours, with a static grain. With ``pan`` the camera moves at
constant velocity (0.04-0.1 of the frame over the clip) and everything, background included, moves with
it; the trajectories above are in the coordinates of the background.

Why no single frame tells a pair apart
--------------------------------------
A clip of the odd class of a pair is made by drawing an independent clip of the even class with the same
sampler (same distributions of every attribute, background, distractor and camera path) and reversing the
order of its frames: every time-dependent quantity (positions, opacity, camera offset) is reversed, nothing
else changes. A frame is rendered from the state of its own instant only (no motion blur, no trails, no
temporal noise), so frame t of the reversed clip is exactly frame T-1-t of the drawn one. Hence for a frame
index u drawn uniformly (or symmetrically about the middle), the frame of an odd-class clip has exactly the
distribution of a frame of an even-class clip: the per-frame marginal at a random frame is identical, so the
best single-frame classifier is at chance on each pair. This covers every cue a frame carries: positions,
distances, overlaps, contact, occlusion, visibility (an "appearing" clip starts with frames without A, a
"disappearing" one ends with them, and a random frame is equally likely to be one of them in both).

The videos are encoded with every frame an IDR frame at a constant quantiser (no rate control across
frames, no inter prediction), so the decoded frame t depends on rendered frame t alone and the codec adds
no cue about the direction of time either (a P-frame's artefacts would depend on the frames before it).

What no generator can give is equality at a *known* frame index for a monotone relation: a left-to-right
object has E[x_0] < E[x_{T-1}] while its reversal has the opposite, so a classifier told that it sees the
first frame could win. A single-frame baseline must therefore see a frame whose index is drawn uniformly
(or the middle frame, where the two marginals coincide exactly).

Classes such as "A hits B and B moves" versus "A stops short of B" or "A overtakes B" versus "A and B cross"
are not used: they are not reversals of each other, and no sampler makes their frames equally likely
(only a hit shows the two objects touching; the absolute positions of an overtaking pair spread with the
sum of the speeds, of a crossing pair with their difference).

Outputs (``generate``)
----------------------
``OUT/videos/<id>.mp4`` (H.264, yuv420p, ``frames`` frames at ``fps``), Something-Something v2 style
``something-something-v2-labels.json`` (class text, the template without brackets -> index as a string),
``something-something-v2-train.json`` and ``-validation.json`` (lists of {"id", "label", "template",
"placeholders"}), and ``boxes.jsonl``: one line per video, {"id", "fps", "width", "height", "frames",
"objects": [{"track", "role" ("A", "B" or "distractor"), "shape", "boxes"}]}, a box per frame in continuous
pixel coordinates of the stored frame: the object's full outline (also where it is partly occluded) clipped
to the frame, null where less than one pixel's worth of the object is visible (hidden, faded out, outside).
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_path, atomic_write_text, writable_folder
from strg_deploy.processes import Terminated, process_pool, sigterm_requests

TEMPLATES: tuple[str, ...] = (
    "Moving [something] from left to right",
    "Moving [something] from right to left",
    "Moving [something] closer to [something]",
    "Moving [something] away from [something]",
    "Moving [something] and [something] closer to each other",
    "Moving [something] and [something] away from each other",
    "Putting [something] onto [something]",
    "Taking [something] off [something]",
    "Hiding [something] behind [something]",
    "Taking [something] out from behind [something]",
    "Picking [something] up with [something]",
    "Dropping [something] off with [something]",
    "[Something] appearing",
    "[Something] disappearing",
)
"""Class templates in class-index order, Something-Something style."""

CLASS_NAMES: tuple[str, ...] = tuple(t.replace("[", "").replace("]", "") for t in TEMPLATES)
"""Class texts (the templates without brackets), as the labels file maps them to indices."""

PAIRS: tuple[tuple[int, int], ...] = tuple((k, k + 1) for k in range(0, len(TEMPLATES), 2))
"""(class, its time reversal) for every pair."""

# Which roles fill a template's placeholders, in order.
_PLACEHOLDER_ROLES: tuple[tuple[str, ...], ...] = (
    ("A",), ("A",), ("A", "B"), ("A", "B"), ("A", "B"), ("A", "B"), ("A", "B"), ("A", "B"),
    ("A", "B"), ("A", "B"), ("B", "A"), ("B", "A"), ("A",), ("A",),
)  # fmt: skip

LABELS_FILE = "something-something-v2-labels.json"
SPLIT_FILES = {
    "train": "something-something-v2-train.json",
    "validation": "something-something-v2-validation.json",
}
BOXES_FILE = "boxes.jsonl"
VIDEOS_DIR = "videos"

QUANTISER = 23
"""x264 constant quantiser (every frame coded alone; similar quality to crf 23)."""
PRESET = "veryfast"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 35),
    "orange": (245, 135, 25),
    "purple": (130, 50, 180),
    "cyan": (40, 205, 215),
    "magenta": (215, 50, 175),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "brown": (120, 70, 30),
    "pink": (250, 165, 195),
}

SHAPES: tuple[str, ...] = ("square", "rectangle", "circle", "triangle", "pentagon", "hexagon")
_FLAT_SHAPES = ("square", "circle", "pentagon", "hexagon")  # large inscribed circle: platforms, occluders
_VISIBLE_PIXELS = 1.0  # less than this many pixels' worth of an object visible: box is null


# ---------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class Track:
    """One object: its look (constant) and its path.

    centres: float64 [T, 2] (x, y) in background (world) coordinates; opacity: float64 [T] in [0, 1].
    vertices: float64 [K, 2] outline offsets from the centre (by increasing angle), empty for a circle.
    """

    role: str
    shape: str
    colour_name: str
    colour: tuple[float, float, float]
    radius: float
    vertices: np.ndarray
    centres: np.ndarray
    opacity: np.ndarray

    @property
    def name(self) -> str:
        return f"{self.colour_name} {self.shape}"

    @property
    def extent(self) -> np.ndarray:
        """float64 [4]: (x1, y1, x2, y2) of the outline relative to the centre."""
        if self.shape == "circle":
            return np.array([-self.radius, -self.radius, self.radius, self.radius])
        return np.concatenate([self.vertices.min(0), self.vertices.max(0)])

    def support(self, direction: np.ndarray) -> float:
        """How far the outline reaches from the centre along the unit vector ``direction``."""
        if self.shape == "circle":
            return self.radius
        return float((self.vertices @ direction).max())

    @property
    def inradius(self) -> float:
        """Radius of the largest circle about the centre inside the outline."""
        if self.shape == "circle":
            return self.radius
        edges = np.roll(self.vertices, -1, axis=0) - self.vertices
        normals = np.stack([edges[:, 1], -edges[:, 0]], 1) / np.linalg.norm(edges, axis=1, keepdims=True)
        return float((normals * self.vertices).sum(1).min())


@dataclass(frozen=True)
class Scene:
    """A clip before rendering.

    tracks: A, B (when the class has one), then distractors: the track order of the boxes file.
    order: track indices from the bottom layer to the top. camera: float64 [T, 2], the world point shown at
    image (0, 0) (image position = world position - camera). The background is drawn from
    ``background_seed`` on a canvas with a margin of ``margin`` pixels for the pan (see :meth:`canvas`).
    """

    label: int
    size: int
    frames: int
    tracks: tuple[Track, ...]
    order: tuple[int, ...]
    camera: np.ndarray
    background_seed: int
    margin: int

    def reversed(self, label: int | None = None) -> Scene:
        """The same clip played backwards (every per-frame quantity reversed)."""
        tracks = tuple(
            replace(t, centres=t.centres[::-1].copy(), opacity=t.opacity[::-1].copy()) for t in self.tracks
        )
        return replace(
            self,
            label=self.label if label is None else label,
            tracks=tracks,
            camera=self.camera[::-1].copy(),
        )

    def canvas(self) -> np.ndarray:
        """float32 [S + 2M, S + 2M, 3]: the background texture (world pixel (x, y) at [y + M, x + M])."""
        rng = np.random.default_rng(self.background_seed)
        return _background(rng, self.size + 2 * self.margin, self.size)

    def track(self, role: str) -> Track:
        return next(t for t in self.tracks if t.role == role)

    def image_centres(self, role: str) -> np.ndarray:
        """float64 [T, 2]: the centre of the first track with ``role`` in image coordinates."""
        return self.track(role).centres - self.camera

    @property
    def placeholders(self) -> list[str]:
        return [self.track(role).name for role in _PLACEHOLDER_ROLES[self.label]]

    @property
    def label_text(self) -> str:
        text = TEMPLATES[self.label]
        for name in self.placeholders:
            start = text.index("[")
            end = text.index("]", start)
            filled = name.capitalize() if text[start + 1].isupper() else name
            text = text[:start] + filled + text[end + 1 :]
        return text


def _unit_vertices(shape: str) -> np.ndarray:
    if shape == "circle":
        return np.zeros((0, 2))
    if shape == "rectangle":
        half = np.array([1.0, 0.55]) / math.hypot(1.0, 0.55)
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    sides = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6}[shape]
    angles = 2 * math.pi * np.arange(sides) / sides + (math.pi / 4 if sides == 4 else 0.0)
    return np.stack([np.cos(angles), np.sin(angles)], 1)


_UNIT_VERTICES = {shape: _unit_vertices(shape) for shape in SHAPES}


class _Draw:
    """The random choices of one clip, drawn from one generator in a fixed order."""

    def __init__(self, rng: np.random.Generator, size: int, frames: int, pan: bool):
        self.rng = rng
        self.size = size
        self.frames = frames
        self.time = np.linspace(0.0, 1.0, frames)
        self.used_colours: set[str] = set()
        self.drift = 0.0
        self.camera = np.zeros((frames, 2))
        if pan:
            distance = rng.uniform(0.04, 0.1) * size
            heading = rng.uniform(0, 2 * math.pi)
            step = distance * np.array([math.cos(heading), math.sin(heading)])
            self.camera = (self.time[:, None] - 0.5) * step
            self.drift = distance / 2

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))

    def direction(self) -> np.ndarray:
        angle = self.rng.uniform(0, 2 * math.pi)
        return np.array([math.cos(angle), math.sin(angle)])

    def look(self, role: str, radius: tuple[float, float], shapes: Sequence[str] = SHAPES) -> Track:
        """A track with a random shape, colour, size and rotation (path filled in later)."""
        u = self.rng.random(7).tolist()
        shape = shapes[int(u[0] * len(shapes))]
        names = [name for name in COLOURS if name not in self.used_colours]
        colour_name = names[int(u[1] * len(names))]
        self.used_colours.add(colour_name)
        colour = tuple(
            min(max(c + 24 * j - 12, 0.0), 255.0) for c, j in zip(COLOURS[colour_name], u[2:5], strict=True)
        )
        size = (radius[0] + (radius[1] - radius[0]) * u[5]) * self.size
        angle = 2 * math.pi * u[6]
        cos, sin = math.cos(angle) * size, math.sin(angle) * size
        vertices = _UNIT_VERTICES[shape] @ np.array([[cos, sin], [-sin, cos]])
        zeros = np.zeros((self.frames, 2))
        return Track(role, shape, colour_name, colour, size, vertices, zeros, np.ones(self.frames))

    def progress(
        self, start: tuple[float, float] = (0.0, 0.35), end: tuple[float, float] = (0.65, 1.0)
    ) -> np.ndarray:
        """float64 [T]: 0 before a random start time, 1 after a random end time, rising in between."""
        first, last = self.uniform(*start), self.uniform(*end)
        ramp = np.clip((self.time - first) / max(last - first, 1e-6), 0.0, 1.0)
        if self.rng.random() < 0.5:
            ramp = ramp * ramp * (3 - 2 * ramp)
        return ramp

    def place(self, *constraints: tuple[Track, Sequence[np.ndarray]]) -> np.ndarray:
        """A point p drawn uniformly from where, for every (track, offsets), the track's outline fits in the
        frame (with room for the camera drift) at p + offset for every offset. A path that moves between
        such points in straight lines stays inside too. Raises _Retry when there is no such point."""
        low_x = low_y = -math.inf
        high_x = high_y = math.inf
        near, far = 0.5 + self.drift, self.size - 0.5 - self.drift
        for track, offsets in constraints:
            x1, y1, x2, y2 = track.extent.tolist()
            for dx, dy in offsets:
                low_x, low_y = max(low_x, near - x1 - dx), max(low_y, near - y1 - dy)
                high_x, high_y = min(high_x, far - x2 - dx), min(high_y, far - y2 - dy)
        if low_x > high_x or low_y > high_y:
            raise _Retry
        return self.rng.uniform((low_x, low_y), (high_x, high_y))

    def distractors(self) -> list[Track]:
        tracks = []
        for _ in range(int(self.rng.integers(1, 4))):
            track = self.look("distractor", (0.05, 0.1))
            shift = self.direction() * self.uniform(0.0, 0.12) * self.size
            start = self.place((track, [np.zeros(2), shift]))
            tracks.append(replace(track, centres=start + self.time[:, None] * shift))
        return tracks


class _Retry(Exception):
    """A drawn layout does not fit in the frame: draw again."""


_ORIGIN = np.zeros(2)


def _path(start: np.ndarray, step: np.ndarray, progress: np.ndarray) -> np.ndarray:
    return start + progress[:, None] * step


def _still(point: np.ndarray, frames: int) -> np.ndarray:
    return np.tile(point, (frames, 1))


def _left_to_right(d: _Draw) -> tuple[list[Track], list[str]]:
    a = d.look("A", (0.07, 0.13))
    x1, _, x2, _ = a.extent
    free = d.size - (x2 - x1) - 2 * d.drift - 1
    step = np.array([d.uniform(0.35, 0.75) * free, d.uniform(-0.1, 0.1) * d.size])
    start = d.place((a, [_ORIGIN, step]))
    return [replace(a, centres=_path(start, step, d.progress()))], ["A"]


def _closer(d: _Draw) -> tuple[list[Track], list[str]]:
    a, b = d.look("A", (0.07, 0.12)), d.look("B", (0.07, 0.12))
    heading = d.direction()
    near = a.radius + b.radius + d.uniform(0.04, 0.12) * d.size
    far = near + d.uniform(0.25, 0.55) * d.size
    where = d.place((b, [_ORIGIN]), (a, [far * heading, near * heading]))
    centres = _path(where + far * heading, (near - far) * heading, d.progress())
    return [replace(a, centres=centres), replace(b, centres=_still(where, d.frames))], ["B", "A"]


def _closer_together(d: _Draw) -> tuple[list[Track], list[str]]:
    a, b = d.look("A", (0.07, 0.12)), d.look("B", (0.07, 0.12))
    heading = d.direction()
    near = a.radius + b.radius + d.uniform(0.04, 0.12) * d.size
    closing = d.uniform(0.3, 0.6) * d.size
    share = d.uniform(0.3, 0.7)
    step_a, step_b = share * closing * heading, -(1 - share) * closing * heading
    end_a = d.place((a, [-step_a, _ORIGIN]), (b, [near * heading - step_b, near * heading]))
    progress = d.progress()
    path_a = _path(end_a - step_a, step_a, progress)
    path_b = _path(end_a + near * heading - step_b, step_b, progress)
    return [replace(a, centres=path_a), replace(b, centres=path_b)], ["A", "B"]


def _onto(d: _Draw, behind: bool) -> tuple[list[Track], list[str]]:
    b = d.look("B", (0.16, 0.24) if behind else (0.13, 0.2), _FLAT_SHAPES)
    inner = b.inradius
    fraction = d.uniform(0.4, 0.65) * (inner - 1.5) / d.size
    a = d.look("A", (fraction, fraction))
    # A ends inside B's inscribed circle with a pixel to spare, so that it is wholly on (or behind) B.
    rest = d.direction() * d.uniform(0.0, 0.8) * max(inner - a.radius - 1.0, 0.0)
    heading = d.direction()
    far = a.radius + b.radius + d.uniform(0.04, 0.25) * d.size
    where = d.place((b, [_ORIGIN]), (a, [rest + far * heading, rest]))
    centres = _path(where + rest + far * heading, -far * heading, d.progress())
    tracks = [replace(a, centres=centres), replace(b, centres=_still(where, d.frames))]
    return tracks, (["A", "B"] if behind else ["B", "A"])


def _pick_up(d: _Draw) -> tuple[list[Track], list[str]]:
    a, b = d.look("A", (0.07, 0.12)), d.look("B", (0.07, 0.12))
    heading = d.direction()
    contact = a.support(heading) + b.support(-heading)  # centre distance at which the outlines touch
    far = contact + d.uniform(0.2, 0.45) * d.size
    step = d.direction() * d.uniform(0.2, 0.45) * d.size
    where = d.place((b, [_ORIGIN, step]), (a, [-far * heading, -contact * heading, step - contact * heading]))
    approach = d.progress((0.0, 0.15), (0.35, 0.5))
    arrived = float(d.time[np.argmax(approach >= 1.0)])
    carry = d.progress((arrived, arrived + 0.1), (0.8, 1.0))
    path_b = _path(where, step, carry)
    path_a = _path(where - far * heading, (far - contact) * heading, approach) + carry[:, None] * step
    return [replace(a, centres=path_a), replace(b, centres=path_b)], ["B", "A"]


def _appearing(d: _Draw) -> tuple[list[Track], list[str]]:
    a = d.look("A", (0.08, 0.14))
    start = d.uniform(0.15, 0.6)
    length = d.uniform(0.05, 0.25)
    opacity = np.clip((d.time - start) / length, 0.0, 1.0)
    where = d.place((a, [_ORIGIN]))
    return [replace(a, centres=_still(where, d.frames), opacity=opacity)], ["A"]


_SAMPLERS: dict[int, Callable[[_Draw], tuple[list[Track], list[str]]]] = {
    0: _left_to_right,
    2: _closer,
    4: _closer_together,
    6: lambda d: _onto(d, behind=False),
    8: lambda d: _onto(d, behind=True),
    10: _pick_up,
    12: _appearing,
}


def _background(rng: np.random.Generator, side: int, size: int) -> np.ndarray:
    """float32 [side, side, 3]: a random texture between two muted colours, with a static grain."""
    kind = ("noise", "gradient", "stripes", "checker")[int(rng.integers(4))]
    first = rng.uniform(50, 200, 3)
    second = np.clip(first + rng.normal(0, 45, 3), 0, 255)
    coords = np.arange(side, dtype=np.float64) + 0.5
    angle = rng.uniform(0, 2 * math.pi)
    along = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
    across = -coords[None, :] * math.sin(angle) + coords[:, None] * math.cos(angle)
    if kind == "noise":
        cell = rng.uniform(6, 24) * size / 112
        cells = int(side / cell) + 2
        grid = rng.random((cells, cells))
        position = coords / cell
        index = np.minimum(position.astype(int), cells - 2)
        frac = position - index
        weights = np.zeros((side, cells))
        weights[np.arange(side), index] = 1 - frac
        weights[np.arange(side), index + 1] = frac
        pattern = weights @ grid @ weights.T
    elif kind == "gradient":
        pattern = (along - along.min()) / max(float(np.ptp(along)), 1e-6)
    elif kind == "stripes":
        period = max(rng.uniform(6, 20) * size / 112, 4.0)
        pattern = 0.5 + 0.5 * np.clip(1.5 * np.sin(2 * math.pi * along / period + rng.uniform(0, 6.3)), -1, 1)
    else:
        period = max(rng.uniform(6, 20) * size / 112, 4.0)
        wave = np.sin(math.pi * along / period) * np.sin(math.pi * across / period)
        pattern = 0.5 + 0.5 * np.clip(4 * wave, -1, 1)
    canvas = first + (second - first) * pattern[..., None] + rng.normal(0, 1.5, (side, side, 1))
    return np.clip(canvas, 0, 255).astype(np.float32)


MAX_SIZE = 5968
"""The largest frame side: H.264's highest level (6.2) allows 139,264 macroblocks of 16 x 16 pixels per
frame, and ceil(5968 / 16)^2 = 373^2 = 139,129 is the largest square count within it."""

RENDER_BYTES_PER_PIXEL = 48
"""Peak memory of drawing and encoding one video, in bytes per pixel of each of its frames (the float32
layers of :func:`render` and their temporaries, the uint8 frames, the encoder): 45 measured (peak RSS,
CPython 3.11, numpy 2.4, x86_64, sizes 512-2048), rounded up."""


def _check_geometry(size: int, frames: int) -> None:
    if size < 32 or size % 2 or size > MAX_SIZE:
        raise StrgError(
            f"size must be an even number of pixels from 32 to {MAX_SIZE} (H.264 4:2:0 needs even sides; "
            f"its largest level holds a {MAX_SIZE}x{MAX_SIZE} frame), got {size}"
        )
    if frames < 4:
        raise StrgError(f"frames must be >= 4, got {frames}")


def render_bytes(size: int, frames: int) -> int:
    """Peak memory (bytes) of drawing and encoding one ``size`` x ``size`` video of ``frames`` frames."""
    return RENDER_BYTES_PER_PIXEL * size * size * frames


def available_memory() -> int | None:
    """Bytes of memory that can still be allocated: MemAvailable of /proc/meminfo, or less under a
    cgroup v2 memory limit (the container's own); elsewhere the free physical pages; None if unknown."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            available = min(available, max(int(limit) - int(used), 0))
    except (OSError, ValueError):
        pass
    return available


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes < 2**40 else f"{nbytes / 2**40:,.0f} TiB"


def _fit_workers(size: int, frames: int, workers: int, chosen: bool) -> int:
    """The workers that can render at once in the memory available: ``workers`` when they fit; fewer when
    the count was not ``chosen`` by the caller; StrgError (before any work) otherwise."""
    need, available = render_bytes(size, frames), available_memory()
    if available is None or workers * need <= available:
        return workers
    if need > available:
        raise StrgError(
            f"a {size}x{size} video of {frames} frames needs about {_gib(need)} of memory to render, and "
            f"{_gib(available)} is available: use a smaller --size or fewer --frames"
        )
    fits = int(available // need)
    if chosen:
        raise StrgError(
            f"{workers} workers rendering {size}x{size} videos of {frames} frames need about "
            f"{_gib(workers * need)} of memory, and {_gib(available)} is available: use --workers {fits}"
        )
    return fits


def sample_scene(
    label: int, rng: np.random.Generator, size: int = 112, frames: int = 32, pan: bool = False
) -> Scene:
    """Draw a clip of class ``label`` (an odd class: the reversal of a fresh draw of its even partner)."""
    _check_geometry(size, frames)
    if not 0 <= label < len(TEMPLATES):
        raise StrgError(f"class index must be in 0..{len(TEMPLATES) - 1}, got {label}")
    forward = label - label % 2
    for _ in range(1000):
        draw = _Draw(rng, size, frames, pan)
        try:
            main, layers = _SAMPLERS[forward](draw)
        except _Retry:
            continue
        break
    else:  # pragma: no cover - the layouts fit easily at every allowed size
        raise StrgError(f"cannot lay out class {label} in a {size}x{size} frame")
    distractors = draw.distractors()
    tracks = tuple(main + distractors)
    roles = [t.role for t in main]
    order = tuple(range(len(main), len(tracks))) + tuple(roles.index(role) for role in layers)
    margin = math.ceil(draw.drift) + 2 if pan else 0
    background_seed = int(rng.integers(2**63))
    scene = Scene(forward, size, frames, tracks, order, draw.camera, background_seed, margin)
    return scene.reversed(label) if label % 2 else scene


# ------------------------------------------------------------------------------------------- rendering


def _background_frames(scene: Scene) -> np.ndarray:
    """float32 [T, S, S, 3]: the canvas seen through the camera (bilinear for sub-pixel offsets)."""
    size, canvas = scene.size, scene.canvas()
    if not scene.margin:
        return np.broadcast_to(canvas, (scene.frames, size, size, 3))
    out = np.empty((scene.frames, size, size, 3), np.float32)
    for t, (cx, cy) in enumerate(scene.camera + scene.margin):
        ix, iy = math.floor(cx), math.floor(cy)
        fx, fy = np.float32(cx - ix), np.float32(cy - iy)
        top = (
            canvas[iy : iy + size, ix : ix + size] * (1 - fx)
            + canvas[iy : iy + size, ix + 1 : ix + 1 + size] * fx
        )
        bottom = canvas[iy + 1 : iy + 1 + size, ix : ix + size] * (1 - fx)
        bottom += canvas[iy + 1 : iy + 1 + size, ix + 1 : ix + 1 + size] * fx
        out[t] = top * (1 - fy) + bottom * fy
    return out


def _coverage(track: Track, centres: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """float32 [T, h, w]: anti-aliased coverage of the outline over pixel centres ``xs`` [w] x ``ys`` [h]."""
    dx = (xs[None, None, :] - centres[:, 0, None, None]).astype(np.float32)
    dy = (ys[None, :, None] - centres[:, 1, None, None]).astype(np.float32)
    if track.shape == "circle":
        distance = np.sqrt(dx * dx + dy * dy) - np.float32(track.radius)
    else:
        vertices = track.vertices
        edges = np.roll(vertices, -1, axis=0) - vertices
        normals = np.stack([edges[:, 1], -edges[:, 0]], 1) / np.linalg.norm(edges, axis=1, keepdims=True)
        offsets = (normals * vertices).sum(1)
        # The sides of the bounding box too: the largest signed distance to the edge lines underestimates
        # the distance beyond a sharp corner, and the box keeps the anti-aliased fringe within half a pixel.
        x1, y1, x2, y2 = track.extent
        normals = np.concatenate([normals, [[-1.0, 0.0], [0.0, -1.0], [1.0, 0.0], [0.0, 1.0]]])
        offsets = np.concatenate([offsets, [-x1, -y1, x2, y2]])
        distance = None
        for (nx, ny), offset in zip(normals.astype(np.float32), offsets.astype(np.float32), strict=True):
            side = nx * dx + ny * dy - offset
            distance = side if distance is None else np.maximum(distance, side)
    return np.clip(np.float32(0.5) - distance, 0.0, 1.0)


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Draw a clip: frames uint8 [T, S, S, 3] (RGB) and visible float32 [T, N], the pixels' worth of each
    track that is visible (coverage x opacity x what the layers above let through)."""
    frames, size = scene.frames, scene.size
    coords = np.arange(size, dtype=np.float64) + 0.5
    colour = np.zeros((frames, size, size, 3), np.float32)
    through = np.ones((frames, size, size), np.float32)
    visible = np.zeros((frames, len(scene.tracks)), np.float32)
    for index in reversed(scene.order):  # top layer first
        track = scene.tracks[index]
        centres = track.centres - scene.camera
        shown = track.opacity > 0
        if not shown.any():
            continue
        x1, y1, x2, y2 = track.extent
        left = max(math.floor(centres[shown, 0].min() + x1) - 1, 0)
        right = min(math.ceil(centres[shown, 0].max() + x2) + 1, size)
        top = max(math.floor(centres[shown, 1].min() + y1) - 1, 0)
        bottom = min(math.ceil(centres[shown, 1].max() + y2) + 1, size)
        if left >= right or top >= bottom:
            continue
        alpha = _coverage(track, centres, coords[left:right], coords[top:bottom])
        alpha *= track.opacity.astype(np.float32)[:, None, None]
        window = (slice(None), slice(top, bottom), slice(left, right))
        seen = alpha * through[window]
        visible[:, index] = seen.sum(axis=(1, 2))
        colour[window] += seen[..., None] * np.array(track.colour, np.float32)
        through[window] *= 1 - alpha
    colour += _background_frames(scene) * through[..., None]
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8), visible


def boxes(scene: Scene, visible: np.ndarray) -> list[list[list[float] | None]]:
    """Per track, per frame: [x1, y1, x2, y2] (the outline clipped to the frame, 2 decimals) or None where
    less than one pixel's worth of it is visible. ``visible``: float [T, N] from :func:`render`."""
    out = []
    for index, track in enumerate(scene.tracks):
        corners = np.tile(track.centres - scene.camera, 2) + track.extent
        corners = np.clip(corners, 0.0, float(scene.size))
        out.append(
            [
                [round(float(v), 2) for v in corners[t]] if visible[t, index] >= _VISIBLE_PIXELS else None
                for t in range(scene.frames)
            ]
        )
    return out


# ------------------------------------------------------------------------------------------- encoding


def encode_mp4(frames: np.ndarray, fps: float) -> bytes:
    """H.264 (libx264, yuv420p, every frame an IDR frame at a constant quantiser) in mp4.

    frames: uint8 [T, H, W, 3] RGB, H and W even.
    """
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(100_000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = 1
        stream.options = {"qp": str(QUANTISER), "preset": PRESET, "threads": "1"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ generation

_SPLIT_CODES = {"train": 1, "validation": 2}


def split_labels(seed: int, split: str, count: int) -> np.ndarray:
    """int64 [count]: the class of every video of a split, balanced (counts differ by at most one)."""
    labels = np.arange(count) % len(TEMPLATES)
    return np.random.default_rng([seed, _SPLIT_CODES[split]]).permutation(labels)


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one video (independent of every other video and of the worker that draws it)."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index + 1])


@dataclass(frozen=True)
class _Job:
    out_dir: str
    video_id: str
    split: str
    index: int
    label: int
    size: int
    frames: int
    fps: float
    seed: int
    pan: bool


def _make_video(job: _Job) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Draw, render, encode and write one video; returns its annotation, its boxes record and its bytes."""
    scene = sample_scene(job.label, video_rng(job.seed, job.split, job.index), job.size, job.frames, job.pan)
    pixels, visible = render(scene)
    data = encode_mp4(pixels, job.fps)
    with atomic_path(Path(job.out_dir) / VIDEOS_DIR / f"{job.video_id}.mp4") as tmp:
        tmp.write_bytes(data)
    entry = {
        "id": job.video_id,
        "label": scene.label_text,
        "template": TEMPLATES[job.label],
        "placeholders": scene.placeholders,
    }
    record = {
        "id": job.video_id,
        "fps": float(job.fps),
        "width": job.size,
        "height": job.size,
        "frames": job.frames,
        "objects": [
            {"track": i, "role": t.role, "shape": t.shape, "boxes": b}
            for i, (t, b) in enumerate(zip(scene.tracks, boxes(scene, visible), strict=True))
        ],
    }
    return entry, record, len(data)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote."""

    out_dir: Path
    videos_train: int
    videos_validation: int
    classes: tuple[str, ...]
    size: int
    frames: int
    fps: float
    seconds: float
    bytes_written: int
    workers: int
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def videos(self) -> int:
        return self.videos_train + self.videos_validation


def _remove_temporaries(out: Path) -> None:
    """Remove the temporary files (``.<name>.*.tmp``, see :func:`atomic_path`) of writes that a run
    killed part-way left in ``out`` and ``out/videos``."""
    for name in (BOXES_FILE, LABELS_FILE, *SPLIT_FILES.values()):
        for tmp in out.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    for tmp in (out / VIDEOS_DIR).glob(".*.mp4.*.tmp"):
        tmp.unlink(missing_ok=True)


_POLL_SECONDS = 0.2  # how often the parent looks for a SIGTERM while it waits for a video


def _render_all(
    jobs: list[_Job],
    workers: int,
    progress: Callable[[int, int], None] | None,
    stop: Callable[[], bool],
) -> list[tuple[dict[str, Any], dict[str, Any], int]]:
    """:func:`_make_video` of every job, in order, on ``workers`` processes (in this one for 1).

    ``stop()`` is looked at between videos (at least every 0.2 s): when it says True, pending videos are
    cancelled, running ones finish (each is written whole or not at all), the pool is shut and
    :class:`Terminated` is raised. A worker that dies (killed, out of memory) ends the run with StrgError.
    """
    total = len(jobs)
    results = []
    if workers == 1:
        for job in jobs:
            if stop():
                raise Terminated()
            results.append(_make_video(job))
            if progress:
                progress(len(results), total)
        return results
    upcoming = iter(jobs)
    pool = process_pool(workers)
    try:
        # a few jobs per worker in flight: results come back in order, memory stays flat
        first = itertools.islice(upcoming, 4 * workers)
        pending = collections.deque(pool.submit(_make_video, job) for job in first)
        while pending:
            future = pending.popleft()
            while True:
                if stop():
                    raise Terminated()
                try:
                    results.append(future.result(timeout=_POLL_SECONDS))
                    break
                except concurrent.futures.TimeoutError:
                    continue
            pending.extend(pool.submit(_make_video, job) for job in itertools.islice(upcoming, 1))
            if progress:
                progress(len(results), total)
    except BrokenProcessPool:
        if stop():
            raise Terminated() from None
        raise StrgError(
            "a rendering process ended unexpectedly (killed, or out of memory); the videos written so far "
            "are whole: run the command again"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _json_list(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "[]\n"
    return "[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in entries) + "\n]\n"


def generate(
    out_dir: str | os.PathLike[str],
    *,
    videos_train: int,
    videos_validation: int,
    size: int = 112,
    frames: int = 32,
    fps: float = 12.0,
    seed: int = 0,
    pan: bool = False,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSummary:
    """Write the benchmark into ``out_dir`` (see the module docstring for the files).

    Video ids are "1".."videos_train" for the training split and continue for validation. Videos are
    written first, then boxes.jsonl, the split files and the labels file, each atomically; a second run
    with the same arguments rewrites the same bytes. ``workers``: processes (default os.cpu_count(), or
    fewer when the memory available holds fewer videos being rendered at once); they end with the
    calling process however it ends (:mod:`strg_deploy.processes`). ``progress(done, total)`` is called
    after every video.

    Before any work: the arguments are checked, ``out`` must be a folder that takes files (or can be
    created), and the videos must fit in the memory available (about :data:`RENDER_BYTES_PER_PIXEL` bytes
    per pixel of every frame, per worker); StrgError otherwise. Temporary files a killed run left in
    ``out`` are removed. SIGTERM (in the main thread) stops the run between videos: pending videos are
    cancelled, running ones finish, the index files are not written and :class:`Terminated` is raised.
    """
    _check_geometry(size, frames)
    if videos_train < 0 or videos_validation < 0 or videos_train + videos_validation == 0:
        raise StrgError(
            f"need at least one video, got {videos_train} train and {videos_validation} validation"
        )
    if not (fps > 0 and math.isfinite(fps)):
        raise StrgError(f"fps must be positive, got {fps}")
    if seed < 0:
        raise StrgError(f"seed must be >= 0, got {seed}")
    chosen = workers is not None
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise StrgError(f"workers must be >= 1, got {workers}")
    out = writable_folder(Path(out_dir))
    workers = _fit_workers(size, frames, min(workers, videos_train + videos_validation), chosen)
    started = time.perf_counter()
    jobs = []
    first_id = {"train": 1, "validation": videos_train + 1}
    for split, count in (("train", videos_train), ("validation", videos_validation)):
        for index, label in enumerate(split_labels(seed, split, count).tolist()):
            video_id = str(first_id[split] + index)
            jobs.append(_Job(str(out), video_id, split, index, label, size, frames, float(fps), seed, pan))
    if out.is_dir():
        _remove_temporaries(out)
    if progress:
        progress(0, len(jobs))
    with sigterm_requests() as stop:
        try:
            results = _render_all(jobs, workers, progress, stop)
        except (Terminated, StrgError):
            if out.is_dir():
                _remove_temporaries(out)  # of workers killed with the run (the pool is shut by now)
            raise
    written = sum(nbytes for _, _, nbytes in results)
    boxes_text = "".join(json.dumps(record, separators=(",", ":")) + "\n" for _, record, _ in results)
    atomic_write_text(out / BOXES_FILE, boxes_text)
    written += len(boxes_text.encode())
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "validation"):
        entries = [entry for job, (entry, _, _) in zip(jobs, results, strict=True) if job.split == split]
        text = _json_list(entries)
        atomic_write_text(out / SPLIT_FILES[split], text)
        written += len(text.encode())
        counts[split] = {name: 0 for name in CLASS_NAMES}
        for job in jobs:
            if job.split == split:
                counts[split][CLASS_NAMES[job.label]] += 1
    labels_text = json.dumps({name: str(i) for i, name in enumerate(CLASS_NAMES)}, indent=1) + "\n"
    atomic_write_text(out / LABELS_FILE, labels_text)
    written += len(labels_text.encode())
    return SynthSummary(
        out_dir=out,
        videos_train=videos_train,
        videos_validation=videos_validation,
        classes=CLASS_NAMES,
        size=size,
        frames=frames,
        fps=float(fps),
        seconds=time.perf_counter() - started,
        bytes_written=written,
        workers=workers,
        class_counts=counts,
    )
