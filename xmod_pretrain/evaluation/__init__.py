"""Evaluation of a run: masked-LM loss and perplexity per language (masked_lm.py), and its
figures (report.py)."""
