"""The grown vocabulary's record in a run's config: the pieces appended to the pre-training
vocabulary, written by the run that appends them, never set by hand."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from xmod_pretrain.schema import Schema


@dataclass
class AddedPieces:
    """Ids ``first_id .. first_id + count - 1``: pieces learned for ``language``."""

    language: str
    first_id: int
    count: int


@dataclass
class VocabularyConfig(Schema):
    """Pieces appended to the pre-training vocabulary (``add-language --extend-vocab``); written
    by the run that appends them, never set by hand. What a run shares with its base, and what a
    language's module file carries, is told apart by it."""

    base_size: Optional[int] = None
    """Ids of the pre-training tokenizer; None: no pieces were appended."""
    base_tokenizer_sha256: Optional[str] = None
    added: list[AddedPieces] = field(default_factory=list)
