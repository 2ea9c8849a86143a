"""Training: data loading for torch (this issue), the loop, checkpoints and metrics (later)."""
