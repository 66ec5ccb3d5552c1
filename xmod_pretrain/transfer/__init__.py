"""Cross-lingual transfer: tasks, classifier batches, scores, and the ``transfer`` command."""
