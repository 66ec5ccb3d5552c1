"""Transfer's schema: the model, the task, the source and target languages, and the schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from xmod_pretrain.schema import Schema, at_least, optional, positive


@dataclass
class TransferConfig(Schema):
    """Cross-lingual transfer (``xmod_pretrain transfer``): fine-tune a classifier on the source
    language with the embeddings and every language module frozen, pick its checkpoint on the
    source dev split, and evaluate it zero-shot on every target through the target's modules."""

    source_run: Optional[str] = None
    """The pre-trained model (read only): a run, or a transformers X-MOD folder."""
    task: Optional[str] = None
    """guide-topic, udhr-retrieval, a folder / JSON manifest of JSONL files, or hf:NAME[:CONFIG]
    (transfer/tasks.py)."""
    source: str = "en_XX"
    """The language fine-tuned on (its train split), whose dev split picks the checkpoint."""
    targets: list[str] = field(default_factory=list)
    """Languages evaluated zero-shot; empty: every language with test data."""
    epochs: float = 3.0
    """Passes over the source train split (sets train.max_steps; a checkpoint each epoch)."""
    steps: Optional[int] = None
    """Optimizer steps instead of ``epochs`` (a checkpoint every steps / epochs of them)."""
    classifier_dropout: Optional[float] = None
    """Dropout of the head; None: model.hidden_dropout_prob, as in transformers."""
    layer: int = -1
    """udhr-retrieval: the hidden layer mean-pooled (0 = embeddings, -1 = the last)."""

    RULES = (
        ("epochs", positive, "> 0"),
        ("steps", optional(at_least(1)), "null (from transfer.epochs) or >= 1"),
        ("classifier_dropout", lambda v: v is None or 0 <= v < 1, "null or in [0, 1)"),
    )
