"""onnxruntime backend: an InferenceSession per network, full graph optimisations, tunable threads.

onnxruntime runs the model-local function bodies of the custom nodes, so it reads the export as written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from strg_deploy.errors import StrgError
from strg_deploy.extras import require


class OnnxRuntimeNetwork:
    """An ONNX file on onnxruntime's CPU provider (or ``providers``). ``threads``: intra-op threads
    (0: onnxruntime's default, one per core). ``run({name: array}) -> {name: array}``."""

    def __init__(
        self, path: str | Path, threads: int = 0, providers: tuple[str, ...] = ("CPUExecutionProvider",)
    ):
        ort = require("onnxruntime", "running ONNX files on onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own types (Fail, InvalidGraph, NoSuchFile...)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise StrgError(f"onnxruntime cannot load {path}: {first}") from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise StrgError(f"missing input(s) {', '.join(missing)}")
        outputs = self.session.run(None, {name: inputs[name] for name in self.input_names})
        return dict(zip(self.output_names, outputs, strict=True))
