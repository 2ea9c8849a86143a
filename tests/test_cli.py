"""The command line: help, torch-free start-up, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from strg_deploy.cli import app

runner = CliRunner()

RUNTIME_MODULES = [
    "strg_deploy",
    "strg_deploy.config",
    "strg_deploy.errors",
    "strg_deploy.fileio",
    "strg_deploy.cli",
    "strg_deploy.data.video",
    "strg_deploy.data.info",
    "strg_deploy.data.sampling",
    "strg_deploy.data.transforms",
    "strg_deploy.data.datasets",
    "strg_deploy.data.cache",
    "strg_deploy.data.synthetic",
    "strg_deploy.data.clips",
    "strg_deploy.contract",
    "strg_deploy.contract.nodes",
    "strg_deploy.contract.networks",
    "strg_deploy.contract.manifest",
    "strg_deploy.contract.configs",
    "strg_deploy.contract.reference",
    "strg_deploy.engines.base",
    "strg_deploy.engines.compare",
    "strg_deploy.engines.pipeline",
    "strg_deploy.engines.auto",
    "strg_deploy.engines.verify",
    "strg_deploy.cli.verify",
    "strg_deploy.cli.infer",
    "strg_deploy.stream.types",
    "strg_deploy.stream.sources",
    "strg_deploy.stream.retry",
    "strg_deploy.stream.reader",
    "strg_deploy.stream.geometry",
    "strg_deploy.stream.windows",
    "strg_deploy.stream.batcher",
    "strg_deploy.stream.runner",
    "strg_deploy.stream.sinks",
    "strg_deploy.stream.annotate",
    "strg_deploy.stream.metrics",
    "strg_deploy.stream.monitor",
    "strg_deploy.engines.onnxruntime",
    "strg_deploy.engines.openvino",
    "strg_deploy.export.manifest",
    "strg_deploy.export.function_bodies",
    "strg_deploy.export.rpn_postprocess",
    "strg_deploy.export.lint",
    "strg_deploy.export.tensorrt_support",
    "strg_deploy.export.tensorrt_graph",
    "strg_deploy.export.engine",
    "strg_deploy.export.fp16",
    "strg_deploy.contract.engines",
    "strg_deploy.engines.tensorrt",
    "strg_deploy.engines.cuda_memory",
    "strg_deploy.data.gpu_decode",
    "strg_deploy.plugins.launch",
    "strg_deploy.cli.engine",
]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_runtime_modules_and_help_do_not_import_torch():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in RUNTIME_MODULES)
        + "from strg_deploy.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "try:\n    app(['model', 'presets'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "loaded = [m for m in ('torch', 'torchvision') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_every_command_has_help():
    for args in (
        ["--help"],
        ["model", "--help"],
        ["model", "summary", "--help"],
        ["model", "presets", "--help"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output


def test_presets_json():
    result = runner.invoke(app, ["model", "presets", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["preset"] for r in rows] == ["paper-r50", "small", "tiny"]
    assert rows[0]["features"] == "512x16x14x14"


def test_bad_preset_is_one_line_and_exit_2():
    result = runner.invoke(app, ["model", "summary", "--preset", "huge"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown preset 'huge'")
    assert "Traceback" not in result.output


def test_missing_torch_names_the_extra():
    code = (
        "import sys\nsys.modules['torch'] = None\n"
        "from strg_deploy.cli import app\n"
        "app(['model', 'summary', '--preset', 'tiny'])\n"
    )
    result = run_python(code)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: strg model summary needs torch, which is not installed: pip install 'strg-deploy[train]'"
    )


def test_errors_from_loader_workers_print_their_own_message():
    from torch._utils import ExceptionWrapper

    from strg_deploy.cli.common import one_line
    from strg_deploy.errors import StrgError

    try:
        raise StrgError("cannot open video x.mp4: Invalid data")
    except StrgError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    try:
        wrapped.reraise()
    except StrgError as err:
        assert "\n" in str(err)
        assert one_line(err) == "cannot open video x.mp4: Invalid data"
    assert one_line(StrgError("a\nb")) == "a b"
