"""The `strg` command line: thin typer commands that call the library and print with rich.

One module per command group; each has ``register(app)``, which adds its commands to the app. A new
command module takes one import and one ``register`` line here. Shared helpers live in ``common``.

Importing this package never imports torch: commands that need it import it inside their bodies.
Every error a user can cause is a StrgError, printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from strg_deploy import __version__
from strg_deploy.cli import data, engine, export, infer, model, train, verify
from strg_deploy.cli.common import OneLineErrors

app = typer.Typer(
    name="strg",
    cls=OneLineErrors,
    help="Train, export and serve STRG (Videos as Space-Time Region Graphs) action recognition.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"strg-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Train, export and serve STRG (Videos as Space-Time Region Graphs) action recognition."""


# the order of the top-level commands in `strg --help`; groups are listed after them
train.register(app)  # train, proposals, eval
export.register(app)
verify.register(app)
infer.register(app)
model.register(app)
data.register(app)
engine.register(app)
