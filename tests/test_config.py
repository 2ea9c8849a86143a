"""Model configs: presets, JSON round trip, validation, atomic writes."""

from __future__ import annotations

import json

import pytest

from strg_deploy.config import KINETICS_R50_INFLATE, PRESETS, ModelConfig, preset
from strg_deploy.errors import StrgError
from strg_deploy.fileio import atomic_path, atomic_write_text


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_json_round_trip(name, tmp_path):
    cfg = preset(name)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "config.json")
    assert ModelConfig.load(tmp_path) == cfg
    assert ModelConfig.load(tmp_path / "config.json").preset == name


def test_paper_preset_matches_the_paper():
    cfg = preset("paper-r50")
    assert (cfg.frames, cfg.size) == (32, 224)
    assert (cfg.feature_frames, cfg.feature_size, cfg.node_dim) == (16, 14, 512)
    assert cfg.backbone.depth == 50 and cfg.backbone.width == 64
    assert cfg.backbone.inflate == KINETICS_R50_INFLATE
    assert cfg.backbone.conv1_kernel == (5, 7, 7)
    assert cfg.backbone.res5_channels == 2048
    assert cfg.head.layers == 3 and cfg.head.roi_size == 7 and cfg.head.fusion == "sum"
    assert cfg.proposals.num_boxes == 50 and cfg.proposals.detector == "resnet50_fpn"


def test_small_presets_keep_the_stride_contract():
    for name in ("small", "tiny"):
        cfg = preset(name)
        assert cfg.feature_frames * cfg.backbone.temporal_stride == cfg.frames
        assert cfg.feature_size * 16 == cfg.size
        assert tuple(len(s) for s in cfg.backbone.inflate) == (2, 2, 2, 2)


def test_with_classes_changes_only_the_label_space():
    cfg = preset("tiny").with_classes(["a", "b", "c"], multi_label=True)
    assert cfg.num_classes == 3 and cfg.multi_label
    assert cfg.backbone == preset("tiny").backbone


@pytest.mark.parametrize(
    "change, message",
    [
        ({"frames": 7}, "multiple of 2"),
        ({"size": 100}, "multiple of 16"),
        ({"classes": ()}, "at least one class"),
        ({"classes": ("a", "a")}, "unique"),
        ({"architecture": "resnet"}, "architecture"),
    ],
)
def test_invalid_configs_raise_one_clear_error(change, message):
    with pytest.raises(StrgError, match=message):
        preset("tiny").replace(**change)


def test_unknown_preset_names_the_choices():
    with pytest.raises(StrgError, match="paper-r50, small, tiny"):
        preset("huge")


def test_malformed_config_files(tmp_path):
    with pytest.raises(StrgError, match="not valid JSON"):
        ModelConfig.from_json("{")
    data = preset("tiny").to_dict()
    data["backbone"]["depth"] = 101
    with pytest.raises(StrgError, match="depth"):
        ModelConfig.from_dict(data)
    data = preset("tiny").to_dict()
    data["head"]["colour"] = "red"
    with pytest.raises(StrgError, match="colour"):
        ModelConfig.from_dict(data)
    data = preset("tiny").to_dict()
    data["backbone"]["inflate"] = [[1, 1], [1]]
    with pytest.raises(StrgError, match="inflate"):
        ModelConfig.from_dict(data)
    with pytest.raises(StrgError, match="cannot read model config"):
        ModelConfig.load(tmp_path / "missing.json")


def test_json_holds_lists_and_a_schema():
    data = json.loads(preset("small").to_json())
    assert data["schema"] == 1
    assert isinstance(data["backbone"]["inflate"][0], list)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path):
    atomic_write_text(tmp_path / "atomic.json", "{}")
    (tmp_path / "plain.json").write_text("{}")
    mode = (tmp_path / "atomic.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.json").stat().st_mode & 0o777  # not mkstemp's 0600


def test_atomic_path_gives_plain_permissions_when_the_writer_sets_its_own(tmp_path):
    with atomic_path(tmp_path / "weights.bin") as tmp:  # as safetensors' save_file does: 0600
        tmp.write_bytes(b"1")
        tmp.chmod(0o600)
    (tmp_path / "plain.bin").write_bytes(b"1")
    assert (tmp_path / "weights.bin").stat().st_mode & 0o777 == (
        tmp_path / "plain.bin"
    ).stat().st_mode & 0o777


def _tiny_with(change) -> dict:
    data = preset("tiny").to_dict()
    change(data)
    return data


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(frames="eight"), 'frames: expected an integer, got "eight"'),
        (lambda d: d["backbone"].update(width="eight"), 'backbone.width: expected an integer, got "eight"'),
        (lambda d: d["backbone"].update(width=True), "backbone.width: expected an integer, got true"),
        (lambda d: d["backbone"].update(width=8.5), "backbone.width: expected an integer, got 8.5"),
        (lambda d: d.update(multi_label=0), "multi_label: expected true or false, got 0"),
        (lambda d: d.update(span_seconds="2"), 'span_seconds: expected a number, got "2"'),
        (lambda d: d.update(span_seconds=float("inf")), "span_seconds: expected a finite number"),
        (lambda d: d.update(classes="abc"), 'classes: expected a list of strings, got "abc"'),
        (lambda d: d.update(classes=["a", 2]), r"classes\[1\]: expected a string, got 2"),
        (
            lambda d: d["backbone"].update(conv1_kernel=[3, 7]),
            r"backbone.conv1_kernel: expected a list of 3 integers, got \[3, 7\]",
        ),
        (
            lambda d: d["backbone"].update(inflate=[[1, 1], [1, None], [1, 0], [0, 1]]),
            r"backbone.inflate\[1\]\[1\]: expected an integer, got null",
        ),
        (
            lambda d: d["proposals"].update(anchor_sizes=[8, 16]),
            r"proposals.anchor_sizes\[0\]: expected a list of integers, got 8",
        ),
        (lambda d: d["proposals"].update(mean=[0.5, 0.5]), "proposals.mean: expected a list of 3 numbers"),
        (lambda d: d.update(head=[]), r"head: expected an object, got \[\]"),
        (lambda d: d.pop("preset"), r"missing keys \['preset'\]"),
    ],
)
def test_a_value_of_the_wrong_type_names_its_dotted_field(change, message):
    with pytest.raises(StrgError, match=message):
        ModelConfig.from_dict(_tiny_with(change))


def test_float_fields_take_integers_and_missing_keys_take_defaults():
    cfg = ModelConfig.from_dict(_tiny_with(lambda d: d.update(span_seconds=2)))
    assert cfg.span_seconds == 2.0 and isinstance(cfg.span_seconds, float)
    assert cfg == preset("tiny")
    assert ModelConfig.from_dict({"preset": "custom"}) == ModelConfig(preset="custom")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(span_seconds=0), "span_seconds must be positive"),
        (lambda d: d["backbone"].update(std=[0.2, 0.0, 0.2]), "backbone std must be positive"),
        (lambda d: d["backbone"].update(conv1_kernel=[0, 7, 7]), "conv1_kernel"),
        (lambda d: d["backbone"].update(inflate=[[1, 1], [1, 2], [1, 0], [0, 1]]), "0 or 1"),
        (lambda d: d["proposals"].update(pre_nms_top_n=0), "pre_nms_top_n must be positive"),
        (lambda d: d["proposals"].update(score_threshold=1.5), "score_threshold"),
        (lambda d: d["head"].update(roi_size=0), "roi_size must be positive"),
        (lambda d: d["head"].update(dropout=1.0), r"dropout must be in \[0, 1\)"),
    ],
)
def test_values_out_of_range_are_refused(change, message):
    with pytest.raises(StrgError, match=message):
        ModelConfig.from_dict(_tiny_with(change))


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON: RecursionError"),  # nesting beyond the parser
        ('{"preset": "x", "frames": ' + "1" * 5000 + "}", "not valid JSON: ValueError"),  # > 4300 digits
        ('{"preset": "x", "schema": 2}', "schema 2 is not supported"),
        ("[1, 2]", "must be an object"),
    ],
)
def test_json_the_parser_refuses_is_one_error(text, message):
    with pytest.raises(StrgError, match=message):
        ModelConfig.from_json(text)


def test_a_binary_file_given_as_config_is_one_error_naming_it(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"__metadata__"\xff\xfe\x00\x01')
    with pytest.raises(StrgError, match=f"model config {path} is not UTF-8 JSON text"):
        ModelConfig.load(path)


def test_load_names_the_file_of_a_malformed_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_tiny_with(lambda d: d["backbone"].update(width="eight"))))
    with pytest.raises(StrgError) as err:
        ModelConfig.load(tmp_path)
    assert str(err.value) == (
        f'{path}: malformed model config: backbone.width: expected an integer, got "eight"'
    )


def test_cli_prints_one_line_for_a_binary_config(tmp_path):
    from typer.testing import CliRunner

    from strg_deploy.cli import app

    path = tmp_path / "garbage.safetensors"
    path.write_bytes(bytes(range(256)))
    result = CliRunner().invoke(app, ["model", "summary", "--config", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "is not UTF-8 JSON text" in lines[0] and "Traceback" not in result.output
