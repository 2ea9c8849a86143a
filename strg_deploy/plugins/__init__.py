"""TensorRT plugins for the two custom nodes of the model contract.

- :mod:`strg_deploy.plugins.launch`: how each kernel is launched (grid, block, shared memory, int32
  arguments, compile-time constants); plain Python, importable anywhere.
- :mod:`strg_deploy.plugins.kernels`: the Triton kernels (imports triton).
- :mod:`strg_deploy.plugins.ptx`: ahead-of-time compilation of the kernels to PTX (imports triton lazily).

Importing this package imports neither torch, triton nor tensorrt.
"""


def load_registration():
    """Import :mod:`strg_deploy.plugins.registration`, which registers the ``strg::FrameRoIAlignMax`` and
    ``strg::SpaceTimeGraph`` plugins with ``tensorrt.plugin`` (once per process), and return it. Without
    TensorRT >= 10.9 this raises one StrgError line naming the version and how to install it."""
    import importlib

    module = importlib.import_module("strg_deploy.plugins.registration")
    module.register_plugins()
    return module
