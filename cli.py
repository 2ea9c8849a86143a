"""Run the `strg` command line from a checkout: `python cli.py --help`."""

from strg_deploy.cli import app

if __name__ == "__main__":
    app()
