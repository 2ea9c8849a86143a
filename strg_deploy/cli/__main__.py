"""``python -m strg_deploy.cli``: the `strg` command."""

from strg_deploy.cli import app

app()
