"""Checkpoints: their layout and ``latest`` pointer (layout.py), writing and publishing them
(checkpointer.py), checksums (verify.py), failed writes (storage.py), consolidated weights and the
replica check (weights.py), DeepSpeed's files loaded without unpickling code (loading.py), and the
choice of the checkpoint a start resumes from (choice.py, resume.py)."""
