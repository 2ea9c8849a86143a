"""Runtimes for the exported networks (torch-free, but for the torch backend): each backend loads one
ONNX network and runs it on numpy arrays by input name."""
