"""Checkpoints: writing, verifying and publishing them, and choosing the one a start resumes from (resume.py)."""
