"""Vocabulary growth (``add-language --extend-vocab N``), in one place for every part that meets
a grown vocabulary (add-language, checkpoints, evaluation, module files): new SentencePiece
pieces for the new language (pieces.py), the grown embedding and decoder (split_model.py),
add-language's steps (growth.py), and the run's record of the appended pieces (config.py)."""
