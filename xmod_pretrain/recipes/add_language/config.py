"""Add-language's schema: the run to grow, the new languages, their text and their modules' start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from xmod_pretrain.schema import ConfigError, Schema, at_least, one_of, optional


@dataclass
class AddLanguageConfig(Schema):
    """Post-hoc mode (``xmod_pretrain add-language``): grow a trained run by new languages,
    training only their modules while every other weight stays frozen."""

    source_run: Optional[str] = None
    """The run to grow (read only), or a transformers X-MOD folder; None: ``init_from``."""
    languages: list[str] = field(default_factory=list)
    """The languages to add, each trained only on its own text; empty: ordinary pre-training."""
    text: Optional[str] = None
    """Their raw text: a file (one language), a folder of <xx_YY>.txt, a JSON manifest, or any
    data_prep source. None: the bundled UDHR text (yo_NG and the demo languages)."""
    init: str = "random"
    """New modules start as ``random``, ``copy:LANG`` (a copy of LANG's) or ``avg:L1+L2``."""
    overwrite: bool = False
    """Retrain a language the run already has (its modules restart from ``init``)."""
    extend_vocab: Optional[int] = None
    """Learn up to this many SentencePiece pieces from the new language's text and append them
    to the vocabulary (``--extend-vocab``; one new language at a time); None: the source's
    vocabulary as it is. Only the new rows, their bias entries and the modules train."""
    init_vocab: str = "mean"
    """New rows start as ``mean`` (of the old rows the old tokenizer spells each piece with) or
    ``random`` (N(0, model.initializer_range), zero bias)."""
    vocab_penalty: float = 100.0
    """Weight of the training loss term that keeps the new pieces out of the old languages'
    softmax: each old language's loss rise on a fixed sample of its text beyond 0.05%
    (``vocabulary/split_model.SplitDecoder``); 0: none."""

    RULES = (
        ("extend_vocab", optional(at_least(1)), "null (the source's vocabulary) or >= 1 pieces"),
        ("init_vocab", one_of("mean", "random"), "mean or random"),
        ("vocab_penalty", at_least(0), ">= 0 (0: none)"),
    )

    def check_together(self, prefix: str) -> None:
        if self.extend_vocab is not None and len(self.languages) > 1:
            raise ConfigError(f"{prefix}extend_vocab with {len(self.languages)} languages: the "
                              "vocabulary grows for one new language at a time")
