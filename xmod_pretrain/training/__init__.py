"""The training loop (trainer.py) and what it calls each step: the DeepSpeed engine, the
optimizer and schedule, gradient anchoring, prefetching, stop signals, failures, metrics and the
MFU peak, and process-group set-up (distributed.py)."""
