"""The torch backend: the three networks of a trained checkpoint run by torch itself (the ``train`` extra).

The reference every other backend is checked against, and the way to run a model that was never
exported: ``Pipeline.load(RUN/best, backend="torch")``. Values stay torch tensors on the model's device
between networks (the backbone's features feed the head without a copy to the host); :meth:`to_host`
gives numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from strg_deploy.contract.networks import SPECS
from strg_deploy.engines.base import UNLIMITED, BackendInfo
from strg_deploy.errors import StrgError
from strg_deploy.extras import require

NAME = "torch"


class TorchNetwork:
    """One network (``rpn``, ``backbone`` or ``head``) of an STRG model (``models.strg.STRG``), in eval
    mode under ``torch.inference_mode``. Inputs are numpy arrays or tensors; outputs are tensors."""

    limits = UNLIMITED

    def __init__(self, model: Any, network: str):
        torch = require("torch", "the torch backend")
        self._torch = torch
        self.module = getattr(model, network)
        self.network = network
        self.input_names = SPECS[network].input_names
        self.output_names = SPECS[network].output_names
        self.device = next(model.parameters()).device
        self.info = BackendInfo(NAME, str(self.device), "fp32", torch.__version__.split("+")[0])

    def _tensor(self, value: Any):
        if isinstance(value, self._torch.Tensor):
            return value.to(self.device)
        return self._torch.from_numpy(np.ascontiguousarray(value)).to(self.device)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise StrgError(f"missing input(s) {', '.join(missing)}")
        args = [self._tensor(inputs[name]) for name in self.input_names]
        with self._torch.inference_mode():
            result = self.module(*args)
        if self.network == "rpn":
            return {"boxes": result.boxes, "scores": result.scores, "mask": result.mask}
        return {self.output_names[0]: result}

    def to_host(self, value: Any) -> np.ndarray:
        if isinstance(value, self._torch.Tensor):
            return value.detach().cpu().numpy()
        return np.asarray(value)


def load_checkpoint_networks(
    checkpoint: str | Path, device: str = "cpu"
) -> tuple[Any, dict[str, TorchNetwork]]:
    """(config, {network: TorchNetwork}) of an STRG checkpoint folder (``model.safetensors`` and
    ``config.json``, e.g. ``RUN/best``) on ``device``."""
    require("torch", "the torch backend")
    from strg_deploy.models.serialization import load_pretrained
    from strg_deploy.models.strg import STRG

    model = load_pretrained(checkpoint)
    if not isinstance(model, STRG):
        raise StrgError(
            f"{checkpoint} holds a {model.cfg.architecture!r} model; the pipeline runs STRG checkpoints"
        )
    try:
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:
        raise StrgError(f"cannot use device {device!r}: {str(err).splitlines()[0]}") from None
    return model.cfg, {network: TorchNetwork(model, network) for network in SPECS}
