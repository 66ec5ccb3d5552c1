"""The data's schema: where the prepared shards are, which languages, how they are sampled and
masked."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from xmod_pretrain.schema import ConfigError, Schema, at_least, fraction, positive, share


class LanguagePer(str, Enum):
    rank = "rank"
    step = "step"


@dataclass
class MaskingConfig(Schema):
    """BERT/RoBERTa masking of non-special tokens."""

    prob: float = 0.15
    """Share of non-special tokens chosen for prediction."""
    mask_frac: float = 0.8
    """Of the chosen: replaced by <mask>."""
    random_frac: float = 0.1
    """Of the chosen: replaced by a random token. The rest (0.1) keep their token."""

    RULES = (
        ("prob", fraction, "in (0, 1)"),
        ("mask_frac", share, "in [0, 1]"),
        ("random_frac", share, "in [0, 1]"),
    )

    def check_together(self, prefix: str) -> None:
        if self.mask_frac + self.random_frac > 1:
            raise ConfigError(f"{prefix}mask_frac + {prefix}random_frac = "
                              f"{self.mask_frac + self.random_frac} is not allowed: <= 1")


@dataclass
class DataConfig(Schema):
    dir: str = "data/demo"
    """Prepared data: manifest.json, the SentencePiece model and per-language uint32 shards."""
    source: Optional[str] = "bundled"
    """Raw text to prepare ``dir`` from when it has no manifest yet: ``bundled`` (the demo corpus
    shipped in data_prep/corpus), a folder of <lang>.txt files, a JSON manifest {lang: path}, or
    ``hf:NAME`` (a datasets source streamed per language). None: ``dir`` must exist already."""
    languages: list[str] = field(default_factory=list)
    """Train on these languages only; empty: every language of the manifest."""
    vocab_size: int = 8000
    """SentencePiece pieces when a tokenizer is trained; ids are pieces + 2 (XLM-R layout)."""
    valid_fraction: float = 0.05
    """Share of each language's lines (the last ones) held out as its valid shard."""
    seq_len: int = 128
    """Tokens per sequence, <s> and </s> included."""
    alpha: float = 0.7
    """Language sampling p_l ∝ n_l^alpha. 1 follows the data sizes, 0 is uniform. XLM-R used 0.3
    (Conneau et al., 2020); 0.7 keeps more of the natural distribution."""
    language_per: LanguagePer = LanguagePer.rank
    """``rank``: each data-parallel rank draws its own micro-batch language. ``step``: all ranks
    share one language per micro-step (required by ZeRO-3, which gathers weights collectively)."""
    shared_module: Optional[str] = None
    """A language code (``mul_XX``, say) naming ONE module set that every data language runs
    through: the shared baseline of X-MOD's comparison, with the same active parameters per
    language as X-MOD but nothing of its own. Validation still reports each data language.
    None: each language its own modules (X-MOD)."""
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    prepare_workers: int = 2
    """Processes that encode text into shards."""
    verify_shards: bool = True
    """Scan every token id at start and refuse a shard holding an id outside the vocabulary
    (which would fail at whichever step first draws it). Costs a read of all shards by every
    process: 1-1.7 GB/s from a cold disk, 5-12 GB/s from the page cache (about 10-17 min a TB
    cold). false skips the scan (a multi-TB corpus already checked once); shard sizes are always
    checked."""

    RULES = (
        ("vocab_size", at_least(4), ">= 4"),
        ("valid_fraction", fraction, "in (0, 1)"),
        ("seq_len", at_least(3), ">= 3 (<s>, one token, </s>)"),
        ("alpha", at_least(0), ">= 0 (0 uniform, 1 proportional to the data)"),
        ("prepare_workers", positive, ">= 1"),
    )
