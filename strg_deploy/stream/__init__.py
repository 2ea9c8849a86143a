"""Streaming inference (`strg infer`): sources (files, RTSP cameras) read by threads, per-stream geometry
and sliding windows, a fair batcher across streams, the pipeline, and sinks (JSON lines, events,
annotated video, metrics). Torch-free: a deployment runs it with onnxruntime or OpenVINO alone.
"""
