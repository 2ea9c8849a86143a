"""Training: the torch Dataset over data/ (data), optimiser and schedule (optim), metrics (numpy),
checkpoints (checkpoint), the loop (loop) and the command's orchestration (run)."""
