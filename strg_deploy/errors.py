"""The one exception type for errors a user can cause.

The CLI prints a :class:`StrgError` as a single line and exits with status 2; anything else is a bug.
"""

from __future__ import annotations


class StrgError(Exception):
    """A user-facing error: bad input, a missing file, a shape that does not fit, a missing extra."""


def shape_error(what: str, expected: str, actual: tuple[int, ...] | list[int]) -> StrgError:
    """Build the error for a tensor of the wrong shape, naming the expected and the actual shape."""
    return StrgError(f"{what}: expected shape {expected}, got {list(actual)}")


def missing_extra(extra: str, module: str, purpose: str) -> StrgError:
    """Build the error for a command whose optional dependency is not installed."""
    return StrgError(f"{purpose} needs {module}, which is not installed: pip install 'strg-deploy[{extra}]'")
