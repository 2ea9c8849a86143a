"""TensorRT plugins for the two custom nodes of the model contract.

- :mod:`strg_deploy.plugins.launch`: how each kernel is launched (grid, block, shared memory, int32
  arguments, compile-time constants); plain Python, importable anywhere.
- :mod:`strg_deploy.plugins.kernels`: the Triton kernels (imports triton).
- :mod:`strg_deploy.plugins.ptx`: ahead-of-time compilation of the kernels to PTX (imports triton lazily).

Importing this package imports neither torch, triton nor tensorrt.
"""
