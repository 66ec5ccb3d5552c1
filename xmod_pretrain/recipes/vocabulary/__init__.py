"""Vocabulary growth (``add-language --extend-vocab N``): new SentencePiece pieces for the new
language (pieces.py), the grown embedding and decoder (split_model.py), and the recipe's steps
(growth.py)."""
