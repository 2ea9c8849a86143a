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
