"""What every `strg` command module shares: the one-line error handling, the usage line, the rich
console and table style, progress bars, warnings and the option types used by more than one command.

Imports no torch.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from strg_deploy.config import PRESETS, ModelConfig, preset
from strg_deploy.errors import StrgError

F = TypeVar("F", bound=Callable[..., Any])

try:  # typer vendors click from 0.2x on; its usage errors derive from TyperException
    from typer import TyperException as UsageProblem
except ImportError:  # pragma: no cover - older typer with click itself
    from click import ClickException as UsageProblem


class OneLineErrors(typer.core.TyperGroup):
    """The top-level group: a usage error (a bad flag value, a missing option, an unknown command) is one
    line on stderr, ``error: <what> (see strg <command> --help)``, with exit status 2, like every error
    the library raises; Ctrl-C is ``error: interrupted`` with status 130.

    SIGTERM keeps its default action (the process ends at once): raising an exception from a handler at
    an arbitrary point (inside a fork, or a DataLoader's file-descriptor handshake) was seen to hang the
    process. Writes are atomic, stale temporary folders are removed by the next run, and child processes
    end with their parent (``strg_deploy.processes``)."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageProblem as err:
            ctx = getattr(err, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            text = err.format_message() if hasattr(err, "format_message") else str(err)
            if type(err).__name__ == "NoArgsIsHelpError":  # a group called bare: its help (rich printed it)
                if text.strip():
                    typer.echo(text.rstrip(), err=True)
            else:
                typer.echo(f"error: {' '.join(text.split())}{hint}", err=True)
            sys.exit(getattr(err, "exit_code", 2))
        except (typer.Abort, KeyboardInterrupt):
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


class PlainUsage(typer.core.TyperCommand):
    """A command whose usage line names its arguments as ``CHECKPOINT`` (required) and ``[CHECKPOINT]``
    (optional), where typer writes ``{checkpoint}``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if getattr(param, "param_type_name", "") != "argument":
                continue
            name = (param.metavar or param.name.upper()).strip("[]").removesuffix("...")
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


console = Console()


def new_table(title: str) -> Table:
    """A compact table that fits an 80-column terminal."""
    return Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))


def one_line(err: StrgError) -> str:
    """The error's message on one line. An error raised in a DataLoader worker comes back wrapped in the
    worker's traceback; its last line holds the original message."""
    lines = str(err).strip().splitlines() or [type(err).__name__]
    if len(lines) > 1 and "Traceback" in str(err):
        return lines[-1].split("StrgError: ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def reports_errors(command: F) -> F:
    """Turn a StrgError raised by ``command`` into one line on stderr and exit status 2; the command's
    help is its docstring with each paragraph joined into one line (the terminal wraps it)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except StrgError as err:
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(2) from None

    run.__doc__ = _paragraphs(command.__doc__ or "")
    return run  # type: ignore[return-value]


def _paragraphs(doc: str) -> str:
    """A docstring with the lines of each paragraph joined by spaces; paragraphs stay apart."""
    blocks = re.split(r"\n\s*\n", doc.strip())
    return "\n\n".join(" ".join(line.strip() for line in block.splitlines()) for block in blocks)


def warn(message: str) -> None:
    """A one-line warning on stderr (``warning: ...``)."""
    typer.echo(f"warning: {message}", err=True)


@contextlib.contextmanager
def counting_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A transient rich bar fed by ``advance(done, total)``; it starts on the first call, so options that
    fail before any work show no bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    columns = ("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn())
    progress = Progress(*columns, TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task(description, total=None)

    def advance(done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        yield advance
    finally:
        if progress.live.is_started:
            progress.stop()


ProposalsOption = Annotated[
    Path | None, typer.Option("--proposals", help="Precomputed proposals (a `strg proposals` file).")
]
DetectorOption = Annotated[
    Path | None,
    typer.Option("--detector", help="RPN weights: a Faster R-CNN state dict or RUN/detector.safetensors."),
]
PresetOption = Annotated[str, typer.Option("--preset", "-p", help=f"Model preset: {', '.join(PRESETS)}.")]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", help="A model config.json (or a checkpoint folder holding one) instead of a preset."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for machines instead of a table.")]


def resolve_config(preset_name: str, config_path: Path | None) -> ModelConfig:
    """The model config of ``--config`` when given, else the named preset."""
    return ModelConfig.load(config_path) if config_path is not None else preset(preset_name)


def comparison_table(rows: list, title: str) -> Table:
    """Comparisons (``engines.compare.Comparison``: `strg export --check`, `strg verify`) as a table: the
    float output nearest its bound, its largest difference and bound, and (where any row has them) the
    proposals matched across tied scores."""
    table = new_table(title)
    tied = any(row.reordered for row in rows)
    columns = ("runtime", "network", "inputs", "output", "|diff|", "tolerance", "masks")
    for column in (*columns, *(("tied",) if tied else ()), "top-1", "result"):
        table.add_column(column)
    for row in rows:
        top1 = "-" if row.top1_equal is None else ("same" if row.top1_equal else "DIFFERS")
        cells = [
            row.runtime,
            row.network,
            row.inputs,
            row.output,
            f"{row.max_abs:.1e}",
            f"{row.tolerance:.1e}",
            "equal" if row.masks_equal else "DIFFER",
        ]
        if tied:
            cells.append(str(row.reordered))
        table.add_row(*cells, top1, "ok" if row.passed else "FAIL")
    return table


def given_on_command_line(ctx: typer.Context) -> set[str]:
    """The parameters the command line set (not their defaults): a resume takes the others from its run,
    and `strg export --engine` its engines' batch. Compared by name: click's ParameterSource lives in
    click, or in typer's vendored copy of it."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return {name for name, source in sources.items() if getattr(source, "name", None) == "COMMANDLINE"}
