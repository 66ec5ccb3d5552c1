"""Cross-lingual transfer: tasks, classifier batches, the classifier, scores, the recipe and the
``transfer`` command."""
