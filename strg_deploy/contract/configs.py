"""Comparing two model configs: which fields differ, and which differences do not matter.

Torch-free: a checkpoint resumed or evaluated with another config, and (later) an engine whose sidecar
records the config it was built from, are checked with the same rule.
"""

from __future__ import annotations

import math
from typing import Any

from strg_deploy.config import ModelConfig

# Config fields that change neither the weights' shapes nor their meaning: a checkpoint may be resumed
# (or evaluated) with other values for them.
RUNTIME_FIELDS = frozenset(
    {
        "span_seconds",
        "proposals.pre_nms_top_n",
        "proposals.nms_threshold",
        "proposals.score_threshold",
        "proposals.min_size",
    }
)


def config_differences(
    saved: ModelConfig, current: ModelConfig, ignore: frozenset[str] = RUNTIME_FIELDS
) -> list[tuple[str, Any, Any]]:
    """(field, saved value, current value) for every field outside ``ignore`` that differs (floats
    within a relative 1e-9 are equal); nested fields are dotted (``backbone.width``). An exported graph
    bakes the runtime fields in too: compare exports with ``ignore=frozenset()``."""
    a, b = flatten(saved.to_dict()), flatten(current.to_dict())
    return [
        (key, a.get(key), b.get(key))
        for key in sorted(set(a) | set(b))
        if key not in ignore and not _same(a.get(key), b.get(key))
    ]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys; lists become tuples."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = as_tuples(value)
    return out


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0)
    return x == y


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def as_tuples(value: Any) -> Any:
    """Lists (nested too) as tuples, as JSON and torch.load give tuples back as lists."""
    if isinstance(value, (list, tuple)):
        return tuple(as_tuples(v) for v in value)
    return value
