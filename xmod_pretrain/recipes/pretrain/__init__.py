"""Pre-training: a fresh model, or every weight of a transformers folder, trained on every
language."""
