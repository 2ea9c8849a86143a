"""GPU decoding (NVDEC through PyAV's hwaccel): without a GPU, `--decode cuda` is one line and exit 2,
`--decode auto` decodes on the CPU after a notice, and the option is parsed; with a GPU, NVDEC's frames
match the CPU decoder's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from strg_deploy.cli import app
from strg_deploy.data.gpu_decode import (
    cuda_decode_problem,
    open_video_cuda,
    resolve_decode,
    video_opener,
)
from strg_deploy.data.video import open_video
from strg_deploy.errors import StrgError

runner = CliRunner()
PROBLEM = cuda_decode_problem()
no_nvdec_here = pytest.mark.skipif(PROBLEM is None, reason="this machine decodes with NVDEC")
needs_nvdec = pytest.mark.skipif(PROBLEM is not None, reason="needs an NVIDIA GPU with NVDEC")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from conftest import write_clip

    return write_clip(tmp_path_factory.mktemp("decode") / "clip.mp4", 3, seconds=1.0)


@no_nvdec_here
def test_without_a_gpu_the_reason_is_one_line_from_ffmpeg():
    assert "\n" not in PROBLEM
    assert PROBLEM.startswith("FFmpeg cannot open CUDA device 0 for NVDEC") or "without CUDA" in PROBLEM
    assert "NVIDIA GPU" in PROBLEM or "without CUDA" in PROBLEM


@no_nvdec_here
def test_cuda_is_refused_and_auto_falls_back_to_the_cpu_with_a_notice():
    with pytest.raises(StrgError) as caught:
        resolve_decode("cuda")
    assert str(caught.value) == f"--decode cuda: {PROBLEM}"
    notices: list[str] = []
    assert resolve_decode("auto", notice=notices.append) == "cpu"
    assert notices == [f"--decode auto: decoding on the CPU: {PROBLEM}"]


def test_cpu_needs_no_probe_and_other_choices_are_refused():
    notices: list[str] = []
    assert resolve_decode("cpu", notice=notices.append) == "cpu" and notices == []
    with pytest.raises(StrgError, match="^--decode must be one of cpu, cuda, auto, got 'gpu'$"):
        resolve_decode("gpu")
    assert video_opener("cpu") is open_video and video_opener("cuda") is open_video_cuda
    with pytest.raises(StrgError, match="decode must be cpu or cuda"):
        video_opener("auto")  # resolved first


def test_the_nvdec_settings_are_pyavs_hwaccel():
    """What av.open(..., hwaccel=) gets: PyAV's HWAccel for CUDA device N (device_id N), software
    fallback on, frames downloaded to system memory (not is_hw_owned); where this FFmpeg has CUDA, its
    own h264 decoder offers the CUDA hardware config (NVDEC) that PyAV picks."""
    from av.codec import Codec
    from av.codec.hwaccel import HWAccel, HWDeviceType, hwdevices_available

    from strg_deploy.data.gpu_decode import _hwaccel

    accel = _hwaccel(1)
    assert isinstance(accel, HWAccel) and accel.device_id == 1
    assert accel.allow_software_fallback is True and accel.is_hw_owned is False
    assert _hwaccel(0, fallback=False).allow_software_fallback is False
    if "cuda" in hwdevices_available():
        assert HWDeviceType.cuda in [config.device_type for config in Codec("h264", "r").hardware_configs]


@no_nvdec_here
def test_opening_a_file_for_nvdec_without_a_gpu_is_one_line(clip):
    with pytest.raises(StrgError) as caught:
        open_video_cuda(clip)
    message = str(caught.value)
    assert message.startswith(f"cannot open video {clip} for decoding on GPU 0: ") and "\n" not in message


@no_nvdec_here
def test_a_stream_reader_decoding_on_cuda_reports_the_failure_as_an_event(clip):
    from strg_deploy.stream.geometry import Geometry
    from strg_deploy.stream.reader import StreamReader
    from strg_deploy.stream.retry import RetryPolicy
    from strg_deploy.stream.sources import parse_sources

    specs, _ = parse_sources([str(clip)], None)
    events, frames = [], []
    reader = StreamReader(
        specs[0],
        frames.append,
        Geometry(32),
        retry=RetryPolicy(max_retries=0),
        on_event=events.append,
        decode="cuda",
    ).start()
    assert reader.join(30)
    assert frames == [] and reader.state == "failed"
    assert [e.kind for e in events] == ["failed"] and "for decoding on GPU 0" in events[0].message


@pytest.mark.parametrize(
    ("choice", "line"),
    [
        ("gpu", "error: --decode must be one of cpu, cuda, auto, got 'gpu'"),
        ("cuda", f"error: --decode cuda: {PROBLEM}"),
    ],
)
def test_the_cli_refuses_a_decode_it_cannot_do_before_loading_anything(tmp_path, clip, choice, line):
    if choice == "cuda" and PROBLEM is None:
        pytest.skip("this machine decodes with NVDEC")
    out = tmp_path / "p.jsonl"
    result = runner.invoke(
        app, ["infer", str(tmp_path / "no-export"), str(clip), "--decode", choice, "--out", str(out)]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [line]
    assert not out.exists()


@no_nvdec_here
def test_the_cli_with_decode_auto_runs_on_the_cpu_after_a_notice(tiny_export, clip, tmp_path):
    from strg_deploy.stream.sinks import read_json_lines

    _, export = tiny_export
    outputs = {}
    for choice in ("auto", "cpu"):
        out = tmp_path / f"{choice}.jsonl"
        result = runner.invoke(
            app,
            [
                "infer",
                str(export),
                str(clip),
                "--backend",
                "onnxruntime",
                "--decode",
                choice,
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        notices = [line for line in result.stderr.splitlines() if "--decode" in line]
        assert notices == (
            [f"warning: --decode auto: decoding on the CPU: {PROBLEM}"] if choice == "auto" else []
        )
        outputs[choice] = [line["top"] for line in read_json_lines(out)]
    assert outputs["auto"] == outputs["cpu"] and outputs["cpu"]


@needs_nvdec
def test_nvdec_frames_match_the_cpu_decoders(clip):
    with open_video(clip) as cpu, open_video_cuda(clip) as gpu:
        assert gpu.hwaccel is not None and cpu.hwaccel is None
        expected = list(cpu.frames(size=(64, 48)))
        got = list(gpu.frames(size=(64, 48)))
    assert [f.time for f in got] == [f.time for f in expected]
    difference = np.mean(
        [np.abs(a.image.astype(int) - b.image.astype(int)).mean() for a, b in zip(got, expected, strict=True)]
    )
    assert difference < 2.0  # same bitstream; only the NV12 -> RGB conversion path may differ
