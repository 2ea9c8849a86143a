"""Export: the three networks of the model contract to ONNX (custom nodes with function bodies), the
manifest, the TensorRT-compatibility lint and the parity checks."""
