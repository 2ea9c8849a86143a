"""The model contract: what the exporter writes and every runtime reads, torch-free.

- :mod:`~strg_deploy.contract.networks`: the three networks (rpn, backbone, head), their inputs and
  outputs with symbolic shapes, and which frames the RPN sees (:func:`rpn_frames`);
- :mod:`~strg_deploy.contract.nodes`: the two custom ONNX nodes (domain, names, attributes, the
  attributes that point TensorRT's parser at the plugins);
- :mod:`~strg_deploy.contract.manifest`: the read side of an export's manifest.json and file hashes;
- :mod:`~strg_deploy.contract.reference`: the reference sample ``strg verify`` compares a runtime with;
- :mod:`~strg_deploy.contract.configs`: which differences between two model configs matter.

It imports no torch and no runtime; the torch model, the exporter and the engines import it.
"""

from strg_deploy.contract.networks import NETWORKS, SPECS, NetworkSpec, TensorSpec, rpn_frames, tensor_shapes

__all__ = ["NETWORKS", "SPECS", "NetworkSpec", "TensorSpec", "rpn_frames", "tensor_shapes"]
