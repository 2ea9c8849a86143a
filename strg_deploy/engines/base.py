"""The protocol every runtime backend follows: one network, numpy in, numpy out."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Network(Protocol):
    """One loaded network. ``input_names`` and ``output_names`` follow the manifest;
    ``run({name: array}) -> {name: array}`` takes every input and returns every output."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
