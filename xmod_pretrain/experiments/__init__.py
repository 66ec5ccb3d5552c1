"""Experiments that drive many runs: the curse of multilinguality (curse.py) and its transfer
comparison."""
