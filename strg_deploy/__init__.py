"""strg-deploy: train, export and serve STRG (Videos as Space-Time Region Graphs).

This package's top level is on the runtime side: importing it never imports torch.
"""

from strg_deploy.errors import StrgError

__version__ = "0.1.0"
__all__ = ["StrgError", "__version__"]
