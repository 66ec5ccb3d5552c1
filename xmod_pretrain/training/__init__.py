"""The training loop (trainer.py) and what it calls each step: the DeepSpeed engine over the
shared weights (engine.py), the language modules' store (language_store.py), the optimizer and
schedule, clipping by the step's global norm, prefetching, stop signals, failures, metrics and
the MFU peak, and process-group set-up (distributed.py)."""
