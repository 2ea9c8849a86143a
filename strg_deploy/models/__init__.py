"""Torch models of STRG: backbone, proposals, graphs, graph head."""
