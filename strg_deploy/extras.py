"""Optional dependencies, imported lazily with one clear error naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from strg_deploy.errors import missing_extra

# module name -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "torch": "train",
    "torchvision": "train",
    "safetensors": "train",
    "onnxscript": "train",
    "onnxruntime": "cpu",
    "openvino": "cpu",
    "tensorrt": "gpu",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise StrgError naming the extra that provides it.

    ``purpose`` completes the sentence "<purpose> needs <module>", e.g. "strg model summary".
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        root = module.split(".")[0]
        raise missing_extra(EXTRA_OF.get(root, "train"), root, purpose) from None
