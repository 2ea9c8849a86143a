"""Property-based fuzzing of everything that reads outside input: the dataset annotation readers, the box
tracks reader, config.json, the training options file, the export manifest and the video opener.

The property, for every input: a clean result or :class:`~strg_deploy.errors.StrgError`, never another
exception and never a hang. Each target draws structured-but-wrong inputs (valid JSON of the wrong shape,
wrong types, missing keys, CRLF, non-ASCII, empty files) and byte mutations (flips, truncation, repeated
or zeroed chunks, inserted bytes) of a valid file. A clean result is then used the way the code uses it
(every record's targets, every track's boxes, the config's JSON round trip, the manifest's file hashes).
In-process targets run under a per-example alarm; videos are opened and decoded in a child process that
is killed when an example takes longer than its timeout, so a decoder that hangs or crashes is a failure
and not the end of the run.

    python benchmarks/fuzz.py --seconds 120 [--seed S] [--target NAME ...]

splits the seconds evenly over the targets and prints a table (target, inputs tried, failures found,
seconds), then each failure with its smallest input; the exit status is 1 when a target failed.
tests/test_fuzz.py runs every target for a few derandomized examples, with a regression example for each
bug found so far. The manifest target exports the tiny preset once (``strg export --preset tiny``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import hashlib
import io
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from strg_deploy.config import preset
from strg_deploy.errors import StrgError

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # a dependency of hypothesis there

HERE = Path(__file__).resolve().parent
VIDEOS = HERE.parents[1] / "shared" / "videos"
EXAMPLE_SECONDS = 20.0  # an in-process example (or one video) taking longer than this is a hang

# ----------------------------------------------------------------------------------------------------
# Building blocks: JSON values, edits of a JSON document, encodings, byte mutations


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and +-Infinity included: json.loads reads them
    st.text(max_size=12),
    st.sampled_from([0, 1, -1, 10**400, "", "0", "1", "NaN", "é", "\u202e", "a\r\nb"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)

# An edit: a path into the document (each int picks a child, modulo their count; the walk stops early at
# a scalar), an action, and a value for "replace" and "insert".
EDITS = st.lists(
    st.tuples(
        st.lists(st.integers(min_value=0, max_value=50), max_size=5),
        st.sampled_from(["replace", "delete", "insert", "duplicate"]),
        JSON_VALUES,
    ),
    max_size=3,
)


def apply_edits(doc: Any, edits: list[tuple[list[int], str, Any]]) -> Any:
    """A deep copy of the JSON document ``doc`` with ``edits`` applied (see EDITS)."""
    doc = copy.deepcopy(doc)
    for path, action, value in edits:
        parent, key, node = None, None, doc
        for choice in path:
            if not isinstance(node, dict | list) or not node:
                break
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, keys[choice % len(keys)]
            node = node[key]
        if parent is None:  # the whole document
            doc = value if action == "replace" else ([doc, doc] if action == "duplicate" else doc)
        elif action == "replace":
            parent[key] = value
        elif action == "delete":
            del parent[key]
        elif action == "insert":
            if isinstance(parent, list):
                parent.insert(key, value)
            else:
                parent[f"extra{len(parent)}"] = value
        elif isinstance(parent, list):
            parent.insert(key, copy.deepcopy(node))
        else:
            parent[f"{key}_copy"] = copy.deepcopy(node)
    return doc


ENCODINGS = ("lf", "crlf", "cr", "bom", "no-final-newline", "utf-16", "latin-1", "nul")


def encode(text: str, style: str) -> bytes:
    """Text as a file might hold it: LF, CRLF or CR line endings, a UTF-8 BOM, no final newline, or not
    UTF-8 at all (UTF-16, Latin-1) or with a NUL byte."""
    if style == "crlf":
        text = text.replace("\n", "\r\n")
    elif style == "cr":
        text = text.replace("\n", "\r")
    elif style == "no-final-newline":
        text = text.rstrip("\n")
    elif style == "nul":
        text = text[: len(text) // 2] + "\0" + text[len(text) // 2 :]
    if style == "utf-16":
        return text.encode("utf-16")
    if style == "latin-1":
        return text.encode("latin-1", errors="replace")
    return (b"\xef\xbb\xbf" if style == "bom" else b"") + text.encode("utf-8", errors="surrogatepass")


def encoded(texts: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    """``texts`` as bytes, mostly UTF-8 with LF or CRLF, sometimes in another encoding."""
    styles = st.sampled_from(ENCODINGS[:2]) | st.sampled_from(ENCODINGS)
    return st.builds(encode, texts, styles)


def json_text(value: Any, ascii_only: bool, indent: int | None) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, indent=indent) + "\n"


def json_files(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """JSON documents of ``values``, indented or not, ASCII-escaped or raw UTF-8, in any encoding."""
    return encoded(st.builds(json_text, values, st.booleans(), st.sampled_from([None, 1, 2])))


# A mutation of a file's bytes: (kind, position, length, bytes); positions wrap around the data's length.
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "zero", "truncate", "duplicate", "delete", "insert"]),
        st.integers(min_value=0, max_value=2**20),
        st.integers(min_value=1, max_value=4096),
        st.binary(min_size=1, max_size=16),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    """``data`` after each mutation: a byte flipped (XOR), bytes overwritten, a range zeroed, the data
    truncated, a chunk repeated, a range deleted, bytes inserted."""
    buf = bytearray(data)
    for kind, position, length, payload in mutations:
        if not buf:
            if kind in ("set", "insert"):
                buf += payload
            continue
        at = position % len(buf)
        if kind == "flip":
            buf[at] ^= payload[0] or 0xFF
        elif kind == "set":
            buf[at : at + len(payload)] = payload
        elif kind == "zero":
            end = min(len(buf), at + length)
            buf[at:end] = bytes(end - at)
        elif kind == "truncate":
            del buf[at:]
        elif kind == "duplicate":
            chunk = buf[at : at + length]
            buf[at:at] = chunk
        elif kind == "delete":
            del buf[at : at + length]
        else:
            buf[at:at] = payload
    return bytes(buf)


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.builds(mutate, st.just(valid), MUTATIONS)


# Inputs every reader of a text file meets sooner or later.
SPECIAL_FILES = st.sampled_from(
    [
        b"",
        b"\n",
        b"\r\n\r\n",
        b"\xef\xbb\xbf",
        b"\xff\xfe\x00\x00",
        b"\x00" * 16,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"[" * 5000 + b"]" * 5000,  # deeper than json's recursion limit
        b'{"a": ' + b"9" * 5000 + b"}",  # an integer over Python's 4300-digit conversion limit
        b'"' + b"x" * 140_000 + b"\n",  # an unclosed quote over the csv module's field limit
        "\u2028é\U0001f600\n".encode(),
    ]
)


def text_file(structured: st.SearchStrategy[bytes], valid: bytes) -> st.SearchStrategy[bytes]:
    """A file's bytes: structured-but-wrong content, a mutation of a valid file, or a special file."""
    return st.one_of(structured, mutated(valid), SPECIAL_FILES)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


class Hang(Exception):
    """An example ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise Hang inside the block after ``seconds`` (the main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"the example ran for more than {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A fresh temporary folder for one example."""
    with tempfile.TemporaryDirectory(prefix="strg-fuzz-") as folder:
        yield Path(folder)


def clean_or_strg_error(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or None when it raised StrgError (whose message must be one line)."""
    try:
        return call()
    except StrgError as err:
        assert str(err) and "\n" not in str(err).strip(), f"StrgError of several lines: {err!r}"
        return None


# ----------------------------------------------------------------------------------------------------
# Dataset readers


def check_dataset(dataset, check_videos: bool = True) -> None:
    """Use a dataset as training and evaluation do, and check what a reader promises of it."""
    dataset.summary()
    dataset.skip_counts()
    dataset.repair_counts()
    for item in (*dataset.skipped, *dataset.repaired):  # each is shown on one line of a warning
        assert "\n" not in str(item) and "\r" not in str(item), f"an entry of several lines: {item!r}"
    ids = [r.video_id for r in dataset.records]
    assert len(set(ids)) == len(ids), "duplicate ids among the records"
    for record in dataset.records:
        assert dataset.record(record.video_id) is record
        if dataset.multi_label:
            target = dataset.targets(record)
            assert target.shape == (dataset.num_classes,)
            dataset.targets(record, 0.0, 1.0)
            for segment in record.segments:
                assert 0 <= segment.label < dataset.num_classes and 0 <= segment.start <= segment.end
        elif record.label is not None:
            assert 0 <= int(dataset.targets(record)) < dataset.num_classes
        if check_videos:
            where = os.path.dirname(record.source) if record.is_frame_folder else record.source
            assert os.path.exists(where), f"record {record.video_id} points at {where}, which is not there"


SSV2_CLASSES = [
    "Pushing something from left to right",
    "Putting something on a surface",
    "Juggling something",
]
SSV2_TEMPLATES = [
    "Pushing [something] from left to right",
    "Putting [something] on a surface",
    "[Juggling] [x]",
    "Putting [something]\r\nunder [x]",
]
SSV2_VALID_LABELS = {SSV2_CLASSES[0]: "0", SSV2_CLASSES[1]: "1"}
SSV2_VALID_SPLIT = [
    {
        "id": "1",
        "label": "pushing a cup from left to right",
        "template": SSV2_TEMPLATES[0],
        "placeholders": ["a cup"],
    },
    {"id": "2", "label": "putting é on a surface", "template": SSV2_TEMPLATES[1], "placeholders": ["é"]},
    {"id": 3, "label": "pushing", "template": SSV2_TEMPLATES[0], "placeholders": []},
]
SSV2_VIDEOS = ("1.webm", "2.mp4", "3.MKV", "4.txt")

SSV2_LABEL_VALUES = st.one_of(
    st.dictionaries(
        st.sampled_from(SSV2_CLASSES) | st.text(max_size=10),
        st.integers(min_value=-1, max_value=3).map(str) | st.integers(min_value=-1, max_value=3) | SCALARS,
        max_size=4,
    ),
    st.builds(apply_edits, st.just(SSV2_VALID_LABELS), EDITS),
    JSON_VALUES,
)
SSV2_ENTRIES = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["1", "2", "3", "4", "", "../1"]) | st.integers(-1, 4) | SCALARS,
        "template": st.sampled_from(SSV2_TEMPLATES) | SCALARS,
        "label": SCALARS,
        "placeholders": JSON_VALUES,
    },
)
SSV2_SPLIT_VALUES = st.one_of(
    st.lists(SSV2_ENTRIES | JSON_VALUES, max_size=6),
    st.builds(apply_edits, st.just(SSV2_VALID_SPLIT), EDITS),
    JSON_VALUES,
)
SSV2 = st.fixed_dictionaries(
    {
        "labels": text_file(json_files(SSV2_LABEL_VALUES), json_text(SSV2_VALID_LABELS, False, 1).encode()),
        "split": text_file(json_files(SSV2_SPLIT_VALUES), json_text(SSV2_VALID_SPLIT, False, 1).encode()),
        "split_name": st.sampled_from(["train", "validation", "test"]),
        "strict": st.booleans(),
        "max_skipped_fraction": st.sampled_from([0.0, 0.5, 1.0]),
    }
)


def check_ssv2(ctx: Context, value: dict) -> None:
    from strg_deploy.data.datasets import SSV2_LABELS, SSV2_SPLIT_FILES, read_something_something_v2

    with scratch() as root:
        write(root / SSV2_LABELS, value["labels"])
        write(root / SSV2_SPLIT_FILES[value["split_name"]], value["split"])
        for name in SSV2_VIDEOS:
            write(root / "videos" / name, b"")
        dataset = clean_or_strg_error(
            lambda: read_something_something_v2(
                root,
                value["split_name"],
                strict=value["strict"],
                max_skipped_fraction=value["max_skipped_fraction"],
            )
        )
        if dataset is not None:
            check_dataset(dataset)


SSV1_CLASSES = ["Pushing something", "Holding something", "Dropping something"]
SSV1_VALID_LABELS = "\n".join(SSV1_CLASSES[:2]) + "\n"
SSV1_VALID_SPLIT = "1;Pushing something\n2;Holding something\n3;Pushing something\n"
SSV1_LINES = st.sampled_from([*SSV1_CLASSES, "", " ", ";"]) | st.text(max_size=15)
SSV1_ROWS = st.one_of(
    st.builds(
        lambda vid, sep, label: f"{vid}{sep}{label}",
        st.sampled_from(["1", "2", "3", "9", "", " 1 ", "../1"]) | st.text(max_size=4),
        st.sampled_from([";", "; ", ",", "", ";;"]),
        SSV1_LINES,
    ),
    st.text(max_size=20),
)
SSV1 = st.fixed_dictionaries(
    {
        "labels": text_file(
            encoded(st.lists(SSV1_LINES, max_size=5).map("\n".join)), SSV1_VALID_LABELS.encode()
        ),
        "split": text_file(
            encoded(st.lists(SSV1_ROWS, max_size=6).map("\n".join)), SSV1_VALID_SPLIT.encode()
        ),
        "split_name": st.sampled_from(["train", "validation", "test"]),
        "strict": st.booleans(),
    }
)


def check_ssv1(ctx: Context, value: dict) -> None:
    from strg_deploy.data.datasets import SSV1_LABELS, SSV1_SPLIT_FILES, read_something_something_v1

    with scratch() as root:
        write(root / SSV1_LABELS, value["labels"])
        write(root / SSV1_SPLIT_FILES[value["split_name"]], value["split"])
        for vid in ("1", "2", "3"):
            (root / "frames" / vid).mkdir(parents=True)
        dataset = clean_or_strg_error(
            lambda: read_something_something_v1(
                root, value["split_name"], strict=value["strict"], max_skipped_fraction=1.0
            )
        )
        if dataset is not None:
            check_dataset(dataset)


CHARADES_HEADER = [
    "id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions",
    "actions", "length",
]  # fmt: skip
CHARADES_VALID_CLASSES = "c000 Holding some clothes\nc001 Putting clothes somewhere\nc002 Taking a cup\n"


def charades_row(vid: str, actions: str, length: str) -> list[str]:
    return [
        vid,
        "S1",
        "Kitchen",
        "6",
        "7",
        "Yes",
        'A person, then, "another".',
        "cup",
        "Une tasse.",
        actions,
        length,
    ]


def csv_text(rows: list[list[str]], quoted: bool) -> str:
    if not quoted:
        return "\n".join(",".join(row) for row in rows) + "\n"
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


CHARADES_VALID_SPLIT = csv_text(
    [
        CHARADES_HEADER,
        charades_row("A", "c000 0.0 5.5;c002 3.1 9.0", "10.0"),
        charades_row("B", "", "12.5"),
        charades_row("C", "c001 -1 2;c000 8 30", "20"),
    ],
    True,
)
TIMES = st.sampled_from(["0", "1.5", "-1", "1e400", "nan", "inf", "abc", "", "10"]) | st.floats().map(str)
ACTIONS = st.lists(
    st.builds(
        lambda code, start, end, sep: f"{code}{sep}{start}{sep}{end}",
        st.sampled_from(["c000", "c001", "c002", "c999", "", "C000", "c0\n1"]) | st.text(max_size=4),
        TIMES,
        TIMES,
        st.sampled_from([" ", "  ", "\t", ","]),
    ),
    max_size=3,
).map(";".join)
CHARADES_ROWS = st.one_of(
    st.builds(
        charades_row, st.sampled_from(["A", "B", "C", "D", "", " A"]) | st.text(max_size=3), ACTIONS, TIMES
    ),
    st.lists(st.text(max_size=8), max_size=12),
)
CHARADES_HEADERS = st.one_of(
    st.just(CHARADES_HEADER),
    st.permutations(CHARADES_HEADER),
    st.lists(st.sampled_from(CHARADES_HEADER) | st.text(max_size=6), max_size=12),
)
CHARADES_CLASS_LINES = st.sampled_from(
    ["c000 Holding", "c001 Putting", "c002 Taking", "c000 again", "c003", ""]
)
CHARADES = st.fixed_dictionaries(
    {
        "classes": text_file(
            encoded(st.lists(CHARADES_CLASS_LINES | st.text(max_size=12), max_size=5).map("\n".join)),
            CHARADES_VALID_CLASSES.encode(),
        ),
        "split": text_file(
            encoded(
                st.builds(
                    lambda header, rows, quoted: csv_text([header, *rows], quoted),
                    CHARADES_HEADERS,
                    st.lists(CHARADES_ROWS, max_size=5),
                    st.booleans(),
                )
            ),
            CHARADES_VALID_SPLIT.encode(),
        ),
        "split_name": st.sampled_from(["train", "test"]),
        "frames": st.booleans(),
    }
)


def check_charades(ctx: Context, value: dict) -> None:
    from strg_deploy.data.datasets import CHARADES_CLASSES, CHARADES_SPLIT_FILES, read_charades

    with scratch() as root:
        write(root / CHARADES_CLASSES, value["classes"])
        write(root / CHARADES_SPLIT_FILES[value["split_name"]], value["split"])
        for vid in ("A", "B", "C"):
            write(root / "Charades_v1" / f"{vid}.mp4", b"")
            (root / "Charades_v1_rgb" / vid).mkdir(parents=True)
        dataset = clean_or_strg_error(
            lambda: read_charades(root, value["split_name"], frames=value["frames"], max_skipped_fraction=1.0)
        )
        if dataset is not None:
            check_dataset(dataset)


NAMES = st.one_of(
    st.sampled_from(["walk", "run", "Walk", "train", "val", ".hidden", "a b", "é", "x.mp4", "-"]),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
        min_size=1,
        max_size=10,
    ).filter(lambda name: name not in (".", "..")),
)
FILE_NAMES = st.one_of(
    NAMES,
    st.builds(
        lambda stem, ext: stem + ext,
        NAMES,
        st.sampled_from([".mp4", ".MP4", ".webm", ".mkv", ".txt", ".", ""]),
    ),
)
# a tree: {class folder: files}, None for a plain file at the top; "->" names a dangling symlink
TREES = st.dictionaries(
    NAMES, st.none() | st.lists(FILE_NAMES | FILE_NAMES.map(lambda n: "->" + n), max_size=4), max_size=4
)
FOLDERS = st.fixed_dictionaries(
    {
        "tree": TREES,
        "layout": st.sampled_from([None, "train", "val", "validation", "test"]),
        "split": st.sampled_from([None, "train", "validation", "test"]),
        "classes": st.none() | st.lists(NAMES, max_size=3),
        "extensions": st.none() | st.lists(st.sampled_from(["mp4", ".webm", "", "MKV", "."]), max_size=3),
    }
)


def check_folders(ctx: Context, value: dict) -> None:
    from strg_deploy.data.datasets import read_folders

    with scratch() as root:
        base = root / value["layout"] if value["layout"] else root
        base.mkdir(exist_ok=True)
        for folder, files in value["tree"].items():
            if files is None:
                write(base / folder, b"")
                continue
            (base / folder).mkdir(exist_ok=True)
            for name in files:
                path = base / folder / name.removeprefix("->")
                if path.exists() or path.is_symlink():
                    continue
                if name.startswith("->"):
                    os.symlink(root / "nowhere" / "x.mp4", path)
                else:
                    write(path, b"")
        kwargs: dict[str, Any] = {"max_skipped_fraction": 1.0}
        if value["classes"] is not None:
            kwargs["classes"] = value["classes"]
        if value["extensions"] is not None:
            kwargs["extensions"] = value["extensions"]
        dataset = clean_or_strg_error(lambda: read_folders(root, value["split"], **kwargs))
        if dataset is not None:
            check_dataset(dataset)


# ----------------------------------------------------------------------------------------------------
# Box tracks (boxes.jsonl)


def box_track(vid: Any, frames: int, tracks: list[list]) -> dict:
    return {
        "id": vid,
        "fps": 12.0,
        "width": 112,
        "height": 96,
        "frames": frames,
        "objects": [{"track": k, "role": "AB"[k % 2], "boxes": boxes} for k, boxes in enumerate(tracks)],
    }


BOXES_VALID = [
    box_track("v1", 3, [[[1.0, 2.0, 11.0, 12.5], None, [3, 4, 13, 14]], [None, None, [50, 50, 60, 70]]]),
    box_track("v2", 2, []),
    box_track(7, 1, [[[0, 0, 1, 1]]]),
]
BOX_VALUES = st.one_of(
    st.none(),
    st.lists(
        st.integers(-5, 200) | st.floats() | st.sampled_from([1e308, 10**400, True]), min_size=4, max_size=4
    ),
    JSON_VALUES,
)
BOX_LINES = st.one_of(
    st.builds(
        box_track,
        st.sampled_from(["v1", "v2", "", "é"]) | SCALARS,
        st.integers(min_value=-1, max_value=4),
        st.lists(st.lists(BOX_VALUES, max_size=4), max_size=3),
    ),
    st.builds(apply_edits, st.sampled_from(BOXES_VALID), EDITS),
    JSON_VALUES,
)


def jsonl_text(lines: list[Any], blank: bool) -> str:
    return ("\n\n" if blank else "\n").join(json.dumps(line) for line in lines) + "\n"


BOXES = text_file(
    encoded(st.builds(jsonl_text, st.lists(BOX_LINES, max_size=4), st.booleans())),
    jsonl_text(BOXES_VALID, False).encode(),
)


def check_boxes(ctx: Context, value: bytes) -> None:
    from strg_deploy.data.datasets import read_box_tracks

    with scratch() as root:
        tracks = clean_or_strg_error(lambda: read_box_tracks(write(root / "boxes.jsonl", value)))
    for vid, track in (tracks or {}).items():
        assert vid == track.video_id and isinstance(vid, str)
        assert track.boxes.shape == (track.num_frames, track.num_objects, 4)
        assert np.isfinite(track.boxes).all(), f"boxes of {vid} are not finite"
        boxes, valid = track.boxes_at_times([0.0, 0.5, 1e9, -3.0])
        assert boxes.shape == (4, track.num_objects, 4) and valid.shape == (4, track.num_objects)
        clean_or_strg_error(lambda t=track: t.boxes_at([0, t.num_frames - 1]))


# ----------------------------------------------------------------------------------------------------
# config.json and the training options file

CONFIG_VALID = preset("tiny").to_dict()
CONFIG = text_file(
    json_files(st.builds(apply_edits, st.just(CONFIG_VALID), EDITS) | JSON_VALUES),
    json_text(CONFIG_VALID, False, 2).encode(),
)


def check_config(ctx: Context, value: bytes) -> None:
    from strg_deploy.config import ModelConfig

    with scratch() as root:
        cfg = clean_or_strg_error(lambda: ModelConfig.load(write(root / "config.json", value)))
    if cfg is not None:
        json.dumps(cfg.to_dict(), allow_nan=False)  # strict JSON: no NaN or Infinity
        assert ModelConfig.from_json(cfg.to_json()) == cfg
        assert (cfg.num_classes, cfg.feature_frames, cfg.feature_size) and cfg.feature_frames > 0


OPTIONS_VALID = {
    "epochs": 3,
    "batch_size": 8,
    "lr": 0.05,
    "weight_decay": 0.0001,
    "warmup_epochs": 0.5,
    "workers": 2,
    "seed": 7,
    "freeze_bn": False,
    "device": "cpu",
    "max_steps": None,
    "max_unreadable": 0.1,
}
OPTIONS = text_file(
    json_files(st.builds(apply_edits, st.just(OPTIONS_VALID), EDITS) | JSON_VALUES),
    json_text(OPTIONS_VALID, False, 2).encode(),
)


def check_options(ctx: Context, value: bytes) -> None:
    from strg_deploy.train.run import options_from_file

    with scratch() as root:
        clean_or_strg_error(lambda: options_from_file(write(root / "options.json", value), {}))


# ----------------------------------------------------------------------------------------------------
# The export manifest (read side)

# ("edit", edits, indent) edits the real manifest; ("mutate", mutations) changes its bytes; ("raw", bytes).
# Regression examples also use ("set", "dotted.key", value) and ("delete", "dotted.key").
MANIFEST = st.one_of(
    st.tuples(st.just("edit"), EDITS, st.sampled_from([None, 2])),
    st.tuples(st.just("mutate"), MUTATIONS),
    st.tuples(st.just("raw"), SPECIAL_FILES | json_files(JSON_VALUES)),
)


def export_with(export: Path, folder: Path, name: str, data: bytes) -> None:
    """``folder`` as the export in ``export`` (its files linked) with the file ``name`` holding ``data``."""
    for path in export.iterdir():
        if path.name != name:
            os.symlink(path, folder / path.name)
    write(folder / name, data)


def check_manifest(ctx: Context, value: tuple) -> None:
    from strg_deploy.contract.manifest import MANIFEST_FILE, read_manifest, verify_files
    from strg_deploy.contract.reference import read_reference

    export = ctx.export()
    original = (export / MANIFEST_FILE).read_bytes()
    if value[0] == "edit":
        data = json.dumps(apply_edits(json.loads(original), value[1]), indent=value[2]).encode()
    elif value[0] in ("set", "delete"):
        manifest = json.loads(original)
        *parents, last = value[1].split(".")
        node = manifest
        for key in parents:
            node = node[key]
        if value[0] == "set":
            node[last] = value[2]
        else:
            del node[last]
        data = json.dumps(manifest).encode()
    elif value[0] == "mutate":
        data = mutate(original, value[1])
    else:
        data = value[1]
    with scratch() as folder:
        export_with(export, folder, MANIFEST_FILE, data)
        manifest = clean_or_strg_error(lambda: read_manifest(folder))
        if manifest is None:
            return
        # what the commands that read an export use of it
        assert isinstance(manifest["clip"]["num_boxes"], int)
        for entry in manifest["networks"].values():
            assert Path(entry["file"]).name == entry["file"], f"a network file outside the folder: {entry}"
        verify_files(folder, manifest)
        clean_or_strg_error(lambda: read_reference(folder, manifest))


# ----------------------------------------------------------------------------------------------------
# The export's reference sample (reference.npz, read by strg verify)

SIDECAR_VALID = {
    "schema": "strg-deploy-engine",
    "schema_version": 1,
    "network": "head",
    "engine_file": "head.engine",
    "engine_sha256": "0" * 64,
    "tensorrt_version": "10.13.0.35",
    "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"},
    "precision": "fp16",
    "profile": {"features": {"min": [1, 32, 4, 2, 2], "opt": [4, 32, 4, 2, 2], "max": [8, 32, 4, 2, 2]}},
    "model_config_sha256": hashlib.sha256(b"{}").hexdigest(),  # contract.engines.config_sha256({})
    "export_files": {"head.onnx": "2" * 64},
}
SIDECAR = text_file(
    json_files(st.builds(apply_edits, st.just(SIDECAR_VALID), EDITS) | JSON_VALUES),
    json_text(SIDECAR_VALID, False, 2).encode(),
)


def check_sidecar(ctx: Context, value: bytes) -> None:
    """An engine's sidecar (read on the deployment machine before an engine loads): parsed, or one line;
    a parsed one is then checked against a TensorRT version, a GPU and a manifest: accepted, or one line."""
    from strg_deploy.contract.engines import Gpu, check_engine, read_sidecar

    manifest = {"model": {"config": {}}, "networks": {"head": {"file": "head.onnx", "sha256": "2" * 64}}}
    with scratch() as root:
        write(root / "head.engine.json", value)
        sidecar = clean_or_strg_error(lambda: read_sidecar(root / "head.engine", root))
        if sidecar is not None:
            json.dumps(sidecar.to_dict(), allow_nan=False)
            gpu = Gpu("NVIDIA H200", "9.0")
            clean_or_strg_error(lambda: check_engine(sidecar, "10.13.0.35", gpu, manifest, export_dir=root))


REFERENCE_KEYS = ("clips", "rpn.boxes", "rpn.scores", "rpn.mask", "backbone.features", "head.logits")
REFERENCE_CHANGES = ("drop", "float64", "uint8", "flatten", "empty", "pickled")
# ("mutate", mutations) changes the real file's bytes; ("array", key, change) rewrites one array;
# ("raw", bytes) replaces the file.
REFERENCE = st.one_of(
    st.tuples(st.just("mutate"), MUTATIONS),
    st.tuples(st.just("array"), st.sampled_from(REFERENCE_KEYS), st.sampled_from(REFERENCE_CHANGES)),
    st.tuples(st.just("raw"), SPECIAL_FILES),
)


def changed_reference(original: bytes, key: str, change: str) -> bytes:
    """The npz ``original`` with array ``key`` dropped, retyped, reshaped, emptied or pickled."""
    with np.load(io.BytesIO(original)) as data:
        arrays = {k: data[k] for k in data.files}
    if change == "drop":
        del arrays[key]
    elif change == "flatten":
        arrays[key] = arrays[key].reshape(-1)
    elif change == "empty":
        arrays[key] = arrays[key][:0]
    elif change == "pickled":
        arrays[key] = np.array([{"not": "an array"}], dtype=object)
    else:
        arrays[key] = arrays[key].astype(change)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def check_reference(ctx: Context, value: tuple) -> None:
    from strg_deploy.contract.manifest import read_manifest
    from strg_deploy.contract.reference import REFERENCE_FILE, read_reference

    export = ctx.export()
    original = (export / REFERENCE_FILE).read_bytes()
    if value[0] == "mutate":
        data = mutate(original, value[1])
    elif value[0] == "array":
        data = changed_reference(original, value[1], value[2])
    else:
        data = value[1]
    with scratch() as folder:
        export_with(export, folder, REFERENCE_FILE, data)
        manifest = read_manifest(folder)
        reference = clean_or_strg_error(lambda: read_reference(folder, manifest))
        if reference is None:
            return
        # what strg verify uses of it
        k = len(reference.names)
        assert reference.clips.shape[0] == k and reference.clips.dtype == np.uint8
        assert reference.outputs["head"]["logits"].shape[0] == k


# ----------------------------------------------------------------------------------------------------
# Videos, decoded in a child process


# name -> bytes kept of the clip (None: all)
VIDEO_SEEDS = {
    "out_of_order_pts_50x50.mov": None,
    "hevc_128x128.mp4": None,
    "keyboard_rotated90_h264_568x320.mov": None,
    "av1_640x360.mkv": None,
    "eye_makeup_mpeg4_mp3_320x240.avi": 50_000,
    "arm_wrestling_h264_340x256.mp4": 50_000,  # its index is at the end: these bytes lack it
    "arm_wrestling_faststart.mp4": 50_000,  # remuxed with the index first: a truncated file
}
VIDEO = st.tuples(st.sampled_from(sorted(VIDEO_SEEDS)), MUTATIONS | st.just([]), st.sampled_from([1, 0]))


def video_seed(name: str) -> bytes:
    """The seed clip's bytes (the faststart one is remuxed here from arm_wrestling)."""
    if name == "arm_wrestling_faststart.mp4":
        import av

        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / name
            with av.open(str(VIDEOS / "arm_wrestling_h264_340x256.mp4")) as src:
                with av.open(str(out), "w", options={"movflags": "faststart"}) as dst:
                    stream = dst.add_stream_from_template(src.streams.video[0])
                    for packet in src.demux(src.streams.video[0]):
                        if packet.dts is not None:
                            packet.stream = stream
                            dst.mux(packet)
            data = out.read_bytes()
    else:
        data = (VIDEOS / name).read_bytes()
    keep = VIDEO_SEEDS[name]
    return data if keep is None else data[:keep]


def exercise_video(path: str, threads: int) -> str:
    """Open a video and read it every way the package does; 'clean' or the StrgError messages met."""
    from strg_deploy.data.video import open_video

    errors = []

    def step(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except StrgError as err:
            assert "\n" not in str(err).strip(), f"StrgError of several lines: {err!r}"
            errors.append(str(err))
            return None

    video = step(lambda: open_video(path, threads=threads))
    if video is None:
        return errors[0]
    with video:
        step(lambda: (video.container_format, video.codec, video.pixel_format, video.size, video.rotation))
        step(lambda: (video.nominal_fps, video.duration, video.declared_duration, video.truncated))
        step(lambda: video.declared_frames)
        size = (32, 24)
        frames = step(lambda: [frame.time for frame in video.frames(size=size)])
        if frames is not None:
            assert all(b >= a for a, b in zip(frames, frames[1:], strict=False)), "frame times go backwards"
        step(lambda: video.frame_times())
        clip = step(lambda: video.read_at([0.0, 0.04, 0.5, 0.1, 30.0], size=size))
        if clip is not None:
            assert clip.images.shape == (5, 24, 32, 3), clip.images.shape
        step(lambda: video.read_at([0.2]))
        step(lambda: video.count_frames())
    return "; ".join(errors) or "clean"


def video_worker() -> None:
    """The child's loop: a JSON request per line ({"path", "threads"}), a JSON answer per line
    ({"outcome"} or {"error": traceback})."""
    import resource

    limit = 6 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = {"outcome": exercise_video(request["path"], request["threads"])}
        except BaseException:  # noqa: B036 - everything but StrgError is the finding
            answer = {"error": traceback.format_exc(limit=-8)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


class VideoFailure(Exception):
    """The child process found an exception other than StrgError, hung or died."""


class VideoWorker:
    """A child process that opens and decodes videos (see :func:`video_worker`), restarted after a hang
    or a crash."""

    def __init__(self, timeout: float = EXAMPLE_SECONDS) -> None:
        self.timeout = timeout
        self.process: subprocess.Popen | None = None

    def check(self, path: Path, threads: int) -> str:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--video-worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        process = self.process
        process.stdin.write(json.dumps({"path": str(path), "threads": threads}) + "\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], self.timeout)
        if not ready:
            self.close()
            raise VideoFailure(f"hang: reading the video took more than {self.timeout:.0f} s")
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            self.process = None
            raise VideoFailure(f"the decoding process died (exit status {code})")
        answer = json.loads(line)
        if "error" in answer:
            raise VideoFailure("exception other than StrgError:\n" + answer["error"])
        return answer["outcome"]

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def check_video(ctx: Context, value: tuple) -> None:
    name, mutations, threads = value
    data = mutate(ctx.video_seed(name), mutations) if mutations else ctx.video_seed(name)
    path = write(ctx.root / "videos" / f"fuzz{Path(name).suffix}", data)
    ctx.video_worker().check(path, threads)


# ----------------------------------------------------------------------------------------------------
# Targets and the context they share


class Context:
    """What the targets share: a scratch folder, the seed clips, the video process and one export."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._seeds: dict[str, bytes] = {}
        self._worker: VideoWorker | None = None
        self._export: Path | None = None

    def video_seed(self, name: str) -> bytes:
        if name not in self._seeds:
            self._seeds[name] = video_seed(name)
        return self._seeds[name]

    def video_worker(self) -> VideoWorker:
        if self._worker is None:
            self._worker = VideoWorker()
        return self._worker

    def export(self) -> Path:
        """A real export folder of the tiny preset (random weights), made once."""
        if self._export is None:
            from typer.testing import CliRunner

            from strg_deploy.cli import app

            out = self.root / "export"
            result = CliRunner().invoke(app, ["export", "--preset", "tiny", "--out", str(out)])
            if result.exit_code != 0:
                raise RuntimeError(f"strg export --preset tiny failed: {result.output} {result.exception!r}")
            self._export = out
        return self._export

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()


@dataclass(frozen=True)
class Target:
    name: str
    strategy: st.SearchStrategy
    check: Callable[[Context, Any], None]
    in_process: bool = True  # False: the check guards its own time (the video process)
    prepare: Callable[[Context], Any] | None = None  # set-up, run once before the first example


TARGETS = {
    t.name: t
    for t in (
        Target("ssv2", SSV2, check_ssv2),
        Target("ssv1", SSV1, check_ssv1),
        Target("charades", CHARADES, check_charades),
        Target("folders", FOLDERS, check_folders),
        Target("boxes", BOXES, check_boxes),
        Target("config", CONFIG, check_config),
        Target("options", OPTIONS, check_options),
        Target("manifest", MANIFEST, check_manifest, prepare=Context.export),
        Target("reference", REFERENCE, check_reference, prepare=Context.export),
        Target("sidecar", SIDECAR, check_sidecar),
        Target("video", VIDEO, check_video, in_process=False),
    )
}


def run_check(ctx: Context, target: Target, value: Any) -> None:
    """One example: the target's check under the hang guard (its set-up, made once, outside it)."""
    if target.prepare is not None:
        target.prepare(ctx)
    if not target.in_process:
        target.check(ctx, value)
        return
    with time_limit(EXAMPLE_SECONDS):
        target.check(ctx, value)


SETTINGS = settings(
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


# ----------------------------------------------------------------------------------------------------
# The bounded run


@dataclass
class Outcome:
    target: str
    tried: int = 0
    failures: list[str] | None = None
    seconds: float = 0.0


def _cut(text: str, limit: int) -> str:
    return (
        text
        if len(text) <= limit
        else f"{text[: limit // 2]} ... ({len(text) - limit} characters) ... {text[-limit // 2 :]}"
    )


def _describe(err: BaseException) -> list[str]:
    """One text per distinct failure: the exception, where it came from, and the smallest input."""
    errors = list(err.exceptions) if isinstance(err, BaseExceptionGroup) else [err]
    texts = []
    for error in errors:
        notes = [_cut(n, 800) for n in getattr(error, "__notes__", []) if not n.startswith("You can")]
        frames = traceback.extract_tb(error.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        texts.append(
            f"{type(error).__name__}: {_cut(str(error).strip(), 1200)} (at {where})\n  " + "\n  ".join(notes)
        )
    return texts


def fuzz_target(ctx: Context, target: Target, seconds: float, seed: int, batch: int = 50) -> Outcome:
    """Run ``target`` in batches of ``batch`` examples (each batch another seed) for about ``seconds``;
    stop at the first batch that fails, after Hypothesis has shrunk its input."""
    outcome = Outcome(target.name)
    start = time.perf_counter()
    number = 0
    while time.perf_counter() - start < seconds:

        def body(value: Any) -> None:
            outcome.tried += 1
            run_check(ctx, target, value)

        test = hypothesis_seed(seed * 100_003 + number)(
            given(target.strategy)(settings(SETTINGS, max_examples=batch)(body))
        )
        number += 1
        try:
            test()
        except (Exception, BaseExceptionGroup) as err:  # noqa: B902 - every failure is reported
            outcome.failures = _describe(err)
            break
    outcome.seconds = time.perf_counter() - start
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="total fuzzing time, split over the targets"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="repeat a run (default: a fresh seed, printed)"
    )
    parser.add_argument("--target", action="append", choices=sorted(TARGETS), help="only these targets")
    parser.add_argument("--video-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.video_worker:
        video_worker()
        return 0
    sys.path.insert(0, str(HERE))
    from _timing import console, print_table

    run_seed = args.seed if args.seed is not None else random.randrange(2**31)
    names = args.target or list(TARGETS)
    if "video" in names and not VIDEOS.is_dir():
        console.print(f"no video target: the real clips are not at {VIDEOS}")
        names.remove("video")
    share = args.seconds / len(names)
    console.print(f"fuzzing {', '.join(names)}: {share:.0f} s each, seed {run_seed}")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="strg-fuzz-") as folder:
        ctx = Context(Path(folder))
        try:
            for name in names:
                if TARGETS[name].prepare is not None:
                    setup = time.perf_counter()
                    TARGETS[name].prepare(ctx)
                    console.print(f"set up the {name} target in {time.perf_counter() - setup:.0f} s")
            for name in names:
                outcomes.append(fuzz_target(ctx, TARGETS[name], share, run_seed))
        finally:
            ctx.close()
    print_table(
        f"fuzzing, seed {run_seed}",
        ["target", "inputs tried", "failures found", "seconds"],
        [(o.target, o.tried, len(o.failures or []), f"{o.seconds:.1f}") for o in outcomes],
    )
    failed = [o for o in outcomes if o.failures]
    for o in failed:
        for text in o.failures:
            console.print(f"{o.target} FAILED: {text}", markup=False, highlight=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
