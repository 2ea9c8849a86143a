"""Runtimes for the exported networks and the chain over them, torch-free but for the torch backend.

:mod:`~strg_deploy.engines.base` (the backend protocol), :mod:`~strg_deploy.engines.pipeline`
(``Pipeline``: rpn -> backbone -> head on any backend), :mod:`~strg_deploy.engines.auto` (the fastest
runtime per network), :mod:`~strg_deploy.engines.compare` and :mod:`~strg_deploy.engines.verify`
(a runtime against reference outputs); backends: onnxruntime, openvino, torch_model.
"""
