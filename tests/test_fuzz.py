"""Fuzzing every reader of outside input (the targets of benchmarks/fuzz.py) for a few derandomized
examples each: a clean result or StrgError, never another exception and never a hang.

Every bug the fuzzer found keeps its input here as an ``@example``, which runs before the generated
ones. ``python benchmarks/fuzz.py --seconds 120`` runs the same targets for longer with fresh seeds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
_spec = importlib.util.spec_from_file_location("strg_fuzz", BENCHMARKS / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["strg_fuzz"] = fuzz  # dataclasses look their module up by name
_spec.loader.exec_module(fuzz)

EXAMPLES = 200  # per target: the whole file takes 40-50 s on 2 cores, 20 s of it the export
SUITE = settings(fuzz.SETTINGS, derandomize=True, max_examples=EXAMPLES)

DEEP = b"[" * 5000 + b"]" * 5000  # nested deeper than the json module's recursion limit
HUGE_INT = b"1" + b"0" * 5000  # over Python's 4300-digit limit for int(str)
SSV2_LABELS = json.dumps(fuzz.SSV2_VALID_LABELS).encode()
SSV2_SPLIT = json.dumps(fuzz.SSV2_VALID_SPLIT).encode()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    context = fuzz.Context(tmp_path_factory.mktemp("fuzz"))
    yield context
    context.close()


def check(ctx, name: str, value) -> None:
    fuzz.run_check(ctx, fuzz.TARGETS[name], value)


def ssv2(labels: bytes = SSV2_LABELS, split: bytes = SSV2_SPLIT) -> dict:
    return {
        "labels": labels,
        "split": split,
        "split_name": "train",
        "strict": False,
        "max_skipped_fraction": 0.5,
    }


def box_line(**changes) -> bytes:
    line = fuzz.box_track("v1", 2, [[[0, 0, 10, 10], None]])
    line.update(changes)
    return (json.dumps(line) + "\n").encode()


def test_the_fuzz_building_blocks():
    assert fuzz.mutate(b"abcdef", [("flip", 0, 1, b"\x01")]) == b"`bcdef"
    assert fuzz.mutate(b"abcdef", [("truncate", 9, 1, b"x")]) == b"abc"  # positions wrap around
    assert fuzz.mutate(b"abcdef", [("duplicate", 1, 2, b"x"), ("zero", 0, 1, b"x")]) == b"\0bcbcdef"
    assert fuzz.apply_edits({"a": [1, 2], "b": 3}, [([0, 1], "replace", "x")]) == {"a": [1, "x"], "b": 3}
    assert fuzz.apply_edits({"a": [1, 2]}, [([0, 0], "delete", None)]) == {"a": [2]}
    assert fuzz.encode("a\nb\n", "crlf") == b"a\r\nb\r\n"
    assert fuzz.encode("a", "bom") == b"\xef\xbb\xbfa"


def test_a_reader_that_raises_another_exception_fails_the_property(ctx):
    with pytest.raises(ZeroDivisionError):
        fuzz.clean_or_strg_error(lambda: 1 / 0)
    assert fuzz.clean_or_strg_error(lambda: 5) == 5
    with pytest.raises(fuzz.Hang):
        with fuzz.time_limit(0.05):
            while True:
                pass


@SUITE
@given(fuzz.SSV2)
@example(ssv2(labels=DEEP))  # RecursionError from json.loads
@example(ssv2(split=b'[{"id": ' + HUGE_INT + b"}]"))  # ValueError (not JSONDecodeError) from json.loads
@example(ssv2(labels=b'{"Pushing something from left to right": 1e400}'))  # int(inf): OverflowError
@example(dict(ssv2(split=b'[{"id": "1", "template": "a\\r\\nb"}]'), strict=True))  # an error of two lines
def test_something_something_v2_annotations(ctx, value):
    check(ctx, "ssv2", value)


@SUITE
@given(fuzz.SSV1)
def test_something_something_v1_annotations(ctx, value):
    check(ctx, "ssv1", value)


@SUITE
@given(fuzz.CHARADES)
@example(  # an unclosed quote running past the csv module's field limit: _csv.Error
    {
        "classes": fuzz.CHARADES_VALID_CLASSES.encode(),
        "split": b'"' + b"x" * 140_000 + b"\n",
        "split_name": "train",
        "frames": False,
    }
)
@example(  # a quoted action with a line break inside, reported (reversed) as a warning of two lines
    {
        "classes": fuzz.CHARADES_VALID_CLASSES.encode(),
        "split": fuzz.csv_text(
            [fuzz.CHARADES_HEADER, fuzz.charades_row("A", "c000 5\n1", "10")], True
        ).encode(),
        "split_name": "train",
        "frames": False,
    }
)
def test_charades_annotations(ctx, value):
    check(ctx, "charades", value)


@SUITE
@given(fuzz.FOLDERS)
@example({"tree": {"walk": ["\n"]}, "layout": None, "split": None, "classes": None, "extensions": None})
def test_class_folders(ctx, value):
    check(ctx, "folders", value)


@SUITE
@given(fuzz.BOXES)
@example(DEEP)  # RecursionError
@example(box_line(width=float("inf")).replace(b"Infinity", b"1e400"))  # int(inf): OverflowError
@example(box_line(fps=10**400))  # float(10**400): OverflowError
@example(box_line(frames=0, objects=[]))  # accepted, then boxes_at_times indexed an empty array
@example(box_line(frames=10**10, objects=[{"boxes": []}]))  # allocated 149 GiB before checking lengths
@example(box_line(objects=[{"boxes": [[0, 0, 1, 1e308], None]}]))  # finite in JSON, inf as float32
@example(box_line(objects=[{"boxes": [[0, 0, 1, 10**400], None]}]))  # math.isfinite(10**400): OverflowError
def test_box_tracks(ctx, value):
    check(ctx, "boxes", value)


@SUITE
@given(fuzz.CONFIG)
# a safetensors file given as config: UnicodeDecodeError
@example(b"\x10\x00\x00\x00\x00\x00\x00\x00{\xff\xfe")
@example(DEEP)  # RecursionError
@example(b'{"preset": "x", "frames": ' + HUGE_INT + b"}")  # ValueError from json.loads
@example(json.dumps(dict(fuzz.CONFIG_VALID, span_seconds=float("nan"))).encode())  # NaN: not strict JSON
def test_model_config(ctx, value):
    check(ctx, "config", value)


@SUITE
@given(fuzz.OPTIONS)
@example(b'{"epochs": 2}')
@example(b"\xff\xfe{}")  # UnicodeDecodeError
@example(DEEP)  # RecursionError
@example(b'{"epochs": ' + HUGE_INT + b"}")  # ValueError from json.loads
@example(b'{"lr": 1' + b"0" * 400 + b"}")  # TypeError from np.isfinite on a 401-digit integer
def test_training_options_file(ctx, value):
    check(ctx, "options", value)


@SUITE
@given(fuzz.MANIFEST)
@example(("mutate", [("flip", 0, 1, b"\x84")]))  # not UTF-8: UnicodeDecodeError
@example(("raw", DEEP))  # RecursionError
@example(("set", "networks", []))  # AttributeError: 'list' object has no attribute 'items'
@example(("delete", "networks.rpn.file"))  # KeyError: 'file'
@example(("set", "networks.rpn.file", 3))  # TypeError: PosixPath / int
@example(("set", "networks.rpn.file", "/etc/passwd"))  # accepted: a file outside the export folder
@example(("delete", "networks"))  # accepted without networks
@example(("set", "clip.num_boxes", "4"))  # accepted; strg export --lint then used a string
def test_export_manifest(ctx, value):
    check(ctx, "manifest", value)


@settings(SUITE)
@given(fuzz.REFERENCE)
@example(("array", "clips", "pickled"))  # an object array: np.load refuses pickles
@example(("array", "backbone.features", "flatten"))
@example(("array", "rpn.mask", "uint8"))
@example(("raw", b""))
@example(("mutate", [("flip", 59, 1, b"\x00")]))  # zlib.error from a damaged compressed member
@example(("set", "reference.tolerance.atol", -1))
def test_export_reference_sample(ctx, value):
    if value[0] == "set":  # a manifest whose reference entry is wrong
        check(ctx, "manifest", value)
    else:
        check(ctx, "reference", value)


@SUITE
@given(fuzz.SIDECAR)
@example(json.dumps(fuzz.SIDECAR_VALID).encode())  # accepted: it fits the TensorRT, GPU and manifest checked
@example(DEEP)  # RecursionError
@example(json.dumps(dict(fuzz.SIDECAR_VALID, profile=[])).encode())
@example(json.dumps(dict(fuzz.SIDECAR_VALID, gpu="H200")).encode())
@example(json.dumps(dict(fuzz.SIDECAR_VALID, export_files={"head.onnx": 3})).encode())
def test_engine_sidecar(ctx, value):
    check(ctx, "sidecar", value)


@pytest.mark.skipif(not fuzz.VIDEOS.is_dir(), reason=f"real clips not found at {fuzz.VIDEOS}")
@settings(SUITE, max_examples=2 * EXAMPLES)
@given(fuzz.VIDEO)
@example(  # tags that are not UTF-8: PyAV's UnicodeDecodeError from av.open
    (
        "out_of_order_pts_50x50.mov",
        [("set", 1101, 1, b"\x00" * 11 + b"\x80"), ("insert", 1100, 1, b"\x00" * 12)],
        1,
    )
)
def test_video_files(ctx, value):
    check(ctx, "video", value)
